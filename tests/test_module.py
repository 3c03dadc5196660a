"""The modules on hand-made rollouts: token alignment, SC-SDPO = SDPO × w_q, micro-batch
invariance of the whole loss, non-finite handling, GRPO gradient sign."""

import math
from types import SimpleNamespace

import pytest
import torch

from lit_scsdpo import GRPO, SDPO, OptimConfig
from lit_scsdpo import losses as L
from lit_scsdpo.chat import render_prompt
from lit_scsdpo.config import DistillationConfig, TeacherConfig
from lit_scsdpo.data import Rollouts, collate_rollouts, step_info
from lit_scsdpo.tasks import Score

QUESTIONS = ["What is 2+3?", "What is 9-4?", "What is 12+7?"]


def make_rollouts(tok, rewards, responses=None, G=4):
    """Rollouts of len(rewards)//G questions with the given rewards and response texts."""
    B = len(rewards) // G
    messages = [[{"role": "user", "content": QUESTIONS[q % len(QUESTIONS)]}] for q in range(B)]
    prompt_ids = [render_prompt(tok, m) for m in messages]
    responses = responses or [f"<answer>{i}{'7' * (i % 3)}</answer>" for i in range(len(rewards))]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    response_ids = [tok(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    logprobs = [[-1.0] * len(r) for r in response_ids]
    scores = [Score(reward=float(r), pred=None) for r in rewards]
    rows = [{"uid": f"q{q}"} for q in range(B)]
    return Rollouts(rows, messages, prompt_ids, response_ids, logprobs, responses, scores, G)


def batch_of(r, questions=None, step=None, pad=0):
    questions = list(range(r.num_questions)) if questions is None else questions
    step = list(range(r.num_questions)) if step is None else step
    return collate_rollouts(r, questions, step_info(r, step, 1), step, 0, pad, 1.0, False)


class EchoLM(torch.nn.Module):
    """Logits at position i = 10 · one_hot(input_ids[i]): whoever reads position i sees its token."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        logits = 10.0 * torch.nn.functional.one_hot(input_ids, self.vocab).float() + self.dummy
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


@pytest.fixture(scope="module")
def sdpo(tiny_model_path):
    return SDPO(tiny_model_path, distillation=DistillationConfig(topk=20))


def test_token_alignment_student_and_teacher(tiny_model_path):
    sd = SDPO(tiny_model_path)
    tok = sd.tokenizer
    V = len(tok)
    r = make_rollouts(tok, [1, 0, 1, 0])
    batch = batch_of(r, pad=tok.pad_token_id)
    sd.policy = EchoLM(V)
    sd.teacher.weights = EchoLM(V)
    inputs, active, _ = sd.teacher_inputs(batch)
    assert active.tolist() == [True, True, True, True]
    P = inputs.prompt_width
    assert torch.equal(inputs.input_ids[:, P:], batch.response_ids)  # same ids, not re-tokenised
    t_logits = sd.teacher_logits(batch, inputs)
    student = sd.student_forward(batch)
    for k in range(4):
        L_k = int(batch.response_mask[k].sum())
        resp = batch.response_ids[k, :L_k].tolist()
        # logits for response token t are read at the position holding token t-1
        t_prev = [int(inputs.input_ids[k, P - 1])] + resp[:-1]
        s_prev = [int(batch.input_ids[k, batch.prompt_width - 1])] + resp[:-1]
        assert t_logits[k, :L_k].argmax(-1).tolist() == t_prev
        assert student.logits[k, :L_k].argmax(-1).tolist() == s_prev
    # the last prompt token is the end of the assistant header on both sides
    header_end = render_prompt(tok, [{"role": "user", "content": "x"}])[-1]
    assert int(inputs.input_ids[0, P - 1]) == header_end == int(batch.input_ids[0, batch.prompt_width - 1])
    # the teacher prompt holds the demonstration of the first other success
    text = tok.decode(inputs.input_ids[1, :P], skip_special_tokens=True)
    assert "Correct solution:" in text and r.responses[0] in text


def test_student_logp_matches_independent_forward(sdpo):
    r = make_rollouts(sdpo.tokenizer, [1, 0, 1, 0])
    batch = batch_of(r, pad=sdpo.tokenizer.pad_token_id)
    student = sdpo.student_forward(batch)
    for k in range(4):  # each row alone, no padding at all
        ids = r.prompt_ids[0] + r.response_ids[k]
        with torch.no_grad():
            logits = sdpo.policy(input_ids=torch.tensor([ids])).logits[0]
        P = len(r.prompt_ids[0])
        ref = torch.log_softmax(logits[P - 1 : -1], -1).gather(-1, torch.tensor(r.response_ids[k])[:, None])[:, 0]
        assert torch.allclose(student.logp[k, : len(r.response_ids[k])].detach(), ref, atol=1e-4)


def test_sc_sdpo_equals_sdpo_times_question_weights(sdpo):
    # q0: 2/4 successes (p=0.5), q1: 4/4 (p=1), q2: 1/4 (p=0.25)
    rewards = [1, 1, 0, 0] + [1, 1, 1, 1] + [1, 0, 0, 0]
    r = make_rollouts(sdpo.tokenizer, rewards)
    pad = sdpo.tokenizer.pad_token_id

    def loss_with(weights):
        r.question_weights = torch.tensor(weights, dtype=torch.float32)
        return sdpo.compute_loss(batch_of(r, pad=pad))[0].item()

    per_q = [loss_with(w) for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    assert all(x > 0 for x in per_q)  # SDPO trains on all three, the p̂=1 question included
    assert loss_with([1, 1, 1]) == pytest.approx(sum(per_q), rel=1e-5)
    w = L.difficulty_weights(torch.tensor(rewards, dtype=torch.float32).view(3, 4))
    assert w[1] == 0 and w[0] > w[2] > 0
    assert loss_with(w.tolist()) == pytest.approx(sum(wq * lq for wq, lq in zip(w.tolist(), per_q)), rel=1e-5)


@pytest.mark.parametrize("agg", L.AGGREGATION_MODES)
def test_sdpo_gradients_invariant_to_micro_batching(tiny_model_path, agg):
    sd = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), loss_agg_mode=agg)
    rewards = [1, 1, 0, 0] + [1, 1, 1, 1] + [1, 0, 0, 0]
    r = make_rollouts(sd.tokenizer, rewards)
    r.question_weights = torch.tensor([2.0, 0.5, 1.0])
    pad = sd.tokenizer.pad_token_id

    def grads(micro):
        sd.policy.zero_grad()
        for i in range(0, 3, micro):
            qs = list(range(i, min(i + micro, 3)))
            loss, _ = sd.compute_loss(batch_of(r, qs, pad=pad))
            loss.backward()
        return torch.cat([p.grad.flatten() for p in sd.policy.parameters()])

    g_full = grads(3)
    assert g_full.abs().sum() > 0
    for micro in (1, 2):
        assert torch.allclose(grads(micro), g_full, atol=1e-6, rtol=1e-4)


def test_all_masked_sdpo_loss_is_zero_and_attached(sdpo):
    r = make_rollouts(sdpo.tokenizer, [0, 0, 0, 0, 1, 0, 0, 0])  # q1's lone success is masked
    batch = batch_of(r, [0], pad=sdpo.tokenizer.pad_token_id)
    loss, metrics = sdpo.compute_loss(batch)
    assert loss.item() == 0.0 and loss.requires_grad and metrics["reprompt_fraction"] == 0.0
    loss.backward()


def test_grpo_gradient_raises_successful_responses(tiny_model_path):
    m = GRPO(tiny_model_path)
    r = make_rollouts(m.tokenizer, [1, 0, 0, 0])
    batch = batch_of(r, pad=m.tokenizer.pad_token_id)
    opt = torch.optim.SGD(m.policy.parameters(), lr=0.1)
    before = m.student_forward(batch).logp.detach()
    loss, _ = m.compute_loss(batch)
    loss.backward()
    opt.step()
    after = m.student_forward(batch).logp.detach()
    mask = batch.response_mask.bool()
    seq_delta = [(after[k] - before[k])[mask[k]].sum().item() for k in range(4)]
    # the responses share tokens (tags, EOS), so only the relative move is guaranteed
    assert seq_delta[0] > 0 and seq_delta[0] > max(seq_delta[1:])


def test_lambda_mix_and_token_level_options(tiny_model_path):
    r_rewards = [1, 1, 0, 0]
    mix = SDPO(tiny_model_path, grpo_lambda=0.5)
    r = make_rollouts(mix.tokenizer, r_rewards)
    loss, _ = mix.compute_loss(batch_of(r, pad=mix.tokenizer.pad_token_id))
    assert torch.isfinite(loss)
    tl = SDPO(tiny_model_path, distillation=DistillationConfig(full_logit_distillation=False, alpha=1.0))
    loss, m = tl.compute_loss(batch_of(r, pad=tl.tokenizer.pad_token_id))
    assert torch.isfinite(loss) and m["reprompt_fraction"] == 1.0
    with pytest.raises(ValueError, match="reverse KL"):
        SDPO(tiny_model_path, distillation=DistillationConfig(full_logit_distillation=False, alpha=0.5))


def test_nonfinite_loss_is_counted_and_skipped(tiny_model_path, tmp_path):
    from .toy import fit_briefly

    class FlakyGRPO(GRPO):
        calls = 0

        def compute_loss(self, batch):
            loss, metrics = super().compute_loss(batch)
            FlakyGRPO.calls += 1
            return (loss * float("nan"), metrics) if FlakyGRPO.calls == 1 else (loss, metrics)

    model = FlakyGRPO(tiny_model_path, optim=OptimConfig(warmup_steps=0))
    trainer = fit_briefly(model, tmp_path, epochs=3)
    assert trainer.global_step == 2  # the NaN step was skipped whole (no update); the run went on
    assert trainer.logged_metrics["train/nonfinite_loss"] == 1.0
    assert trainer.logged_metrics["train/skipped_steps"] == 1.0
    assert trainer.logged_metrics["train/lr"] == pytest.approx(1e-5)
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("cls,kwargs", [
    (SDPO, {"distillation": DistillationConfig(topk=10)}),
    (SDPO, {"distillation": DistillationConfig(topk=None), "teacher": TeacherConfig(mode="frozen")}), (GRPO, {})])
def test_chunked_logits_match_unchunked(tiny_model_path, cls, kwargs):
    """logits_chunk_size gives the same loss and gradients as the materialised logits."""
    rewards = [1, 1, 0, 0] + [1, 0, 0, 0]
    results = []
    for chunk in (None, 3):
        torch.manual_seed(0)
        m = cls(tiny_model_path, logits_chunk_size=chunk, **kwargs)
        r = make_rollouts(m.tokenizer, rewards)
        r.question_weights = torch.tensor([1.5, 0.5])
        loss, metrics = m.compute_loss(batch_of(r, pad=m.tokenizer.pad_token_id))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in m.policy.parameters()])
        results.append((loss.item(), grads, metrics["entropy"]))
    (l0, g0, e0), (l1, g1, e1) = results
    # the head is applied to hidden states instead of inside the model: equal up to float noise
    assert l1 == pytest.approx(l0, rel=1e-3) and l0 != 0
    assert e1 == pytest.approx(e0, rel=1e-4)
    assert torch.allclose(g1, g0, atol=1e-7, rtol=1e-3)


def test_chunked_rejects_unsupported_modes(tiny_model_path):
    with pytest.raises(ValueError, match="logits_chunk_size"):
        SDPO(tiny_model_path, logits_chunk_size=4, teacher=TeacherConfig(mode="trust_region"))


@pytest.mark.parametrize("algo", ["grpo", "sdpo"])
def test_rollout_correction_weights_each_token_by_the_truncated_sampler_ratio(tiny_model_path, algo):
    """docs/specification.md §1.4(2): per-token loss × min(π_old_train / π_sampler, 2), detached. ``auto`` is
    on for rollouts from a separate sampler (vLLM) only; the weight is pinned against a
    hand computation from the trainer's own log-probs."""
    from lit_scsdpo import GRPO, SDPO, RolloutCorrection
    from lit_scsdpo.forward import response_logits

    torch.manual_seed(0)
    cls, kw = (GRPO, {}) if algo == "grpo" else (SDPO, {"distillation": DistillationConfig(topk=10)})
    modes = {m: cls(tiny_model_path, rollout_correction=RolloutCorrection(mode=m), **kw) for m in ("auto", "off")}
    modes["off"].policy.load_state_dict(modes["auto"].policy.state_dict())
    r = make_rollouts(modes["auto"].tokenizer, [1, 0, 1, 0, 1, 1, 0, 0])
    batch = batch_of(r, pad=modes["auto"].tokenizer.pad_token_id)
    with torch.no_grad():
        logits = response_logits(modes["auto"].policy, batch.input_ids, batch.attention_mask, batch.position_ids,
                                 batch.prompt_width, batch.response_ids.shape[1]).float()
        trainer_logp = torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)
    # the sampler thinks some tokens are 3x less likely (ratio 3 -> truncated to 2), others 1.5x more likely
    shift = torch.where(torch.arange(batch.response_ids.shape[1]) % 2 == 0, -math.log(3.0), math.log(1.5))
    batch.sampler_logprobs = (trainer_logp + shift).detach()
    assert modes["auto"].rollout_is_weights(batch, modes["auto"].student_forward(batch))[0] is None  # HF rollouts
    batch.separate_sampler = True
    student = modes["auto"].student_forward(batch)
    w, metrics = modes["auto"].rollout_is_weights(batch, student)
    expected = torch.where(torch.arange(batch.response_ids.shape[1]) % 2 == 0, 2.0, 1 / 1.5).expand_as(w)
    m = batch.response_mask > 0
    assert torch.allclose(w[m], expected[m], atol=1e-5)
    assert metrics["rollout_is_max"] == pytest.approx(3.0, rel=1e-4)
    assert 0 < metrics["rollout_is_clipped"] < 1
    on, _ = modes["auto"].compute_loss(batch)
    off, _ = modes["off"].compute_loss(batch)
    assert not torch.allclose(on, off)
    on.backward()
    assert all(torch.isfinite(p.grad).all() for p in modes["auto"].policy.parameters() if p.grad is not None)


def test_logits_are_chunked_by_default_for_large_vocabularies(tmp_path, tiny_model_path):
    """``logits_chunk_size: auto``: no [T, V] logits when V >= 32,768 (a 135M model held 16.5 GB
    with full logits); small vocabularies and unchunkable settings stay unchunked."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from lit_scsdpo.policy import AUTO_CHUNK

    cfg = Qwen3Config(vocab_size=40000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "big")
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(tmp_path / "big")
    assert SDPO(str(tmp_path / "big")).logits_chunk_size == AUTO_CHUNK
    assert GRPO(str(tmp_path / "big")).logits_chunk_size == AUTO_CHUNK
    assert SDPO(str(tmp_path / "big"), teacher=TeacherConfig(mode="trust_region")).logits_chunk_size is None
    assert SDPO(str(tmp_path / "big"), logits_chunk_size=None).logits_chunk_size is None
    assert SDPO(str(tmp_path / "big"), logits_chunk_size=64).logits_chunk_size == 64
    assert SDPO(tiny_model_path).logits_chunk_size is None  # vocabulary 384
    with pytest.raises(ValueError, match="logits_chunk_size must be >= 1, auto or null"):
        SDPO(tiny_model_path, logits_chunk_size="big")


def test_full_scalar_set_only_on_the_steps_the_logger_writes(tiny_model_path, tmp_path):
    """``trainer.log_every_n_steps = 3``: loss and reward reach the progress bar and the logger
    at every one of 6 steps (Lightning's own gate wrote them at multiples of 3 only: a 2-step
    run had no curve); the full set (grad norm, phase times, ...) is logged, and written, at
    the first step, every 3rd and the last only: ``self.log`` costs time whether or not the
    logger writes."""
    import lightning.pytorch as pl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_scsdpo import RolloutDataModule
    from lit_scsdpo.rollout import SamplingConfig

    from .toy import DigitTask

    class Seen(pl.Callback):
        def __init__(self):
            self.keys = []

        def on_train_epoch_end(self, trainer, module):
            self.keys.append(set(trainer.progress_bar_metrics) | {k for k in trainer.callback_metrics
                                                                   if k == "train/grad_norm"})
            trainer.callback_metrics.clear()  # what the next step logs, only

    torch.manual_seed(0)
    dm = RolloutDataModule(DigitTask(train_size=32, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8))
    seen = Seen()
    trainer = pl.Trainer(log_every_n_steps=3, max_epochs=6, reload_dataloaders_every_n_epochs=1,
                         logger=pl.loggers.TensorBoardLogger(tmp_path, name="run"), callbacks=[seen],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0)
    trainer.fit(SDPO(tiny_model_path, distillation=DistillationConfig(topk=10)), dm)
    assert all({"train/loss", "rollout/reward_mean"} <= keys for keys in seen.keys) and len(seen.keys) == 6
    assert ["train/grad_norm" in keys for keys in seen.keys] == [True, False, True, False, False, True]
    [events] = (tmp_path / "run").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    steps = {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in ("train/loss", "rollout/reward_mean"):
        assert steps[tag] == [1, 2, 3, 4, 5, 6], tag
    for tag in ("train/grad_norm", "time/generate", "time/teacher", "rollout/frac_mixed"):
        assert steps[tag] == [1, 3, 6], tag

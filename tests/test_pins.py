"""Value pins (project issue 11): each test fixes a number or an ordering that a plausible
mutant of the code changes, against an independent computation (docs/specification.md's checkable
facts, float64 forwards of each row alone, hand-written formulas, a recorded training run).

1. DifficultyWeighting under 2 real gloo ranks = the single-process weights of all questions.
2. The λ-mix of SDPO with GRPO: value and gradient are λ·GRPO + (1−λ)·SDPO.
3. The token-level (sampled-token) estimator: value and gradient vs float64 by hand.
4. Student and teacher log-probs under left padding (B > 1, different prompt lengths).
5. The EMA teacher update runs after ``opt.step()``, once per optimizer step (on-policy).
"""

import copy
import queue
import time

import pytest
import torch
import torch.multiprocessing as mp

from lit_scsdpo import SDPO, OptimConfig
from lit_scsdpo.callbacks import DifficultyWeighting
from lit_scsdpo.config import DistillationConfig, TeacherConfig
from lit_scsdpo.data import EvaluationConfig, Rollouts, collate_rollouts, step_info
from lit_scsdpo.tasks import Score

# prompts of clearly different lengths (11, 13 and 30 tokens), so the left padding differs
QUESTIONS = ["Hi?", "What is 2+3?", "What is (112+57)-3*4 exactly?"]


def chatml(content):
    """The tiny tokenizer's chat template, written out by hand (one user turn + header)."""
    return "<|im_start|>user\n" + content + "<|im_end|>\n<|im_start|>assistant\n"


def make_rollouts(tok, rewards, G=4):
    """Hand-made Rollouts: ``len(rewards)//G`` questions, responses of different lengths."""
    B = len(rewards) // G
    messages = [[{"role": "user", "content": QUESTIONS[q % len(QUESTIONS)]}] for q in range(B)]
    prompt_ids = [tok(chatml(m[0]["content"]), add_special_tokens=False)["input_ids"] for m in messages]
    responses = [f"{'ab' * (i % 5)}<answer>{7 * i}</answer>" for i in range(len(rewards))]
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    response_ids = [tok(r, add_special_tokens=False)["input_ids"] + [eos] for r in responses]
    logprobs = [[-1.0] * len(r) for r in response_ids]
    scores = [Score(reward=float(r), pred=None) for r in rewards]
    rows = [{"uid": f"q{q}"} for q in range(B)]
    return Rollouts(rows, messages, prompt_ids, response_ids, logprobs, responses, scores, G)


def batch_of(r, pad):
    """All questions as one micro-batch of one step (a new step: its own uid)."""
    qs = list(range(r.num_questions))
    return collate_rollouts(r, qs, step_info(r, qs, 1), qs, 0, pad, 1.0, False)


def reprompt_ids(tok, r, k, threshold=0.5):
    """Teacher prompt of rollout ``k`` by hand (docs/specification.md §1.2(4)): the question, then the
    first *other* successful response of its group as the demonstration. None if masked."""
    G = r.group_size
    q = k // G
    demo = next((j for j in range(q * G, (q + 1) * G) if j != k and r.scores[j].reward >= threshold), None)
    if demo is None:
        return None
    content = (QUESTIONS[q % len(QUESTIONS)] + "\nCorrect solution:\n\n" + r.responses[demo]
               + "\n\nCorrectly solve the original question.")
    return tok(chatml(content), add_special_tokens=False)["input_ids"]


def perturb_teacher(sd, scale=0.05, seed=0):
    """Move the teacher weights away from the student's (as the EMA copy is after some
    steps): at random init the two nearly agree and the distillation loss is ~1e-4."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sd.teacher.weights.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def row_logp64(model64, prompt, response):
    """``[L, V]`` float64 log-softmax predicting ``response`` after ``prompt``: one row alone,
    no padding, default position ids."""
    ids = torch.tensor([prompt + response])
    logits = model64(input_ids=ids).logits[0, len(prompt) - 1 : len(prompt) - 1 + len(response)]
    return torch.log_softmax(logits.double(), -1)


# ---------------------------------------------------------------------------------------
# 1. DifficultyWeighting: global normalisation over 2 real gloo ranks
# ---------------------------------------------------------------------------------------

# (a) docs/specification.md §7 item 3: p̂ = [.5, .25 | 1, 0], G = 4, split 2 + 2 over the ranks
SPEC_REWARDS = {0: [[1, 1, 0, 0], [1, 0, 0, 0]], 1: [[1, 1, 1, 1], [0, 0, 0, 0]]}
# (b) unequal local batches (3 + 2 questions), non-binary rewards around the 0.5 threshold
UNEQUAL_REWARDS = {0: [[0.7, 0.2, 0.0, 0.4], [1, 1, 1, 0.5], [0.3, 0.1, 0.0, 0.2]],
                   1: [[0.6, 0.9, 0.1, 0.0], [1, 0.49, 0.51, 0]]}
CONFIGS = [dict(exponent=0.5, scope="all"), dict(exponent=0.5, scope="active"),
           dict(exponent=1.0, scope="all"), dict(exponent=0.5, scope="all", normalization="sum"),
           dict(exponent=0.5, scope="active", normalization="max")]


def _rank_weights(rank):
    out = {}
    for name, rewards in (("spec", SPEC_REWARDS), ("unequal", UNEQUAL_REWARDS)):
        for i, cfg in enumerate(CONFIGS):
            out[name, i] = DifficultyWeighting(**cfg).weights(torch.tensor(rewards[rank], dtype=torch.float32))
    return out


def _weights_worker(rank, world, store, q):
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        # plain lists: a tensor travels through shared memory that this process frees on exit,
        # sometimes before the parent has read it (FileNotFoundError there)
        q.put((rank, {k: v.tolist() for k, v in _rank_weights(rank).items()}))
        dist.barrier()
        dist.destroy_process_group()
    except BaseException as exc:  # report to the parent instead of hanging it
        q.put((rank, repr(exc)))
        raise


@pytest.mark.slow
def test_difficulty_weighting_normalises_over_real_ranks(tmp_path):
    """Pins: the weights a rank gets from ``DifficultyWeighting.weights`` are normalised over
    the *global* batch (all ranks' questions, their count included), for scope all/active.
    Kills: a local normalisation (rank 0 would get [1.071797, 0.928203] instead of
    [2.143594, 1.856406]), and a global sum over a local count (unequal 3 + 2 split)."""
    store = tmp_path / "gloo_store"  # a file rendezvous: no port to race for with other runs
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_weights_worker, args=(r, 2, store, q), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got, deadline = {}, time.monotonic() + 180
        while len(got) < len(procs):
            try:
                rank, result = q.get(timeout=2)
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                assert not dead and time.monotonic() < deadline, f"a rank died or hung: exit codes {dead}"
                continue
            assert isinstance(result, dict), f"rank {rank} failed: {result}"
            got[rank] = {k: torch.tensor(v) for k, v in result.items()}
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:  # never leave a hung rank behind
            if p.is_alive():
                p.kill()
    # hand values from docs/specification.md §7 item 3 (scope all), and scope active: q3 (p̂=0, no
    # success) is inactive, the mean runs over 3 questions: (0.5 + 0.433013 + 0) / 3
    spec_all = torch.tensor([2.143594, 1.856406, 0.0, 0.0])
    spec_active = torch.tensor([0.5, 0.4330127, 0.0, 0.0]) / (0.9330127 / 3)
    assert torch.allclose(torch.cat([got[0]["spec", 0], got[1]["spec", 0]]), spec_all, atol=1e-5)
    assert torch.allclose(torch.cat([got[0]["spec", 1], got[1]["spec", 1]]), spec_active, atol=1e-5)
    assert torch.allclose(spec_active, torch.tensor([1.607695, 1.392305, 0.0, 0.0]), atol=1e-5)
    # every configuration: the single-process weights of the concatenated rewards, split per rank
    for name, rewards in (("spec", SPEC_REWARDS), ("unequal", UNEQUAL_REWARDS)):
        full = torch.tensor(rewards[0] + rewards[1], dtype=torch.float32)
        n0 = len(rewards[0])
        for i, cfg in enumerate(CONFIGS):
            ref = DifficultyWeighting(**cfg).weights(full)  # no process group here: one process
            assert ref.abs().sum() > 0
            assert torch.allclose(got[0][name, i], ref[:n0], atol=1e-6), (name, cfg)
            assert torch.allclose(got[1][name, i], ref[n0:], atol=1e-6), (name, cfg)


# ---------------------------------------------------------------------------------------
# 2. the λ-mix value and gradient
# ---------------------------------------------------------------------------------------

MIX_REWARDS = [1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 1, 0]


def _grads(module):
    return torch.cat([p.grad.flatten() for p in module.policy.parameters()])


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_lambda_mix_is_convex_combination_of_grpo_and_sdpo(tiny_model_path, agg):
    """Pins: ``SDPO(grpo_lambda=0.3).compute_loss`` = 0.3·GRPO + 0.7·SDPO, in value and in
    gradient, with SDPO from the same module at λ=0 and GRPO written out by hand (on-policy
    the PPO ratio is 1: per-token loss −A_i, gradient −A_i ∇log π, A = r − group mean,
    aggregated like SDPO over all response tokens/sequences). Kills: the swapped mix
    (0.7·GRPO + 0.3·SDPO), a dropped GRPO term, and an off-policy GRPO ratio. Question
    weights stay 1: whether SC-SDPO weights should reach the GRPO part is unspecified (specification A7)."""
    lam = 0.3
    mix = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), grpo_lambda=lam, loss_agg_mode=agg)
    pure = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), grpo_lambda=0.0, loss_agg_mode=agg)
    hand = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), loss_agg_mode=agg)
    perturb_teacher(mix)
    perturb_teacher(pure)  # the same teacher in both
    tok = mix.tokenizer
    r = make_rollouts(tok, MIX_REWARDS)
    batch = batch_of(r, tok.pad_token_id)

    loss_mix, _ = mix.compute_loss(batch)
    loss_mix.backward()
    loss_sdpo, _ = pure.compute_loss(batch)
    loss_sdpo.backward()
    # GRPO by hand
    rew = torch.tensor(MIX_REWARDS, dtype=torch.float64).view(-1, 4)
    adv = (rew - rew.mean(1, keepdim=True)).view(-1)  # no std normalisation (SDPO's baseline)
    lengths = torch.tensor([len(y) for y in r.response_ids], dtype=torch.float64)
    logp = hand.student_forward(batch).logp
    m = batch.response_mask
    if agg == "token-mean":
        norm = lengths.sum()
        grpo_value = (-adv * lengths).sum() / norm
        surrogate = ((-adv.float()[:, None]) * logp * m).sum() / norm.float()
    else:
        grpo_value = (-adv).sum() / len(lengths)  # = 0: advantages sum to 0 in each group
        surrogate = ((-adv.float()[:, None]) * logp * m).sum(1).div(lengths.float()).sum() / len(lengths)
    surrogate.backward()

    assert loss_sdpo.item() > 1e-3
    expected = lam * grpo_value.item() + (1 - lam) * loss_sdpo.item()
    swapped = (1 - lam) * grpo_value.item() + lam * loss_sdpo.item()
    assert loss_mix.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert abs(loss_mix.item() - swapped) > 100 * (1e-5 * abs(expected) + 1e-7)
    g_mix, g_sdpo, g_grpo = _grads(mix), _grads(pure), _grads(hand)
    assert g_grpo.norm() > 0.1 * g_sdpo.norm() > 0
    g_expected = lam * g_grpo + (1 - lam) * g_sdpo
    assert torch.allclose(g_mix, g_expected, atol=1e-7, rtol=1e-4)
    # the swapped mix is far outside the tolerance
    assert (g_mix - ((1 - lam) * g_grpo + lam * g_sdpo)).norm() > 0.1 * g_expected.norm()


# ---------------------------------------------------------------------------------------
# 3. the token-level estimator: value and gradient
# ---------------------------------------------------------------------------------------


def test_token_level_estimator_value_and_gradient_match_float64(tiny_model_path):
    """Pins: the per-token loss of ``SDPO(full_logit_distillation=False, alpha=1)`` is
    ``stopgrad(log π(y_t) − log q(y_t)) · log π(y_t)`` (docs/specification.md §1.3), with ``log q`` the
    teacher's log-prob of the sampled token under the hand-rendered reprompt, and its
    gradient is ``(log π − log q) ∇log π`` (REINFORCE: value ≠ divergence). Checked against
    float64 forwards of each row alone. Kills: a non-detached factor (gradient
    ``(2 log π − log q) ∇log π``), the plain ``log π − log q`` (gradient ``∇log π``), a sign
    flip, and a teacher read at the wrong positions."""
    sd = SDPO(tiny_model_path, distillation=DistillationConfig(full_logit_distillation=False, alpha=1.0))
    perturb_teacher(sd)
    tok = sd.tokenizer
    rewards = [1, 1, 0, 0] + [1, 0, 0, 0]
    r = make_rollouts(tok, rewards)
    batch = batch_of(r, tok.pad_token_id)
    student = sd.student_forward(batch)
    per_tok, active, _ = sd.sdpo_per_token(batch, student)
    mask = batch.response_mask * active[:, None].float()
    (per_tok * mask).sum().backward()
    g32 = _grads(sd)

    s64_model = copy.deepcopy(sd.policy).double()
    t64_model = copy.deepcopy(sd.teacher.weights).double()
    s64_model.zero_grad(set_to_none=True)
    G = r.group_size
    surrogate = torch.zeros((), dtype=torch.float64)
    n_active = 0
    for k in range(len(rewards)):
        y = r.response_ids[k]
        t_prompt = reprompt_ids(tok, r, k)
        assert bool(active[k]) == (t_prompt is not None)
        if t_prompt is None:
            assert per_tok[k].abs().max().item() == 0.0
            continue
        n_active += 1
        idx = torch.tensor(y)[:, None]
        s = row_logp64(s64_model, r.prompt_ids[k // G], y).gather(-1, idx)[:, 0]
        with torch.no_grad():
            t = row_logp64(t64_model, t_prompt, y).gather(-1, idx)[:, 0]
        value = (s - t) * s
        assert torch.allclose(per_tok[k, : len(y)].detach().double(), value.detach(), atol=1e-5, rtol=1e-5)
        # the value is not the divergence estimate log π − log q
        assert (value - (s - t)).abs().max() > 1e-2
        surrogate = surrogate + ((s - t).detach() * s).sum()
    assert n_active == 7  # the lone success of q1 is masked
    surrogate.backward()
    g64 = torch.cat([p.grad.flatten() for p in s64_model.parameters()])
    assert g64.norm() > 0
    cos = torch.nn.functional.cosine_similarity(g32.double(), g64, dim=0)
    assert cos > 0.99999
    # atol: fp32 rounding relative to the largest entry (~14 here); the shared-prefix teacher's
    # log-probs differ from the packed forward's by ~1e-6 (another summation order), which moves
    # near-zero entries by ~1.2e-6 beyond rtol (packed: 0.45e-6)
    assert torch.allclose(g32.double(), g64, atol=2e-7 * g64.abs().max().item(), rtol=1e-3)


# ---------------------------------------------------------------------------------------
# 4. log-probs under left padding, B > 1, different prompt lengths
# ---------------------------------------------------------------------------------------


def _assert_positions_like_unpadded(attention_mask, position_ids):
    """Each row's real tokens get positions 0, 1, ..., n−1, as in a lone unpadded forward
    (docs/pitfalls.md#10). Stated directly because RoPE is shift-invariant: positions offset by the
    padding (``arange``) change the tiny Qwen3's log-probs by only ~5e-7, below any tolerance."""
    for mask, pos in zip(attention_mask, position_ids):
        real = mask.bool()
        assert pos[real].tolist() == list(range(int(real.sum())))


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "packed"])
@pytest.mark.parametrize("chunk", [None, 3])
def test_student_and_teacher_logp_under_left_padding(tiny_model_path, chunk, share):
    """Pins: with prompts of 11, 13 and 30 tokens (different left padding) and responses of
    different lengths, ``student_forward(batch).logp`` at every valid response position is
    the log-prob of one row run alone without padding (float64), chunked or not; and the
    teacher's log-softmax (``teacher_inputs`` + ``teacher_logits``, or the chunked path's
    hidden states + head) equals a lone forward of the hand-rendered reprompt + response.
    Kills: an ignored attention mask (student Δ 0.12), an off-by-one in the response slice
    (Δ 1.4), a teacher slice one column early (Δ 2.2), and position ids that count the left
    padding (checked on the layout itself: RoPE makes that one nearly invisible in values).
    Both teacher layouts: each distinct reprompt once with its rows' responses on its KV cache
    (shared-prefix, the default) and one packed row per response."""
    sd = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), logits_chunk_size=chunk)
    sd.share_teacher_prefix = share
    perturb_teacher(sd)
    tok = sd.tokenizer
    rewards = [1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 1, 0]
    r = make_rollouts(tok, rewards)
    assert len({len(p) for p in r.prompt_ids}) == 3 and len({len(y) for y in r.response_ids}) >= 5
    batch = batch_of(r, tok.pad_token_id)
    _assert_positions_like_unpadded(batch.attention_mask, batch.position_ids)
    with torch.no_grad():
        student = sd.student_forward(batch)
    s64, t64 = copy.deepcopy(sd.policy).double(), copy.deepcopy(sd.teacher.weights).double()
    G = r.group_size
    with torch.no_grad():
        for k in range(len(rewards)):
            y = r.response_ids[k]
            ref = row_logp64(s64, r.prompt_ids[k // G], y).gather(-1, torch.tensor(y)[:, None])[:, 0]
            got = student.logp[k, : len(y)].double()
            assert torch.allclose(got, ref, atol=1e-5, rtol=0), (k, (got - ref).abs().max().item())

        inputs, active, _ = sd.teacher_inputs(batch)
        if share:  # 11 teacher rows, fewer distinct reprompts (failed siblings share a demonstration)
            assert type(inputs).__name__ == "SharedPrefixRows" and inputs.prefix_ids.shape[0] < inputs.num_rows
        else:
            _assert_positions_like_unpadded(inputs.attention_mask, inputs.position_ids)
        if chunk is None:
            t_logits = sd.teacher_logits(batch, inputs)
        else:
            t_logits = sd.teacher.head()(sd.teacher.response_hidden(inputs))
        t_logp = torch.log_softmax(t_logits.double(), -1)
        rows = active.nonzero().squeeze(1).tolist()
        assert len(rows) == 11 and len(rows) == t_logp.shape[0]
        widths = {len(reprompt_ids(tok, r, k)) for k in rows}
        assert len(widths) > 1  # the teacher prompts are left-padded too
        for j, k in enumerate(rows):
            y = r.response_ids[k]
            ref = row_logp64(t64, reprompt_ids(tok, r, k), y)
            err = (t_logp[j, : len(y)] - ref).abs().max().item()
            assert err < 1e-5, (k, err)


# ---------------------------------------------------------------------------------------
# 5. the EMA teacher update: after opt.step(), once per optimizer step
# ---------------------------------------------------------------------------------------


def _flat(params):
    return torch.cat([p.detach().flatten().double() for p in params])


class _Recorder:
    """Records (micro_index, last_in_step, policy θ, teacher θ') after every micro-batch."""

    def __init__(self):
        self.records = []

    def callback(self):
        import lightning.pytorch as pl

        rec = self

        class Cb(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                rec.records.append((batch.micro_index, batch.last_in_step, _flat(module.policy.parameters()),
                                    _flat(module.teacher.weights.parameters())))

        return Cb()


@pytest.mark.slow
def test_ema_teacher_updates_after_each_optimizer_step(tiny_model_path, tmp_path):
    """Pins (docs/specification.md §1.5, A16): after optimizer step k the teacher is
    ``θ'_k = (1−r)·θ'_{k−1} + r·θ_k`` with ``θ_k`` the policy *after* the step and
    ``θ'_0 = θ_0``; with 2 micro-batches per step the teacher does not move between them.
    On-policy (``updates_per_batch=1``) a step is a rollout batch; the off-policy rule (one
    EMA per rollout batch, after its last step) is counted in test_reliability.
    Kills: the EMA before ``opt.step()`` (gives θ'_1 = θ_0), and an EMA per micro-batch
    (moves the teacher after the first micro-batch of step 2 and gives a different θ'_2)."""
    import lightning.pytorch as pl

    from lit_scsdpo import RolloutDataModule
    from lit_scsdpo.rollout import SamplingConfig

    from .toy import DigitTask

    rate = 0.3
    torch.manual_seed(0)
    # a large LR: Adam moves every parameter by ~lr, far above float noise, so θ'_k and the
    # mutants' values are clearly apart (a zero-gradient step would be skipped whole, with no
    # EMA: the guard on θ_k − θ_{k−1} below says the rollouts did give a gradient)
    model = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10), teacher=TeacherConfig(rate=rate),
                 optim=OptimConfig(lr=1e-2, warmup_steps=0))
    theta0 = _flat(model.policy.parameters())
    assert torch.equal(_flat(model.teacher.weights.parameters()), theta0)
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, micro_batch_questions=2,
                           sampling=SamplingConfig(1.0, 1.0, 6), evaluation=EvaluationConfig(samples=2))
    rec = _Recorder()
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, limit_val_batches=0, callbacks=[rec.callback()])
    trainer.fit(model, dm)
    assert trainer.global_step == 2
    assert [(mi, last) for mi, last, _, _ in rec.records] == [(0, False), (1, True)] * 2

    (_, _, p_a, t_a), (_, _, theta1, teacher1), (_, _, p_b, t_b), (_, _, theta2, teacher2) = rec.records
    assert (theta1 - theta0).abs().max() > 1e-3 and (theta2 - theta1).abs().max() > 1e-3
    # no step before the last micro-batch: neither the policy nor the teacher moves
    assert torch.equal(p_a, theta0) and torch.equal(t_a, theta0)
    assert torch.equal(p_b, theta1) and torch.equal(t_b, teacher1)
    # one EMA after step 1, with the updated policy (the mutant "before opt.step" gives θ_0)
    expected1 = (1 - rate) * theta0 + rate * theta1
    assert torch.allclose(teacher1, expected1, atol=1e-6, rtol=0)
    assert (teacher1 - theta0).abs().max() > 100 * 1e-6
    # one EMA after step 2
    expected2 = (1 - rate) * teacher1 + rate * theta2
    assert torch.allclose(teacher2, expected2, atol=1e-6, rtol=0)
    per_micro = (1 - rate) * ((1 - rate) * teacher1 + rate * theta1) + rate * theta2
    assert (per_micro - expected2).abs().max() > 100 * 1e-6

"""The response-position forwards (lit_scsdpo/forward.py): the shared-prefix teacher forward
equals one packed forward per row, and the response-only LM head equals slicing the full logits.

Tolerance: the shared path runs the same float32 arithmetic in another order (a cached prefix,
then the responses; another left-padding width), measured ~7e-6 on logits of magnitude ~5 and
~1.5e-6 on hidden states; 5e-5 is ~10 ulps at that magnitude, far below any real layout error
(a one-column shift or a wrong position id moves them by > 1e-2, checked below).
Runs under the newest transformers in .venv and under vLLM's pinned transformers 5.19 in
.venv-vllm (``cache`` vs ``past_key_values``): ``make test`` runs this file in both.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from lit_scsdpo.assets import resolve_model_path
from lit_scsdpo.config import DistillationConfig
from lit_scsdpo.forward import PackedRows, SharedPrefixRows, response_logits, supports_shared_prefix

TOL = 5e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def tiny():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path("asset:tiny-qwen3")).eval()


def random_llama(vocab=4096):
    """A random Llama with a larger vocabulary (untied head, GQA), no download."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def rows_like_a_teacher_batch(vocab, seed=0):
    """Three distinct reprompts of 9, 30 and 57 tokens shared by 9 rows in an interleaved order,
    responses of 1 to 11 tokens (right padding) and one row whose response is a single token."""
    g = torch.Generator().manual_seed(seed)
    distinct = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (30, 9, 57)]
    which = [0, 0, 1, 2, 0, 1, 2, 2, 0]
    lengths = [5, 1, 11, 3, 7, 2, 6, 4, 11]
    T = max(lengths)
    ids, mask = torch.zeros(len(which), T, dtype=torch.long), torch.zeros(len(which), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(3, vocab, (n,), generator=g)
        mask[i, :n] = 1
    return [distinct[w] for w in which], ids, mask


@pytest.mark.parametrize("make", [tiny, random_llama], ids=["tiny-qwen3", "random-llama-4096"])
@pytest.mark.parametrize("want", ["logits", "hidden"])
def test_shared_prefix_equals_packed_rows(make, want):
    model = make()
    assert supports_shared_prefix(model)
    prompts, ids, mask = rows_like_a_teacher_batch(model.config.vocab_size)
    with torch.no_grad():
        packed = PackedRows.build(prompts, ids, mask, pad_id=0).forward(model, want)
        shared_rows = SharedPrefixRows.build(prompts, ids, mask, pad_id=0)
        shared = shared_rows.forward(model, want)
    assert shared_rows.prefix_ids.shape[0] == 3 and shared.shape == packed.shape
    assert shared_rows.rows.tolist() == [0, 0, 1, 2, 0, 1, 2, 2, 0]
    valid = mask.bool()  # padded response positions are never read by a loss
    assert (shared - packed)[valid].abs().max() < TOL
    assert packed[valid].abs().max() > 0.1  # not trivially equal
    # the chunked loss reads hidden states through the head: same logits either way
    if want == "hidden":
        head = model.get_output_embeddings()
        assert (head(shared) - head(packed))[valid].abs().max() < 10 * TOL


def test_packed_rows_equal_a_lone_forward_of_each_row():
    """The independent reference: each row alone, no padding, full logits, sliced by hand."""
    model = tiny()
    prompts, ids, mask = rows_like_a_teacher_batch(model.config.vocab_size, seed=1)
    with torch.no_grad():
        shared = SharedPrefixRows.build(prompts, ids, mask, pad_id=0).forward(model, "logits")
        for k, prompt in enumerate(prompts):
            n = int(mask[k].sum())
            alone = model(torch.tensor([prompt + ids[k, :n].tolist()])).logits[0]
            ref = alone[len(prompt) - 1 : len(prompt) - 1 + n]
            assert (shared[k, :n] - ref).abs().max() < TOL, k
            # a layout one column off is far outside the tolerance
            off = alone[len(prompt) : len(prompt) + n - 1]
            if n > 1:
                assert (shared[k, : n - 1] - off).abs().max() > 1e-2


def test_response_logits_equal_slicing_the_full_logits():
    model = random_llama()
    prompts, ids, mask = rows_like_a_teacher_batch(model.config.vocab_size, seed=2)
    rows = PackedRows.build(prompts, ids, mask, pad_id=0)
    T = ids.shape[1]
    with torch.no_grad():
        full = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask,
                     position_ids=rows.position_ids).logits
        kept = response_logits(model, rows.input_ids, rows.attention_mask, rows.position_ids, rows.prompt_width, T)
    assert torch.equal(kept, full[:, rows.prompt_width - 1 : rows.prompt_width - 1 + T])


def test_shared_prefix_runs_fewer_tokens():
    """Teacher tokens: U·Pu + n·T instead of n·(P+T) (left padding included on both sides)."""
    model = tiny()
    prompts, ids, mask = rows_like_a_teacher_batch(model.config.vocab_size)
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, a, out: seen.append(a[0].numel()))
    try:
        with torch.no_grad():
            PackedRows.build(prompts, ids, mask, 0).forward(model, "logits")
            packed, seen[:] = sum(seen), []
            SharedPrefixRows.build(prompts, ids, mask, 0).forward(model, "logits")
            shared = sum(seen)
    finally:
        handle.remove()
    n, T = ids.shape
    assert packed == n * (57 + T) and shared == 3 * 57 + n * T
    assert shared < packed / 2


def test_models_whose_cache_does_not_concatenate_use_the_packed_path():
    sliding = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, use_sliding_window=True,
                          sliding_window=8, max_window_layers=0, layer_types=["sliding_attention"] * 2)
    assert not supports_shared_prefix(Qwen3ForCausalLM(sliding).eval())
    model = tiny()
    assert supports_shared_prefix(model)
    assert not supports_shared_prefix(torch.nn.Linear(2, 2))


def enable_checkpointing(model):
    getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()


def saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs, and its result."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


@pytest.mark.parametrize("make", [tiny, random_llama], ids=["tiny-qwen3", "random-llama-4096"])
def test_shared_prefix_under_activation_checkpointing_is_exact_and_saves_less(make):
    """The student's shared path with transformers' activation checkpointing on (training
    mode): same logits and parameter gradients as the packed path without checkpointing, the
    cache survives the replay, and autograd keeps a fraction of the activations."""
    prompts, ids, mask = rows_like_a_teacher_batch(make().config.vocab_size, seed=3)
    valid = mask.bool()
    weights = torch.randn(ids.shape + (1,), generator=torch.Generator().manual_seed(0))

    def run(model, rows):
        model.zero_grad(set_to_none=True)
        nbytes, hidden = saved_bytes(lambda: rows.forward(model, "hidden"))
        (hidden * weights * valid[..., None]).sum().backward()
        return nbytes, hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = make().train()
    ref_bytes, ref, ref_grads = run(plain, PackedRows.build(prompts, ids, mask, 0))
    checkpointed = make().train()
    enable_checkpointing(checkpointed)
    assert supports_shared_prefix(checkpointed)
    rows = SharedPrefixRows.build(prompts, ids, mask, 0)
    nbytes, out, grads = run(checkpointed, rows)
    assert (out - ref)[valid].abs().max() < TOL
    assert grads.keys() == ref_grads.keys() and len(grads) > 10
    for name, g in ref_grads.items():
        assert (grads[name] - g).abs().max() <= TOL * max(1.0, g.abs().max().item()), name
    # layer checkpointing in place (the cache kept): far fewer saved bytes than the packed path
    assert nbytes < 0.5 * ref_bytes, (nbytes, ref_bytes)
    with torch.no_grad():  # a live teacher: the training policy without autograd
        assert (rows.forward(checkpointed, "hidden") - ref)[valid].abs().max() < TOL
    # the layers' state is restored: checkpointing on, the cache flag back to the class's
    layers = [m for m in checkpointed.modules() if hasattr(m, "_can_checkpoint_with_cache")]
    assert layers and all(m.gradient_checkpointing and "_can_checkpoint_with_cache" not in vars(m) for m in layers)


def test_sdpo_loss_and_gradients_unchanged_by_prefix_sharing(tiny_model_path):
    """Before/after on one batch: SDPO and SC-SDPO (question weights) give the same loss and
    gradients with the shared-prefix teacher as with the packed one, chunked or not."""
    from lit_scsdpo import SDPO, losses as L

    from .test_pins import batch_of, make_rollouts, perturb_teacher

    base = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10))
    perturb_teacher(base)
    rewards = [1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 1, 0]
    r = make_rollouts(base.tokenizer, rewards)
    for chunk in (None, 4):
        for weighted in (False, True):
            results = []
            for share in (False, True):
                sd = copy.deepcopy(base)
                sd.logits_chunk_size, sd.share_teacher_prefix = chunk, share
                batch = batch_of(r, base.tokenizer.pad_token_id)
                if weighted:
                    q = L.difficulty_weights(torch.tensor(rewards, dtype=torch.float).view(3, 4))
                    batch.question_weights = q.repeat_interleave(4)  # per row
                rows = sd.teacher_inputs(batch)[0]
                assert type(rows) is (SharedPrefixRows if share else PackedRows)
                loss, _ = sd.compute_loss(batch)
                loss.backward()
                results.append((loss.detach(), torch.cat([p.grad.flatten() for p in sd.policy.parameters()])))
            (l0, g0), (l1, g1) = results
            assert l0.abs() > 0 and g0.norm() > 0
            assert torch.allclose(l0, l1, rtol=1e-5, atol=1e-7), (chunk, weighted)
            assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-6 * g0.abs().max()), (chunk, weighted)


@pytest.mark.parametrize("algo", ["grpo", "sdpo"])
def test_student_prefix_sharing_leaves_losses_and_gradients_unchanged(tiny_model_path, algo):
    """The student runs each question's prompt once for its G rollouts, with gradients through
    the shared prompt: loss, log-probs and gradients equal the packed forward's (chunked or not)."""
    from lit_scsdpo import GRPO, SDPO

    from .test_pins import batch_of, make_rollouts, perturb_teacher

    base = GRPO(tiny_model_path) if algo == "grpo" else SDPO(tiny_model_path,
                distillation=DistillationConfig(topk=10))
    if algo == "sdpo":
        perturb_teacher(base)
    rewards = [1, 1, 0, 0] + [1, 0, 0, 0] + [1, 1, 1, 0]
    r = make_rollouts(base.tokenizer, rewards)
    for chunk in (None, 4):
        results = []
        for share in (False, True):
            m = copy.deepcopy(base)
            m.logits_chunk_size, m.share_student_prefix = chunk, share
            batch = batch_of(r, base.tokenizer.pad_token_id)
            rows = m.student_rows(batch)
            assert type(rows) is (SharedPrefixRows if share else PackedRows)
            if share:
                assert rows.prefix_ids.shape[0] == 3 and rows.num_rows == 12  # 3 questions, 12 rollouts
            loss, _ = m.compute_loss(batch)
            loss.backward()
            results.append((loss.detach(), m.student_forward(batch).logp.detach(),
                            torch.cat([p.grad.flatten() for p in m.policy.parameters()])))
        (l0, lp0, g0), (l1, lp1, g1) = results
        mask = batch.response_mask.bool()
        assert l0.abs() > 0 and g0.norm() > 0
        assert (lp0 - lp1)[mask].abs().max() < TOL
        assert torch.allclose(l0, l1, rtol=1e-5, atol=1e-7), chunk
        assert torch.allclose(g0, g1, rtol=1e-4, atol=1e-6 * g0.abs().max()), chunk


def test_student_rows_fall_back_when_a_group_has_different_prompts(tiny_model_path):
    from lit_scsdpo import GRPO

    from .test_pins import batch_of, make_rollouts

    m = GRPO(tiny_model_path)
    batch = batch_of(make_rollouts(m.tokenizer, [1, 0, 1, 0, 0, 1, 1, 0]), m.tokenizer.pad_token_id)
    assert type(m.student_rows(batch)) is SharedPrefixRows
    batch.group_ids = torch.zeros_like(batch.group_ids)  # two different prompts claimed as one group
    assert type(m.student_rows(batch)) is PackedRows

"""GRPO pieces, IS ratio, λ-mix, and aggregation (values and micro-batch/world-size invariance)."""

import math

import pytest
import torch

from lit_scsdpo import losses as L

from .helpers import run_ranks

torch.set_num_threads(1)


def test_importance_ratio():  # docs/specification.md §7 item 9
    lp = torch.tensor([-1.0, -1.0, -1.0, 0.0], requires_grad=True)
    old = torch.tensor([-1.0, -1.5, 0.0, -100.0])
    r = L.importance_ratio(lp, old)
    assert not r.requires_grad
    assert r.tolist() == pytest.approx([1.0, math.exp(0.5), math.exp(-1.0), 2.0])
    assert L.importance_ratio(lp, lp).tolist() == [1.0] * 4  # on-policy: exactly 1
    # the log-ratio clamp at ±20 keeps exp finite before the clip
    assert L.importance_ratio(torch.tensor([0.0]), torch.tensor([1e4]), clip=1e30).item() == pytest.approx(
        math.exp(-20.0)
    )


def test_group_advantages():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])
    a = L.group_advantages(r)
    assert a.tolist() == [[0.5, -0.5, -0.5, 0.5], [0, 0, 0, 0], [0.75, -0.25, -0.25, -0.25]]
    a_std = L.group_advantages(r, norm_by_std=True)
    std0 = math.sqrt(1 / 3)  # unbiased std of [1,0,0,1]
    assert a_std[0].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0], rel=1e-5)
    assert a_std[1].tolist() == [0, 0, 0, 0]
    assert a_std[2].tolist() == pytest.approx([0.75 / 0.5, -0.5, -0.5, -0.5], rel=1e-5)


def test_ppo_clipped_surrogate_cases():
    old = torch.zeros(4)
    # ratio 1.5 (above 1+0.28) and 0.5 (below 1-0.2), positive/negative advantages
    lp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5])).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = L.ppo_clipped_surrogate(lp, old, adv)
    # A>0, r=1.5: max(-1.5, -1.28) = -1.28 (clipped, no grad); A<0, r=1.5: max(1.5, 1.28) = 1.5
    # A>0, r=0.5: max(-0.5, -0.8) = -0.5;                       A<0, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.tolist() == pytest.approx([-1.28, 1.5, -0.5, 0.8], abs=1e-6)
    loss.sum().backward()
    assert lp.grad.tolist() == pytest.approx([0.0, 1.5, -0.5, 0.0], abs=1e-6)


def test_ppo_on_policy_gradient_is_policy_gradient():
    lp = torch.tensor([-0.3, -2.0], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    L.ppo_clipped_surrogate(lp, lp.detach(), adv).sum().backward()
    assert lp.grad.tolist() == pytest.approx([-2.0, 1.0])  # = -A (ratio 1)


def test_kl_to_reference_and_grpo_loss():
    lp = torch.tensor([-1.0, -2.0])
    ref = torch.tensor([-1.0, -1.0])
    assert L.kl_to_reference(lp, ref).tolist() == pytest.approx([0.0, math.e - 2.0])
    base = L.grpo_token_loss(lp, lp, torch.ones(2))
    with_kl = L.grpo_token_loss(lp, lp, torch.ones(2), ref_logp=ref, kl_coef=0.1)
    assert (with_kl - base).tolist() == pytest.approx([0.0, 0.1 * (math.e - 2.0)])
    with pytest.raises(ValueError, match="ref_logp"):
        L.grpo_token_loss(lp, lp, torch.ones(2), kl_coef=0.1)


def test_mix_losses():
    g, s = torch.tensor(2.0), torch.tensor(4.0)
    assert L.mix_losses(g, s).item() == 4.0  # λ=0 default: pure SDPO
    assert L.mix_losses(g, s, 0.9).item() == pytest.approx(2.2)
    with pytest.raises(ValueError, match="lambda"):
        L.mix_losses(g, s, 1.5)


def test_aggregation_hand_values():
    per_tok = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    # token-mean: (1+2+4+5+6) / 5
    assert L.aggregate_loss(per_tok, mask, "token-mean").item() == pytest.approx(18 / 5)
    # seq-mean-token-mean: (1.5 + 5 + 0) / 3 sequences (the masked one counted)
    assert L.aggregate_loss(per_tok, mask, "seq-mean-token-mean").item() == pytest.approx(6.5 / 3)
    # seq-mean-token-sum: (3 + 15 + 0) / 3
    assert L.aggregate_loss(per_tok, mask, "seq-mean-token-sum").item() == pytest.approx(6.0)
    w = torch.tensor([2.0, 0.5, 1.0])
    assert L.aggregate_loss(per_tok, mask, weights=w).item() == pytest.approx((3.0 + 2.5) / 3)


def test_aggregation_masked_nan_does_not_leak():
    per_tok = torch.tensor([[1.0, float("nan")]], requires_grad=True)
    out = L.aggregate_loss(per_tok, torch.tensor([[1, 0]]), "token-mean")
    out.backward()
    assert out.item() == 1.0 and per_tok.grad.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("mode", L.AGGREGATION_MODES)
def test_all_masked_batch_is_zero_and_attached(mode):
    logits = torch.randn(4, 6, 11, requires_grad=True)
    per_tok = L.distillation_loss(logits, torch.randn(4, 6, 11))
    out = L.aggregate_loss(per_tok, torch.zeros(4, 6), mode)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.count_nonzero(logits.grad) == 0


def _problem(seed=0, N=8, T=7, H=5, V=13):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, H, generator=g)
    W = torch.randn(H, V, generator=g, requires_grad=True)
    teacher = torch.randn(N, T, V, generator=g)
    mask = (torch.rand(N, T, generator=g) > 0.3).float()
    mask[2] = 0  # a fully masked sequence (no demonstration)
    weights = torch.rand(N, generator=g) * 2
    return x, W, teacher, mask, weights


def _contribution(x, W, teacher, mask, weights, mode, normalizer):
    per_tok = L.distillation_loss(x @ W, teacher, topk=4)
    return L.aggregate_loss(per_tok, mask, mode, normalizer, weights)


@pytest.mark.parametrize("mode", L.AGGREGATION_MODES)
def test_microbatch_invariance(mode):
    x, W, teacher, mask, weights = _problem()
    full = _contribution(x, W, teacher, mask, weights, mode, None)
    (g_full,) = torch.autograd.grad(full, W)
    norm = L.global_normalizer(mask, mode)
    for mb in (1, 2, 8):
        total, grad = 0.0, torch.zeros_like(W)
        for i in range(0, 8, mb):
            sl = slice(i, i + mb)
            c = _contribution(x[sl], W, teacher[sl], mask[sl], weights[sl], mode, norm)
            (g,) = torch.autograd.grad(c, W)
            total, grad = total + c.item(), grad + g
        assert total == pytest.approx(full.item(), rel=1e-5), mb
        assert torch.allclose(grad, g_full, atol=1e-6), mb


@pytest.mark.parametrize("mode", L.AGGREGATION_MODES)
def test_world_size_invariance_simulated_two_ranks(mode):
    x, W, teacher, mask, weights = _problem(seed=3)
    full = _contribution(x, W, teacher, mask, weights, mode, None)
    (g_full,) = torch.autograd.grad(full, W)
    shards = [slice(0, 3), slice(3, 8)]  # uneven split on purpose

    def rank_fn(rank, reduce):
        sl = shards[rank]
        norm = L.global_normalizer(mask[sl], mode, reduce=reduce)
        c = _contribution(x[sl], W, teacher[sl], mask[sl], weights[sl], mode, norm)
        (g,) = torch.autograd.grad(c, W)
        return c.item(), g

    results = run_ranks(rank_fn, 2)
    # DDP averages gradients; contributions × world size, averaged, = the sum below
    assert sum(r[0] for r in results) == pytest.approx(full.item(), rel=1e-5)
    assert torch.allclose(results[0][1] + results[1][1], g_full, atol=1e-6)


def test_sc_sdpo_weights_scale_question_losses():
    """SC-SDPO = SDPO with per-question factors w_q; p̂∈{0,1} questions contribute 0."""
    G = 4
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    w_q = L.difficulty_weights(rewards)
    assert w_q.tolist() == pytest.approx([3.0, 0.0, 0.0], abs=1e-6)  # mean of [.5, 0, 0] = 1/6
    per_tok = torch.rand(12, 5)
    mask = torch.ones(12, 5)
    sdpo_q = [L.aggregate_loss(per_tok[q * G : (q + 1) * G], mask[q * G : (q + 1) * G], normalizer=12.0) for q in range(3)]
    sc = L.aggregate_loss(per_tok, mask, weights=w_q.repeat_interleave(G))
    assert sc.item() == pytest.approx(sum(w * s.item() for w, s in zip(w_q.tolist(), sdpo_q)), rel=1e-6)

"""Distillation divergences vs an independent float64 computation; gradients; stability."""

import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from lit_scsdpo import losses as L

torch.set_num_threads(1)
ALPHAS = [0.0, 0.25, 0.5, 1.0]


def reference_divergence(student_logits, teacher_logits, alpha, topk=None, tail=True, temperature=1.0):
    """Independent computation: probabilities in float64, buckets built by hand, divergences by
    torch.distributions.kl_divergence on Categorical distributions, one position at a time."""
    out = []
    s_all = (student_logits.double() / temperature).softmax(-1).reshape(-1, student_logits.shape[-1])
    t_all = (teacher_logits.double() / temperature).softmax(-1).reshape(-1, teacher_logits.shape[-1])
    for ps, pt in zip(s_all, t_all):
        if topk is not None:
            ids = torch.argsort(ps, descending=True)[:topk]
            ps_k, pt_k = ps[ids], pt[ids]
            if tail:
                ps = torch.cat([ps_k, (1 - ps_k.sum()).clamp_min(0).reshape(1)])
                pt = torch.cat([pt_k, (1 - pt_k.sum()).clamp_min(0).reshape(1)])
            else:
                ps, pt = ps_k / ps_k.sum(), pt_k / pt_k.sum()
        S, T = Categorical(probs=ps), Categorical(probs=pt)
        if alpha == 0:
            d = kl_divergence(T, S)
        elif alpha == 1:
            d = kl_divergence(S, T)
        else:
            M = Categorical(probs=(1 - alpha) * ps + alpha * pt)
            d = (1 - alpha) * kl_divergence(S, M) + alpha * kl_divergence(T, M)
        out.append(d)
    return torch.stack(out).reshape(student_logits.shape[:-1])


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 5, 50, generator=g) * 2
    t = torch.randn(3, 5, 50, generator=g) * 2
    return s, t


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("topk,tail", [(None, True), (10, True), (10, False), (1, True)])
def test_divergence_matches_independent(logits, alpha, topk, tail):
    s, t = logits
    got = L.distillation_loss(s, t, alpha=alpha, topk=topk, add_tail=tail)
    ref = reference_divergence(s, t, alpha, topk, tail)
    assert got.shape == (3, 5)
    assert torch.allclose(got.double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_temperature_applies_to_both_sides(logits, alpha):
    s, t = logits
    got = L.distillation_loss(s, t, alpha=alpha, topk=7, temperature=0.6)
    ref = reference_divergence(s, t, alpha, 7, True, temperature=0.6)
    assert torch.allclose(got.double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_topk_equal_vocab_is_full_vocab(logits, alpha):
    s, t = logits
    full = L.distillation_loss(s, t, alpha=alpha, topk=None)
    k_all = L.distillation_loss(s, t, alpha=alpha, topk=s.shape[-1], add_tail=True)
    assert torch.allclose(full, k_all, atol=1e-5)


def test_jsd_symmetric_and_zero_iff_equal(logits):  # docs/specification.md §7 item 6
    s, t = logits
    s_lp, t_lp = L.topk_support(s, t, topk=10)
    assert torch.allclose(L.generalized_jsd(s_lp, t_lp, 0.5), L.generalized_jsd(t_lp, s_lp, 0.5), atol=1e-6)
    assert torch.all(L.generalized_jsd(s_lp, t_lp, 0.5) > 0)
    assert torch.allclose(L.distillation_loss(s, s.clone()), torch.zeros(3, 5), atol=1e-6)
    # α=0 forward KL(teacher‖student), α=1 reverse KL(student‖teacher)
    kl_ts = (t_lp.exp() * (t_lp - s_lp)).sum(-1)
    kl_st = (s_lp.exp() * (s_lp - t_lp)).sum(-1)
    assert torch.allclose(L.generalized_jsd(s_lp, t_lp, 0.0), kl_ts, atol=1e-6)
    assert torch.allclose(L.generalized_jsd(s_lp, t_lp, 1.0), kl_st, atol=1e-6)


def test_support_is_student_topk_with_tail():  # docs/specification.md §7 item 7
    s = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    t = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    s_lp, t_lp = L.topk_support(s, t, topk=2)
    ps, pt = s.softmax(-1)[0], t.softmax(-1)[0]
    # student's top-2 are ids 1 and 3; the teacher is gathered there, tail = 1 - sum
    assert torch.allclose(s_lp.exp()[0], torch.stack([ps[1], ps[3], 1 - ps[1] - ps[3]]), atol=1e-6)
    assert torch.allclose(t_lp.exp()[0], torch.stack([pt[1], pt[3], 1 - pt[1] - pt[3]]), atol=1e-6)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("topk", [None, 10])
def test_gradient_moves_student_toward_teacher(logits, alpha, topk):
    s0, t = logits
    s = s0.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    before = L.distillation_loss(s, t, alpha=alpha, topk=topk).sum()
    before.backward()
    assert t.grad is None, "the teacher must receive no gradient"
    with torch.no_grad():
        s_new = s - 0.5 * s.grad
        after = L.distillation_loss(s_new, t, alpha=alpha, topk=topk).sum()
        # the full-vocabulary divergence decreases too: the student really moved toward q
        full_before = reference_divergence(s0, t.detach(), 0.5).sum()
        full_after = reference_divergence(s_new, t.detach(), 0.5).sum()
    assert after < before.detach()
    assert full_after < full_before


def test_token_level_estimator_gradient_sign():
    s = torch.tensor([-1.0, -2.0], requires_grad=True)
    t = torch.tensor([-0.5, -3.0])
    loss = L.token_level_distillation_loss(s, t)
    loss.sum().backward()
    # d/ds [stopgrad(s - t) * s] = s - t: push log π down where the student over-weights y_t
    assert s.grad.tolist() == pytest.approx([-0.5, 1.0])
    assert loss.tolist() == pytest.approx([0.5, -2.0])


def test_stability_bf16_extreme_and_saturated():
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(4, 64, generator=g) * 1e4).to(torch.bfloat16).requires_grad_(True)
    t = (torch.randn(4, 64, generator=g) * 1e4).to(torch.bfloat16)
    for alpha in ALPHAS:
        for topk in (None, 5, 64):
            out = L.distillation_loss(s, t, alpha=alpha, topk=topk)
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all(), (alpha, topk)
            (g_s,) = torch.autograd.grad(out.sum(), s)
            assert torch.isfinite(g_s.float()).all(), (alpha, topk)
    # top-k mass that rounds to exactly 1 in fp32: the tail clamp keeps it finite
    one_hot = torch.full((2, 32), -1e4)
    one_hot[:, 0] = 1e4
    s_lp, t_lp = L.topk_support(one_hot, one_hot.flip(-1), topk=3)
    assert torch.isfinite(s_lp).all() and torch.isfinite(t_lp).all()
    assert torch.isfinite(L.generalized_jsd(s_lp, t_lp)).all()


def test_chunked_matches_unchunked_values_and_grads():
    g = torch.Generator().manual_seed(2)
    H, V = 16, 40
    head_s = torch.nn.Linear(H, V, bias=False)
    head_t = torch.nn.Linear(H, V, bias=False)
    hs = torch.randn(2, 9, H, generator=g, requires_grad=True)
    ht = torch.randn(2, 9, H, generator=g)
    ref = L.distillation_loss(head_s(hs), head_t(ht), topk=5)
    (g_ref,) = torch.autograd.grad(ref.sum(), hs)
    for chunk in (1, 4, 18, 100):
        got = L.chunked_distillation_loss(hs, head_s, ht, head_t, chunk_size=chunk, topk=5)
        (g_got,) = torch.autograd.grad(got.sum(), hs)
        assert torch.allclose(got, ref, atol=1e-6)
        assert torch.allclose(g_got, g_ref, atol=1e-6)
    assert head_t.weight.grad is None


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="same shape"):
        L.distillation_loss(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="topk"):
        L.distillation_loss(torch.zeros(2, 5), torch.zeros(2, 5), topk=0)
    # K > V is the whole vocabulary (plus a ~0 tail)
    a, b = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.allclose(L.distillation_loss(a, b, topk=6), L.distillation_loss(a, b, topk=None), atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        L.distillation_loss(torch.zeros(2, 5), torch.zeros(2, 5), alpha=1.5)

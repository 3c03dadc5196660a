"""SC-SDPO pass-rate weights: docs/specification.md §7 items 1-4, properties, distributed normalisation."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_scsdpo import losses as L
from lit_scsdpo.distributed import distributed_reduce

from .helpers import run_ranks


def rewards_for(p_hat, G=8):
    """[B, G] binary rewards with exactly round(p*G) successes per question."""
    rows = []
    for p in p_hat:
        k = round(p * G)
        rows.append([1.0] * k + [0.0] * (G - k))
    return torch.tensor(rows)


def test_pass_rates_threshold():
    r = torch.tensor([[1.0, 0.0, 0.5, 0.49], [0.0, 0.0, 0.0, 0.0]])
    assert L.pass_rates(r).tolist() == [0.5, 0.0]  # 1.0 and 0.5 pass; 0.49 does not
    assert L.pass_rates(r, threshold=1.0).tolist() == [0.25, 0.0]
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        L.pass_rates(torch.ones(4))


@pytest.mark.parametrize(
    "p,expected",
    [(0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (1 / 8, 0.330719), (7 / 8, 0.330719),
     (2 / 8, 0.433013), (6 / 8, 0.433013), (3 / 8, 0.484123), (5 / 8, 0.484123)],
)
def test_sqrt_weight_values(p, expected):  # docs/specification.md §7 item 1
    w = L.raw_difficulty_weights(torch.tensor([p]))
    assert w.item() == pytest.approx(expected, abs=1e-6)


def test_variance_weight_values():  # docs/specification.md §7 item 2
    w = L.raw_difficulty_weights(torch.tensor([0.5, 1 / 8]), exponent=1.0)
    assert w.tolist() == pytest.approx([0.25, 0.109375], abs=1e-7)


def test_uniform_and_binary_weights():
    p = torch.tensor([0.0, 0.25, 1.0])
    assert L.raw_difficulty_weights(p, exponent=0.0).tolist() == [1.0, 1.0, 1.0]
    assert L.raw_difficulty_weights(p, binary=True).tolist() == [0.0, 1.0, 0.0]
    assert L.raw_difficulty_weights(p, floor=0.1).tolist() == pytest.approx([0.1, 0.433013, 0.1], abs=1e-6)
    with pytest.raises(ValueError, match="p_hat"):
        L.raw_difficulty_weights(torch.tensor([1.5]))


def test_batch_mean_example():  # docs/specification.md §7 item 3
    p = torch.tensor([0.5, 0.25, 1.0, 0.0])
    raw = L.raw_difficulty_weights(p)
    assert raw.tolist() == pytest.approx([0.5, 0.433013, 0, 0], abs=1e-6)
    w = L.normalize_weights(raw)
    assert w.tolist() == pytest.approx([2.143594, 1.856406, 0, 0], abs=1e-6)
    assert w.sum().item() == pytest.approx(4.0, abs=1e-6)
    w2 = L.normalize_weights(raw[:2])
    assert w2.tolist() == pytest.approx([1.071797, 0.928203], abs=1e-6)
    # end to end from rewards
    assert L.difficulty_weights(rewards_for([0.5, 0.25, 1.0, 0.0])).tolist() == pytest.approx(
        [2.143594, 1.856406, 0, 0], abs=1e-6
    )


def test_other_modes_and_scope():
    raw = torch.tensor([0.5, 0.25, 0.0, 0.0])
    assert L.normalize_weights(raw, "none").tolist() == [0.5, 0.25, 0.0, 0.0]
    assert L.normalize_weights(raw, "sum").tolist() == pytest.approx([2 / 3, 1 / 3, 0, 0], abs=1e-6)
    assert L.normalize_weights(raw, "max").tolist() == pytest.approx([1.0, 0.5, 0, 0], abs=1e-6)
    active = torch.tensor([True, True, True, False])
    # mean over the 3 active questions = 0.25
    assert L.normalize_weights(raw, scope="active", active=active).tolist() == pytest.approx(
        [2.0, 1.0, 0.0, 0.0], abs=1e-6
    )
    with pytest.raises(ValueError, match="active"):
        L.normalize_weights(raw, scope="active")
    with pytest.raises(ValueError, match="normalization mode"):
        L.normalize_weights(raw, "median")


def test_scale_invariance_detached_and_all_zero():  # docs/specification.md §7 item 4
    raw = torch.tensor([0.5, 0.433013, 0.1, 0.0], requires_grad=True)
    w = L.normalize_weights(raw)
    assert not w.requires_grad
    assert torch.allclose(L.normalize_weights(raw * 7.0), w, atol=1e-6)
    zero = L.difficulty_weights(rewards_for([0.0, 1.0, 1.0, 0.0]))
    assert zero.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_injected_reduce_two_ranks_equals_one_process():
    p = torch.tensor([0.5, 0.25, 1.0, 0.0, 0.125, 0.875])
    raw = L.raw_difficulty_weights(p)
    shards = [raw[:2], raw[2:]]
    for mode in ("batch_mean", "sum", "max"):
        full = L.normalize_weights(raw, mode)
        got = run_ranks(lambda rank, red, m=mode: L.normalize_weights(shards[rank], m, reduce=red), 2)
        assert torch.allclose(torch.cat(got), full, atol=1e-6), mode
    active = torch.tensor([True, False, True, True, True, False])
    full = L.normalize_weights(raw, scope="active", active=active)
    act = [active[:2], active[2:]]
    got = run_ranks(
        lambda r, red: L.normalize_weights(shards[r], scope="active", active=act[r], reduce=red), 2
    )
    assert torch.allclose(torch.cat(got), full, atol=1e-6)


def _gloo_worker(rank, world, port, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    raw = L.raw_difficulty_weights(torch.tensor([0.5, 0.25, 1.0, 0.0])[2 * rank : 2 * rank + 2])
    q.put((rank, L.normalize_weights(raw, reduce=distributed_reduce()).tolist()))
    dist.destroy_process_group()


def test_distributed_reduce_with_real_gloo_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_gloo_worker, args=(r, 2, port, q)) for r in range(2)]
    for pr in procs:
        pr.start()
    out = dict(q.get(timeout=120) for _ in procs)
    for pr in procs:
        pr.join(timeout=60)
    assert out[0] + out[1] == pytest.approx([2.143594, 1.856406, 0, 0], abs=1e-6)


probs = st.lists(st.integers(min_value=0, max_value=8), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(probs, st.floats(min_value=1e-2, max_value=1e3))
def test_weight_properties(ks, scale):
    p = torch.tensor(ks, dtype=torch.float32) / 8
    raw = L.raw_difficulty_weights(p)
    w = L.normalize_weights(raw)
    B = len(ks)
    assert torch.all(w >= 0) and torch.all(w <= B + 1e-4)
    assert torch.all(w[(p == 0) | (p == 1)] == 0)
    if torch.any((p > 0) & (p < 1)):
        assert w.mean().item() == pytest.approx(1.0, abs=1e-5)
    else:
        assert torch.all(w == 0)
    # eps=1e-8 in the denominator makes the invariance hold to ~eps/mean, not exactly
    assert torch.allclose(L.normalize_weights(raw * scale), w, rtol=1e-3, atol=1e-5)
    assert torch.all(raw <= 0.5 + 1e-7)


def test_sqrt_weight_is_monotone_distance_from_half():
    p = torch.arange(0, 9) / 8
    w = L.raw_difficulty_weights(p)
    assert int(w.argmax()) == 4 and math.isclose(w.max().item(), 0.5)

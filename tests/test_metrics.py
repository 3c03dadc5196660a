"""Validation metrics mean@k / pass@k / maj@k: docs/specification.md §4.2 (verl's definitions)."""

import math
import socket

import numpy as np
import pytest
import torch

from lit_scsdpo.metrics import MajorityAtK, MeanAtK, PassAtK, majority_vote, pass_at_k

SRC = ["arithmetic/L3", "sciknoweval/chemistry"]


# ----------------------------------------------------------------------------- pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 0, 1, 0.0), (4, 0, 4, 0.0), (4, 2, 4, 1.0),
     (3, 1, 3, 1.0), (4, 3, 2, 1.0), (4, 2, 2, 5 / 6), (16, 4, 1, 0.25)],
)
def test_pass_at_k_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="n >= k"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError, match="k >= 1"):
        pass_at_k(2, 1, 0)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(2, 3, 1)
    m = PassAtK(SRC, k=5)
    with pytest.raises(ValueError, match="n=4 < k=5"):
        m.update(["arithmetic/L3"], [[1.0, 0.0, 0.0, 0.0]])


def test_pass_at_k_matches_comb_large_n():
    for n in (1, 7, 64, 200):
        for k in sorted({1, max(1, n // 3), n}):
            for c in sorted({0, 1, n // 2, n}):
                ref = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12)


# ----------------------------------------------------------------------------- majority_vote


def test_majority_vote_hand_cases():
    # clear winner "B" (2 votes); its first occurrence (index 1) has score 1
    assert majority_vote(["A", "B", "C", "B"], [0, 1, 0, 0]) == 1.0
    # tie A/B 2-2: A seen first wins; score = first A's score
    assert majority_vote(["A", "B", "B", "A"], [0, 1, 1, 1]) == 0.0
    assert majority_vote(["B", "A", "A", "B"], [1, 0, 0, 0]) == 1.0
    # None never wins even when most frequent
    assert majority_vote([None, None, None, "C"], [1, 1, 1, 0.25]) == 0.25
    assert majority_vote([None, None, "C", "D"], [1, 1, 0.0, 1.0]) == 0.0  # C first seen
    # all None -> 0
    assert majority_vote([None, None], [1, 1]) == 0.0
    assert majority_vote([], []) == 0.0
    # k = 1 case
    assert majority_vote(["A"], [1.0]) == 1.0
    with pytest.raises(ValueError):
        majority_vote(["A"], [1.0, 0.0])


def test_plain_majority_metric():
    m = MajorityAtK(["s"], k=4, mode="plain")
    preds = [
        ["A", "B", "B", "A", "B"],  # first 4: tie A/B -> A (score 0); the 5th sample is ignored
        ["X", "Y", "Y", None],  # Y wins, first Y has score 1
        [None, None, None, None],  # nothing extracted -> 0
        [None, None, "Z", "W"],  # tie Z/W -> Z, score 1
    ]
    scores = [[0, 1, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    vals = [m.per_question([s], [p]).item() for s, p in zip(scores, preds)]
    assert vals == [0.0, 1.0, 0.0, 1.0]
    m.update(["s"] * 3, [r[:4] for r in scores[1:]], preds[1:])
    assert m.compute()["s"].item() == pytest.approx(2 / 3)
    m1 = MajorityAtK(["s"], k=1, mode="plain")
    m1.update(["s", "s", "s"], [[1, 0], [0, 1], [1, 1]], [["A", "B"], ["A", "A"], [None, "A"]])
    assert m1.compute()["all"].item() == pytest.approx(1 / 3)


def test_majority_errors():
    with pytest.raises(ValueError, match="mode"):
        MajorityAtK(SRC, k=2, mode="vote")
    with pytest.raises(ValueError, match="k >= 1"):
        MajorityAtK(SRC, k=0)
    m = MajorityAtK(SRC, k=2)
    with pytest.raises(ValueError, match="needs preds"):
        m.update(["arithmetic/L3"], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="1 preds but 2 scores"):
        m.update(["arithmetic/L3"], [[1.0, 0.0]], [["A"]])
    with pytest.raises(ValueError, match="n=1 < k=2"):
        m.update(["arithmetic/L3"], [[1.0]], [["A"]])


# ----------------------------------------------------------------------------- bootstrap


def _verl_calc_maj_val(data):
    """Independent re-statement of verl's vote (None excluded, as the metric documents)."""
    vote2vals = {}
    for d in data:
        if d["pred"] is not None:
            vote2vals.setdefault(d["pred"], []).append(d["val"])
    if not vote2vals:
        return 0.0
    best = None
    for key, vals in vote2vals.items():  # dict order = first seen
        if best is None or len(vals) > len(vote2vals[best]):
            best = key
    return vote2vals[best][0]


def _verl_bootstrap_maj(preds, scores, k, n_bootstrap=1000, seed=42):
    """verl's bootstrap_metric: global np.random.seed, then np.random.choice per resample."""
    data = [{"pred": p, "val": float(s)} for p, s in zip(preds, scores)]
    np.random.seed(seed)
    out = []
    for _ in range(n_bootstrap):
        idxs = np.random.choice(np.arange(len(data)), size=k, replace=True)
        out.append(_verl_calc_maj_val([data[i] for i in idxs]))
    return float(np.mean(out))


def _random_questions(rng, Q, n, letters="ABCD", p_none=0.2):
    scores = rng.integers(0, 2, size=(Q, n)).astype(float)
    preds = [
        [None if rng.random() < p_none else str(rng.choice(list(letters))) for _ in range(n)]
        for _ in range(Q)
    ]
    return scores, preds


def test_bootstrap_matches_verl_reference():
    rng = np.random.default_rng(0)
    cases = [(16, 16), (16, 4), (8, 8), (5, 2), (3, 1)]
    for n, k in cases:
        scores, preds = _random_questions(rng, 3, n)
        m = MajorityAtK(["s"], k=k, n_bootstrap=300)
        got = m.per_question(scores.tolist(), preds)
        for q in range(3):
            ref = _verl_bootstrap_maj(preds[q], scores[q], k, n_bootstrap=300)
            assert got[q].item() == pytest.approx(ref, abs=1e-12), (n, k, q)
    # degenerate rows: all None, a single repeated prediction, float scores
    m = MajorityAtK(["s"], k=4, n_bootstrap=200)
    rows = [([None] * 4, [1, 1, 1, 1]), (["A"] * 4, [0.3, 1, 0, 1]), (["A", None, "B", None], [1, 0, 0, 1])]
    for preds, scores in rows:
        ref = _verl_bootstrap_maj(preds, scores, 4, n_bootstrap=200)
        assert m.per_question([scores], [preds]).item() == pytest.approx(ref, abs=1e-12)


def test_bootstrap_default_1000_and_metric_value():
    rng = np.random.default_rng(1)
    scores, preds = _random_questions(rng, 4, 16)
    m = MajorityAtK(["s"], k=16)  # n_bootstrap=1000, seed=42
    m.update(["s"] * 4, torch.tensor(scores), preds)
    ref = np.mean([_verl_bootstrap_maj(preds[q], scores[q], 16) for q in range(4)])
    out = m.compute()
    assert out["s"].item() == pytest.approx(ref, abs=1e-12)
    assert out["all"].item() == pytest.approx(ref, abs=1e-12)


def test_bootstrap_deterministic_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    scores, preds = _random_questions(rng, 5, 16)
    np.random.seed(123)
    before = np.random.get_state()
    a = MajorityAtK(["s"], k=16).per_question(scores.tolist(), preds)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    b = MajorityAtK(["s"], k=16).per_question(scores.tolist(), preds)
    assert torch.equal(a, b)
    # per-question reseeding: a question's value does not depend on its position in the batch
    c = MajorityAtK(["s"], k=16).per_question(scores[::-1].tolist(), preds[::-1])
    assert torch.equal(a, c.flip(0))
    # another seed gives (generally) other values
    d = MajorityAtK(["s"], k=16, seed=7).per_question(scores.tolist(), preds)
    assert not torch.equal(a, d)


# ----------------------------------------------------------------------------- mean@k, pass@k


def test_mean_at_k_hand():
    m = MeanAtK(["s"])
    m.update(["s", "s"], [[1, 0, 0, 1], [1, 1, 1, 0]])
    assert m.compute()["s"].item() == pytest.approx((0.5 + 0.75) / 2)
    m2 = MeanAtK(["s"], k=2)
    m2.update(["s", "s"], torch.tensor([[1, 0, 0, 1], [1, 1, 1, 0]]))
    assert m2.compute()["all"].item() == pytest.approx((0.5 + 1.0) / 2)
    with pytest.raises(ValueError, match="n=4 < k=5"):
        MeanAtK(["s"], k=5).update(["s"], [[1, 0, 0, 1]])
    with pytest.raises(ValueError, match=r"\[Q, n\]"):
        MeanAtK(["s"]).update(["s"], torch.ones(4))
    with pytest.raises(ValueError, match="1 data sources but 2 questions"):
        MeanAtK(["s"]).update(["s"], torch.ones(2, 4))


def test_mean_and_pass_at_k_random_against_numpy():
    rng = np.random.default_rng(3)
    Q, n = 50, 16
    scores = (rng.random((Q, n)) < rng.random((Q, 1))).astype(float)
    for k in (None, 1, 8, 16):
        m = MeanAtK(["s"], k=k)
        m.update(["s"] * Q, torch.tensor(scores))
        ref = scores[:, : (k or n)].mean(axis=1).mean()
        assert m.compute()["s"].item() == pytest.approx(ref, abs=1e-12)
    for k in (1, 2, 5, 16):
        m = PassAtK(["s"], k=k)
        m.update(["s"] * Q, torch.tensor(scores))
        c = (scores >= 0.5).sum(axis=1)
        ref = np.mean([1 - math.comb(n - int(ci), k) / math.comb(n, k) for ci in c])
        assert m.compute()["s"].item() == pytest.approx(ref, abs=1e-12)


def test_pass_at_k_threshold_and_float_scores():
    m = PassAtK(["s"], k=1)
    vals = m.per_question([[0.5, 0.49, 0.0, 0.0], [1.0, 1.0, 0.2, 0.7]])
    assert vals.tolist() == pytest.approx([0.25, 0.75])


# ----------------------------------------------------------------------------- data sources


def test_per_source_and_question_weighted_all():
    m = MeanAtK(SRC)
    m.update(["arithmetic/L3", "sciknoweval/chemistry", "arithmetic/L3"], [[1, 1], [0, 1], [0, 0]])
    m.update(["arithmetic/L3"], [[1, 0]])
    out = m.compute()
    assert set(out) == {"arithmetic/L3", "sciknoweval/chemistry", "all"}
    assert out["arithmetic/L3"].item() == pytest.approx((1 + 0 + 0.5) / 3)
    assert out["sciknoweval/chemistry"].item() == pytest.approx(0.5)
    # question-weighted: 4 questions, not the mean of the two source means
    assert out["all"].item() == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    # a source without questions is left out
    m2 = PassAtK(SRC, k=1)
    m2.update(["sciknoweval/chemistry"], [[1, 0]])
    assert set(m2.compute()) == {"sciknoweval/chemistry", "all"}


def test_unknown_source_and_bad_registry():
    m = MajorityAtK(SRC, k=1, mode="plain")
    with pytest.raises(ValueError, match="'toolalpaca'"):
        m.update(["arithmetic/L3", "toolalpaca"], [[1], [0]], [["A"], ["B"]])
    with pytest.raises(ValueError, match="duplicate"):
        MeanAtK(["a", "a"])
    with pytest.raises(ValueError, match="reserved"):
        MeanAtK(["all"])
    with pytest.raises(ValueError, match="list of strings"):
        MeanAtK("arithmetic/L3")


# ----------------------------------------------------------------------------- merging ranks


def _random_batch(seed, Q=12, n=8):
    rng = np.random.default_rng(seed)
    scores, preds = _random_questions(rng, Q, n)
    sources = [SRC[int(i)] for i in rng.integers(0, 2, size=Q)]
    return sources, torch.tensor(scores), preds


def _make_metrics():
    return [
        MeanAtK(SRC), MeanAtK(SRC, k=4), PassAtK(SRC, k=3),
        MajorityAtK(SRC, k=8, n_bootstrap=100), MajorityAtK(SRC, k=5, mode="plain"),
    ]


def test_merge_state_two_ranks_equals_single():
    sources, scores, preds = _random_batch(4)
    h = len(sources) // 2
    for single, r0, r1 in zip(_make_metrics(), _make_metrics(), _make_metrics()):
        single.update(sources, scores, preds)
        r0.update(sources[:h], scores[:h], preds[:h])
        r1.update(sources[h:], scores[h:], preds[h:])
        r0.merge_state(r1)
        want, got = single.compute(), r0.compute()
        assert set(want) == set(got)
        for key in want:
            assert got[key].item() == pytest.approx(want[key].item(), abs=1e-12), (type(single), key)
    with pytest.raises(ValueError, match="different data_sources"):
        MeanAtK(SRC).merge_state(MeanAtK(SRC[::-1]))


# The ranks run in fresh interpreters that load metrics.py by file path: importing the
# ``lit_scsdpo`` package (lightning, transformers) would cost each rank seconds.
_GLOO_RANK = r"""
import importlib.util, json, sys
import torch
import torch.distributed as dist

torch.set_num_threads(1)
path, rank, port, data_file, out_file = sys.argv[1:]
rank = int(rank)
spec = importlib.util.spec_from_file_location("scsdpo_metrics_standalone", path)
M = importlib.util.module_from_spec(spec)
spec.loader.exec_module(M)
with open(data_file) as f:
    d = json.load(f)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
h = len(d["sources"]) // 2
sl = slice(0, h) if rank == 0 else slice(h, None)
res = []
for name, kw in d["metrics"]:
    m = getattr(M, name)(d["src"], **kw)
    m.update(d["sources"][sl], torch.tensor(d["scores"][sl]), d["preds"][sl])
    res.append({k: v.item() for k, v in m.compute().items()})  # compute() all-reduces
dist.destroy_process_group()
with open(out_file, "w") as f:
    json.dump(res, f)
"""

_METRIC_SPECS = [
    ("MeanAtK", {}), ("MeanAtK", {"k": 4}), ("PassAtK", {"k": 3}),
    ("MajorityAtK", {"k": 8, "n_bootstrap": 100}), ("MajorityAtK", {"k": 5, "mode": "plain"}),
]


def test_real_gloo_ranks_sync_in_compute(tmp_path):
    import json
    import subprocess
    import sys

    import lit_scsdpo.metrics as M

    sources, scores, preds = _random_batch(4)
    data = {"src": SRC, "sources": sources, "scores": scores.tolist(), "preds": preds,
            "metrics": _METRIC_SPECS}
    (tmp_path / "data.json").write_text(json.dumps(data))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _GLOO_RANK, M.__file__, str(r), str(port),
             str(tmp_path / "data.json"), str(tmp_path / f"out{r}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(2)
    ]
    for pr in procs:
        log, _ = pr.communicate(timeout=120)
        assert pr.returncode == 0, log
    out = [json.loads((tmp_path / f"out{r}.json").read_text()) for r in range(2)]
    for i, (name, kw) in enumerate(_METRIC_SPECS):
        single = getattr(M, name)(SRC, **kw)
        single.update(sources, scores, preds)
        want = {k: v.item() for k, v in single.compute().items()}
        for rank in (0, 1):
            assert set(out[rank][i]) == set(want), (name, kw)
            for key in want:
                assert out[rank][i][key] == pytest.approx(want[key], abs=1e-12), (name, kw, key)

"""Validation metrics over n sampled answers per question: mean@k, pass@k and maj@k.

The definitions are verl's, which SDPO uses and SC-SDPO most likely inherits
(docs/specification.md §4.2, "Evaluation protocol"). For each validation question we draw ``n``
samples (n=16 in the papers); each sample has a score (0/1 correctness, or a float reward) and,
for the majority metrics, the extracted prediction string ``pred`` (the MCQ letter; for tool use
the actions+inputs string), ``None`` when nothing could be extracted.

Definitions (per question, then averaged over questions)
--------------------------------------------------------
* **mean@k** (:class:`MeanAtK`; verl ``mean@n``, SDPO's "avg@16"): the mean score of the
  question's first ``k`` samples (all ``n`` when ``k`` is None).
* **pass@k** (:class:`PassAtK`): the unbiased estimator ``1 - C(n-c, k) / C(n, k)`` of the
  probability that at least one of ``k`` samples is correct, where ``c`` counts the samples
  with score >= 0.5. Evaluated in the stable product form
  ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (see :func:`pass_at_k`).
* **maj@k** (:class:`MajorityAtK`), majority vote over ``pred`` strings (see
  :func:`majority_vote`): the most frequent prediction wins, ties go to the prediction seen
  first in sample order, ``None`` never wins (no prediction at all scores 0), and the
  question's value is the score of the first sample carrying the winning prediction.

  - ``mode="bootstrap"`` (default; verl ``maj@k/mean``, the number the papers report):
    ``n_bootstrap`` (1000) resamples of size ``k`` drawn *with replacement* from all ``n``
    samples, each voted as above; the value is the mean over resamples. The resampling
    replicates verl's ``bootstrap_metric`` bit for bit: verl calls ``np.random.seed(42)`` once
    per (question, metric) and then ``np.random.choice(len(data), size=k, replace=True)`` per
    resample. Here each question gets a fresh ``np.random.RandomState(seed)`` instead, which
    yields the same stream without touching numpy's global RNG.
    One deliberate difference: verl counts a missing ``pred`` like any other key; here ``None``
    is never a candidate (as in the deterministic mode).
  - ``mode="plain"``: one deterministic vote over the first ``k`` samples. It gives slightly
    different numbers from the bootstrap (specification §4.2 asks for both; the bootstrap is the one reported).

Data sources and distributed evaluation
---------------------------------------
Every metric reports each value per data source (``"arithmetic/L3"``,
``"sciknoweval/chemistry"``, ...) and overall: :meth:`compute` returns
``{source: value, ..., "all": value}``, where ``"all"`` is the question-weighted mean over all
questions (verl logs ``val-core/<data_source>/acc/mean@16`` per source).

Source names are strings, which cannot travel through a tensor all-reduce, so the metric takes
the **fixed list of known sources in its constructor**; a source's index is its position in that
list, identical on every rank. The states are two tensors indexed by source, ``value_sum``
(sum of per-question values, float64) and ``count`` (number of questions, int64), both reduced
with ``dist_reduce_fx="sum"``, so merging ranks (torchmetrics' automatic sync in
:meth:`compute`, or :meth:`~torchmetrics.Metric.merge_state`) is exact up to float summation
order. Per-question values never depend on which rank or batch a question lands in (the
bootstrap re-seeds per question). Updating with a source missing from the list raises a
``ValueError`` naming it. Sources that received no question are left out of the result.

Update API (all three metrics)::

    metric.update(data_sources, scores, preds=None)

``data_sources``: one string per question; ``scores``: ``[Q, n]`` tensor or nested list (the
scores of each question's ``n`` samples); ``preds``: ``Q`` lists of ``n`` strings or ``None``
(required by :class:`MajorityAtK`, ignored by the others).
"""

from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["pass_at_k", "majority_vote", "MeanAtK", "PassAtK", "MajorityAtK"]

Scores = Union[Tensor, Sequence[Sequence[float]]]
Preds = Optional[Sequence[Sequence[Optional[str]]]]

CORRECT_THRESHOLD = 0.5  # a sample with score >= 0.5 counts as correct for pass@k


# --------------------------------------------------------------------------- pure helpers


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question: ``1 - C(n-c, k) / C(n, k)``.

    ``n`` samples, ``c`` of them correct. Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``,
    which equals the binomial ratio without forming huge binomials. Raises ``ValueError`` unless
    ``1 <= k <= n`` and ``0 <= c <= n``.
    """
    n, c, k = int(n), int(c), int(k)
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass@k needs n >= k samples per question, got n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(preds: Sequence[Optional[str]], scores: Sequence[float]) -> float:
    """Score of the majority prediction among ``preds`` (verl's ``calc_maj_val``).

    The most frequent non-``None`` prediction wins; ties go to the prediction seen first (in
    the given order); the result is the score of the first sample carrying the winning
    prediction. ``None`` (no extracted answer) is never a candidate: if every prediction is
    ``None`` the result is 0.0.
    """
    if len(preds) != len(scores):
        raise ValueError(f"majority_vote: {len(preds)} preds but {len(scores)} scores")
    counts: dict[str, int] = {}  # insertion order = first-seen order
    first_score: dict[str, float] = {}
    for p, s in zip(preds, scores):
        if p is None:
            continue
        if p not in counts:
            counts[p] = 0
            first_score[p] = float(s)
        counts[p] += 1
    if not counts:
        return 0.0
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts
    return first_score[winner]


def _bootstrap_majority(
    preds: Sequence[Optional[str]], scores: np.ndarray, k: int, n_bootstrap: int, seed: int
) -> float:
    """verl's ``bootstrap_metric(calc_maj_val)`` for one question, vectorised over resamples.

    ``RandomState(seed).choice(n, size=(B, k))`` draws the same indices as ``np.random.seed(seed)``
    followed by ``B`` calls of ``np.random.choice(n, size=k)`` (legacy bounded ints consume the
    bit stream element by element), so the resamples are exactly verl's.
    """
    n = len(preds)
    idx = np.random.RandomState(seed).choice(n, size=(n_bootstrap, k), replace=True)  # [B, k]
    ids: dict[str, int] = {}
    pred_id = np.array([-1 if p is None else ids.setdefault(p, len(ids)) for p in preds])
    if not ids:
        return 0.0
    m = len(ids)
    P = pred_id[idx]  # [B, k] candidate id per resampled slot, -1 = no prediction
    onehot = P[:, :, None] == np.arange(m)[None, None, :]  # [B, k, m]
    count = onehot.sum(axis=1)  # [B, m]
    # first position of each candidate in the resample (k where absent)
    first = np.where(onehot.any(axis=1), onehot.argmax(axis=1), k)  # [B, m]
    # highest count wins; among equal counts the earliest first position (first seen)
    key = count * (k + 1) - first
    win = key.argmax(axis=1)  # [B]
    rows = np.arange(n_bootstrap)
    has_vote = count[rows, win] > 0
    win_pos = np.where(has_vote, first[rows, win], 0)
    vals = np.where(has_vote, scores[idx[rows, win_pos]], 0.0)
    return float(np.mean(vals))


# --------------------------------------------------------------------------- metrics


class _PerSourceMetric(Metric):
    """Per-question values summed per data source; see the module docstring."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    value_sum: Tensor
    count: Tensor

    def __init__(self, data_sources: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        if isinstance(data_sources, str) or not all(isinstance(s, str) for s in data_sources):
            raise ValueError("data_sources must be a list of strings (the known data sources)")
        sources = list(data_sources)
        if not sources:
            raise ValueError("data_sources must name at least one data source")
        dup = sorted({s for s in sources if sources.count(s) > 1})
        if dup:
            raise ValueError(f"duplicate data sources: {dup}")
        if "all" in sources:
            raise ValueError("'all' is reserved for the overall value and cannot be a data source")
        self.data_sources: list[str] = sources
        self._index = {s: i for i, s in enumerate(sources)}
        S = len(sources)
        self.add_state("value_sum", torch.zeros(S, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(S, dtype=torch.long), dist_reduce_fx="sum")

    # ---- subclasses implement this: per-question values, float64 [Q] on CPU or scores' device
    def per_question(self, scores: Scores, preds: Preds = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def _as_scores(scores: Scores) -> Tensor:
        if not isinstance(scores, Tensor):
            try:
                scores = torch.as_tensor(scores, dtype=torch.float64)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    "scores must be a [Q, n] tensor or a rectangular list of lists"
                ) from exc
        scores = scores.detach().to(torch.float64)
        if scores.dim() != 2:
            raise ValueError(f"scores must have shape [Q, n], got {tuple(scores.shape)}")
        return scores

    def _source_indices(self, data_sources: Sequence[str]) -> Tensor:
        if isinstance(data_sources, str):
            raise ValueError("data_sources must be a list with one source string per question")
        idx = []
        for s in data_sources:
            i = self._index.get(s)
            if i is None:
                raise ValueError(
                    f"unknown data source {s!r}; this metric knows {self.data_sources} "
                    "(pass every source to the constructor)"
                )
            idx.append(i)
        return torch.tensor(idx, dtype=torch.long, device=self.value_sum.device)

    def update(self, data_sources: Sequence[str], scores: Scores, preds: Preds = None) -> None:
        """Add one batch of questions: ``data_sources[q]`` is question q's source,
        ``scores[q]`` its ``n`` sample scores, ``preds[q]`` its ``n`` extracted predictions."""
        scores = self._as_scores(scores)
        if len(data_sources) != scores.shape[0]:
            raise ValueError(
                f"{len(data_sources)} data sources but {scores.shape[0]} questions in scores"
            )
        idx = self._source_indices(data_sources)
        if scores.shape[0] == 0:
            return
        values = self.per_question(scores, preds).to(self.value_sum.device, torch.float64)
        self.value_sum.index_add_(0, idx, values)
        self.count.index_add_(0, idx, torch.ones_like(idx))

    def compute(self) -> dict[str, Tensor]:
        """``{source: mean over its questions}`` for every source that received a question,
        plus ``"all"``: the mean over all questions (NaN if there were none)."""
        out = {
            s: self.value_sum[i] / self.count[i]
            for i, s in enumerate(self.data_sources)
            if self.count[i] > 0
        }
        out["all"] = self.value_sum.sum() / self.count.sum()
        return out

    def merge_state(self, incoming_state) -> None:  # noqa: D102 - adds a source-list check
        if isinstance(incoming_state, _PerSourceMetric):
            if incoming_state.data_sources != self.data_sources:
                raise ValueError(
                    "cannot merge metrics with different data_sources: "
                    f"{self.data_sources} vs {incoming_state.data_sources}"
                )
        super().merge_state(incoming_state)

    def extra_repr(self) -> str:
        return f"data_sources={self.data_sources}"


def _check_k(k: Optional[int], name: str, allow_none: bool = False) -> Optional[int]:
    if k is None and allow_none:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{name} needs an integer k >= 1, got {k!r}")
    return k


def _check_n(scores: Tensor, k: Optional[int], name: str) -> None:
    n = scores.shape[1]
    if n == 0:
        raise ValueError(f"{name}: every question needs at least one sample (n=0)")
    if k is not None and n < k:
        raise ValueError(f"{name} needs n >= k samples per question, got n={n} < k={k}")


class MeanAtK(_PerSourceMetric):
    """mean@k (verl ``mean@n``, SDPO's avg@n): per question the mean score of its first ``k``
    samples (all of them if ``k`` is None), averaged over questions, per data source."""

    def __init__(self, data_sources: Sequence[str], k: Optional[int] = None, **kwargs):
        super().__init__(data_sources, **kwargs)
        self.k = _check_k(k, "mean@k", allow_none=True)

    def per_question(self, scores: Scores, preds: Preds = None) -> Tensor:
        scores = self._as_scores(scores)
        _check_n(scores, self.k, "mean@k")
        return scores[:, : self.k].mean(dim=1) if self.k else scores.mean(dim=1)


class PassAtK(_PerSourceMetric):
    """Unbiased pass@k: per question ``1 - C(n-c, k)/C(n, k)`` with ``c`` the samples scoring
    >= 0.5, averaged over questions, per data source. Requires ``n >= k``."""

    def __init__(self, data_sources: Sequence[str], k: int, **kwargs):
        super().__init__(data_sources, **kwargs)
        self.k = _check_k(k, "pass@k")

    def per_question(self, scores: Scores, preds: Preds = None) -> Tensor:
        scores = self._as_scores(scores)
        _check_n(scores, self.k, "pass@k")
        n, k = scores.shape[1], self.k
        c = (scores >= CORRECT_THRESHOLD).sum(dim=1, keepdim=True)  # [Q, 1]
        i = torch.arange(1, n + 1, dtype=torch.float64, device=scores.device)  # [n]
        # product form of C(n-c, k)/C(n, k): prod over i in (n-c, n] of (1 - k/i)
        factors = torch.where(i > n - c, 1.0 - k / i, torch.ones_like(i))  # [Q, n]
        ratio = factors.prod(dim=1)
        ratio = torch.where(n - c.squeeze(1) < k, torch.zeros_like(ratio), ratio)
        return 1.0 - ratio


class MajorityAtK(_PerSourceMetric):
    """maj@k over extracted predictions, per data source.

    ``mode="bootstrap"`` (default) is verl's ``maj@k/mean``: the mean over ``n_bootstrap``
    resamples of size ``k`` drawn with replacement from all ``n`` samples, numpy seed ``seed``
    reset for every question. ``mode="plain"`` is one vote over the first ``k`` samples. The
    vote is :func:`majority_vote` (ties to first seen, ``None`` never wins). Requires ``n >= k``.
    """

    def __init__(
        self,
        data_sources: Sequence[str],
        k: int,
        mode: Literal["bootstrap", "plain"] = "bootstrap",
        n_bootstrap: int = 1000,
        seed: int = 42,
        **kwargs,
    ):
        super().__init__(data_sources, **kwargs)
        self.k = _check_k(k, "maj@k")
        if mode not in ("bootstrap", "plain"):
            raise ValueError(f"maj@k mode must be 'bootstrap' or 'plain', got {mode!r}")
        if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be an integer >= 1, got {n_bootstrap!r}")
        self.mode = mode
        self.n_bootstrap = n_bootstrap
        self.seed = int(seed)

    def per_question(self, scores: Scores, preds: Preds = None) -> Tensor:
        scores = self._as_scores(scores)
        _check_n(scores, self.k, "maj@k")
        Q, n = scores.shape
        if preds is None:
            raise ValueError("maj@k needs preds: one list of n predictions (str or None) per question")
        if len(preds) != Q:
            raise ValueError(f"maj@k: {len(preds)} rows of preds but {Q} questions in scores")
        s_np = scores.cpu().numpy()
        out = []
        for q in range(Q):
            row = list(preds[q])
            if len(row) != n:
                raise ValueError(f"maj@k: question {q} has {len(row)} preds but {n} scores")
            if self.mode == "plain":
                out.append(majority_vote(row[: self.k], s_np[q, : self.k].tolist()))
            else:
                out.append(_bootstrap_majority(row, s_np[q], self.k, self.n_bootstrap, self.seed))
        return torch.tensor(out, dtype=torch.float64)

"""The loss core: pure tensor functions for GRPO, SDPO and SC-SDPO.

Every formula of the package lives here once. This module imports only torch, so it can be
tested, read and copied on its own. References are to ``docs/specification.md`` (section numbers)
and to the papers: SDPO (arXiv 2601.20802) and SC-SDPO (arXiv 2605.27765).

Conventions
-----------
* ``B`` questions, ``G`` rollouts per question, ``N = B*G`` sequences, ``T`` response
  positions, ``V`` vocabulary size.
* All divergence maths runs in fp32 whatever the input dtype (docs/pitfalls.md#1).
* "Per-token" functions return an ``[..., T]`` tensor; the aggregation functions turn it into
  a scalar that is this shard's *contribution* to the global loss: contributions of all
  micro-batches and ranks **sum** to the global loss, given global normalisers
  (see :func:`aggregate_loss`).
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "Reduce",
    "local_reduce",
    "pass_rates",
    "raw_difficulty_weights",
    "normalize_weights",
    "difficulty_weights",
    "topk_support",
    "generalized_jsd",
    "distillation_loss",
    "chunked_distillation_loss",
    "token_level_distillation_loss",
    "SDPO_ESTIMATORS",
    "self_distillation_loss",
    "distillation_diagnostics",
    "sampled_logprobs",
    "token_stats",
    "chunked_token_stats",
    "importance_ratio",
    "truncated_is_weights",
    "group_advantages",
    "ppo_clipped_surrogate",
    "kl_to_reference",
    "grpo_token_loss",
    "mix_losses",
    "global_normalizer",
    "aggregate_loss",
]

# ---------------------------------------------------------------------------------------
# Sampled-token statistics: the log-prob of each sampled token and the entropy of its
# distribution, for the student, the teacher and the GRPO reference alike
# ---------------------------------------------------------------------------------------


def _gather(logp_all: Tensor, targets: Tensor) -> Tensor:
    return logp_all.gather(-1, targets[..., None]).squeeze(-1)


def _entropy(logp_all: Tensor) -> Tensor:
    return -(logp_all.exp() * logp_all).sum(-1)


def sampled_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[targets]``: ``[..., V]`` logits (already divided by the sampling
    temperature) and ``[...]`` token ids to ``[...]`` float32 log-probs."""
    return _gather(torch.log_softmax(logits.float(), dim=-1), targets)


def token_stats(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Sampled-token log-probs (with grad) and entropies (detached) from ``[..., V]`` logits
    (already divided by the temperature), in float32, with one log-softmax."""
    logp_all = torch.log_softmax(logits.float(), dim=-1)
    with torch.no_grad():
        entropy = _entropy(logp_all)
    return _gather(logp_all, targets), entropy


def chunked_token_stats(hidden: Tensor, head: Callable[[Tensor], Tensor], targets: Tensor, temperature: float,
                        chunk_size: int) -> tuple[Tensor, Tensor]:
    """:func:`token_stats` from ``[n, T, H]`` final hidden states and the LM ``head``, over
    chunks of ``chunk_size`` positions recomputed in the backward pass, so the ``[T, V]``
    logits never exist at once (docs/performance.md)."""
    n, T, H = hidden.shape
    h, y = hidden.reshape(-1, H), targets.reshape(-1)

    def stats(h_c: Tensor, y_c: Tensor) -> tuple[Tensor, Tensor]:
        return token_stats(head(h_c).float() / temperature, y_c)

    logps, ents = [], []
    for start in range(0, h.shape[0], chunk_size):
        h_c, y_c = h[start : start + chunk_size], y[start : start + chunk_size]
        lp, ent = checkpoint(stats, h_c, y_c, use_reentrant=False) if torch.is_grad_enabled() else stats(h_c, y_c)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps).view(n, T), torch.cat(ents).view(n, T)


# ---------------------------------------------------------------------------------------
# Global reductions (injectable so that DDP/FSDP and single-process tests share one code path)
# ---------------------------------------------------------------------------------------

ReduceOp = Literal["sum", "max"]
#: A global reduction: ``reduce(tensor, op)`` returns the element-wise ``op`` of ``tensor``
#: over all data-parallel ranks (the identity on one process). It must not modify its input.
Reduce = Callable[[Tensor, ReduceOp], Tensor]


def local_reduce(tensor: Tensor, op: ReduceOp) -> Tensor:
    """The single-process reduction: the identity."""
    if op not in ("sum", "max"):
        raise ValueError(f"reduce op must be 'sum' or 'max', got {op!r}")
    return tensor


def _as_reduce(reduce: Optional[Reduce]) -> Reduce:
    """A :data:`Reduce` callable, or None for one process. Data-parallel code passes
    ``lit_scsdpo.distributed.distributed_reduce()``: this module never calls ``torch.distributed``."""
    return local_reduce if reduce is None else reduce


# ---------------------------------------------------------------------------------------
# SC-SDPO pass-rate weights (docs/specification.md §3.3 steps 2-4, §3.4, §7 items 1-4)
# ---------------------------------------------------------------------------------------

WeightNormalization = Literal["batch_mean", "none", "sum", "max"]
WeightScope = Literal["all", "active"]


def pass_rates(rewards: Tensor, threshold: float = 0.5) -> Tensor:
    """Per-question pass rate ``p̂_q = (1/G) Σ_i 1[r_{q,i} ≥ τ]`` (docs/specification.md §3.3 step 2).

    Args:
        rewards: ``[B, G]`` rewards of the G rollouts of each question (the same rollouts
            that are trained on: the "zero-cost by-product", docs/specification.md A3).
        threshold: success threshold τ; SDPO's ``success_reward_threshold`` = 0.5 (docs/specification.md A4).

    Returns:
        ``[B]`` float32 pass rates in ``{0, 1/G, ..., 1}``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    return (rewards.detach().float() >= threshold).float().mean(dim=1)


def raw_difficulty_weights(
    p_hat: Tensor, exponent: float = 0.5, binary: bool = False, floor: float = 0.0
) -> Tensor:
    """Raw per-question weight ``ŵ_q = (p̂_q (1 − p̂_q))^exponent`` (SC-SDPO, docs/specification.md §3.3 step 3).

    Args:
        p_hat: ``[B]`` pass rates in [0, 1].
        exponent: 0.5 = SC-SDPO's ``sqrt(p(1-p))`` (default, the paper); 1.0 = reward variance
            ``p(1-p)`` (Dr.GRPO-style scale); 0.0 = uniform, i.e. plain SDPO (every question 1).
        binary: if True, ignore ``exponent`` and use ``1[0 < p̂ < 1]`` (DAPO-style filter).
        floor: lower bound on every raw weight (default 0, no floor: docs/specification.md A5).

    Returns:
        ``[B]`` detached float32 weights. ``sqrt`` weights are in [0, 0.5].
    """
    p = p_hat.detach().float()
    if torch.any((p < 0) | (p > 1)) or torch.any(torch.isnan(p)):
        raise ValueError("p_hat must lie in [0, 1]")
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    if binary:
        w = ((p > 0) & (p < 1)).float()
    elif exponent == 0:
        w = torch.ones_like(p)
    else:
        # clamp: p*(1-p) can round to a tiny negative for p≈1 in float arithmetic
        w = (p * (1 - p)).clamp_min(0).pow(exponent)
    if floor > 0:
        w = w.clamp_min(floor)
    return w


def normalize_weights(
    raw: Tensor,
    mode: WeightNormalization = "batch_mean",
    scope: WeightScope = "all",
    active: Optional[Tensor] = None,
    reduce: Optional[Reduce] = None,
    eps: float = 1e-8,
) -> Tensor:
    """Batch-adaptive normalisation of question weights (docs/specification.md §3.3 step 4, ⚠ A1, A14).

    Args:
        raw: ``[B_local]`` raw weights of this rank's questions.
        mode: ``batch_mean`` (default, our reading of the paper): ``ŵ / (mean ŵ + eps)``
            so the weights average 1 and the effective learning rate matches SDPO;
            ``none``: raw weights; ``sum``: ``ŵ / (Σ ŵ + eps)`` (weights sum to 1);
            ``max``: ``ŵ / (max ŵ + eps)`` (largest weight 1).
            If every weight in the reduction set is 0, all weights are 0 (nothing to learn).
        scope: the questions the mean/sum/max runs over: ``all`` questions of the global
            batch (default) or only ``active`` ones (with ≥ 1 unmasked rollout). With
            ``active``, inactive questions get weight 0.
        active: ``[B_local]`` bool, required for ``scope='active'``.
        reduce: the global reduction over data-parallel ranks (a :data:`Reduce` callable,
            e.g. ``lit_scsdpo.distributed.distributed_reduce()``), or None (one process).
        eps: 1e-8 (docs/specification.md §3.3).

    Returns:
        ``[B_local]`` detached float32 weights; with ``batch_mean`` over ``all`` they lie in
        ``[0, B_global]`` and average 1 over the global batch unless all are 0.
    """
    if mode not in ("batch_mean", "none", "sum", "max"):
        raise ValueError(f"normalization mode must be batch_mean|none|sum|max, got {mode!r}")
    if scope not in ("all", "active"):
        raise ValueError(f"normalization scope must be all|active, got {scope!r}")
    w = raw.detach().float()
    if scope == "active":
        if active is None:
            raise ValueError("scope='active' needs the `active` mask of questions")
        if active.shape != w.shape:
            raise ValueError(f"`active` has shape {tuple(active.shape)}, weights {tuple(w.shape)}")
        w = torch.where(active.bool(), w, torch.zeros_like(w))
        count = active.float().sum()
    else:
        count = torch.tensor(float(w.numel()), device=w.device)
    if mode == "none":
        return w
    red = _as_reduce(reduce)
    if mode == "max":
        denom = red(w.max() if w.numel() else w.new_zeros(()), "max")
    else:
        stats = red(torch.stack([w.sum(), count.to(w)]), "sum")
        denom = stats[0] / stats[1].clamp_min(1) if mode == "batch_mean" else stats[0]
    if denom <= 0:
        return torch.zeros_like(w)
    return w / (denom + eps)


def difficulty_weights(
    rewards: Tensor,
    threshold: float = 0.5,
    exponent: float = 0.5,
    binary: bool = False,
    floor: float = 0.0,
    mode: WeightNormalization = "batch_mean",
    scope: WeightScope = "all",
    active: Optional[Tensor] = None,
    reduce: Optional[Reduce] = None,
    eps: float = 1e-8,
) -> Tensor:
    """SC-SDPO question weights from ``[B, G]`` rewards: :func:`pass_rates`, then
    :func:`raw_difficulty_weights`, then :func:`normalize_weights` (see those for the args)."""
    raw = raw_difficulty_weights(pass_rates(rewards, threshold), exponent, binary, floor)
    return normalize_weights(raw, mode, scope, active, reduce, eps)


# ---------------------------------------------------------------------------------------
# Distillation divergences (docs/specification.md §1.3, §7 items 6-7; docs/pitfalls.md#1 to #3)
# ---------------------------------------------------------------------------------------


def _tail_logprob(topk_logp: Tensor) -> Tensor:
    """``log(1 − Σ_topK p)`` computed stably: ``log(−expm1(min(logsumexp, −1e-7)))``."""
    lse = torch.logsumexp(topk_logp, dim=-1, keepdim=True).clamp(max=-1e-7)
    return torch.log(-torch.expm1(lse))


def topk_support(
    student_logits: Tensor,
    teacher_logits: Tensor,
    topk: Optional[int] = 100,
    add_tail: bool = True,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Student and teacher log-probabilities on the distillation support (paper App. A.2).

    Both sides are temperature-scaled and log-softmaxed over the **full vocabulary** in fp32.
    Then, with ``topk=K``, the support is the **student's** top-K ids (the teacher is gathered
    at the same ids); with ``add_tail`` one tail bucket ``log(1 − Σ_K p)`` is appended to each
    side so both are proper distributions over K+1 buckets. Without the tail each side is
    renormalised over its K entries (a different objective). ``topk=None`` keeps the full
    vocabulary.

    Args:
        student_logits: ``[..., V]`` (carries the gradient).
        teacher_logits: ``[..., V]`` (detached here: stop-gradient).
        topk: K; 100 for science/tool use (docs/specification.md §1.8), 20 for LCB; None = full vocab.
            K larger than V is clamped to V.
        add_tail: append the tail bucket (default True, SDPO's ``distillation_add_tail``).
        temperature: applied to both sides (the rollout temperature, 1.0 in the paper).

    Returns:
        ``(student_logp, teacher_logp)``, both ``[..., K(+1)]`` (or ``[..., V]``) float32.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    if topk is None:
        return s, t
    if topk < 1:
        raise ValueError(f"topk must be >= 1 or None, got {topk}")
    # K > V (a tiny vocabulary with the default K=100): the top-K is the whole vocabulary
    s_k, idx = s.topk(min(topk, s.shape[-1]), dim=-1)
    t_k = t.gather(-1, idx)
    if add_tail:
        s_k = torch.cat([s_k, _tail_logprob(s_k)], dim=-1)
        t_k = torch.cat([t_k, _tail_logprob(t_k)], dim=-1)
    else:
        s_k = s_k - torch.logsumexp(s_k, dim=-1, keepdim=True)
        t_k = t_k - torch.logsumexp(t_k, dim=-1, keepdim=True)
    return s_k, t_k


def _kl(logp: Tensor, logq: Tensor) -> Tensor:
    """``KL(p ‖ q) = Σ p (log p − log q)`` over the last dim, with ``0 · log 0 = 0``."""
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(dim=-1)


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, alpha: float = 0.5) -> Tensor:
    """Generalised Jensen–Shannon divergence, summed over the support (docs/specification.md §1.3).

    * ``alpha = 0``: ``KL(teacher ‖ student)`` ("forward KL");
    * ``alpha = 1``: ``KL(student ‖ teacher)`` ("reverse KL", the paper's Eq. 1 direction);
    * ``0 < alpha < 1``: with ``M = (1−α) p_s + α p_t`` (mixed in log space),
      ``(1−α) KL(p_s ‖ M) + α KL(p_t ‖ M)``. ``alpha = 0.5`` (symmetric JSD) is the default for
      science and tool use.

    Args:
        student_logp: ``[..., S]`` the student's log-probabilities over the support.
        teacher_logp: ``[..., S]`` the teacher's, over the same support.
        alpha: mixing weight in [0, 1].

    Returns:
        ``[...]`` per-position divergence (fp32).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s, t = student_logp.float(), teacher_logp.float()
    if alpha == 0.0:  # log(α) = -inf: branch to pure KL (docs/pitfalls.md#1)
        return _kl(t, s)
    if alpha == 1.0:
        return _kl(s, t)
    log_m = torch.logsumexp(
        torch.stack([s + math.log(1 - alpha), t + math.log(alpha)]), dim=0
    )
    return (1 - alpha) * _kl(s, log_m) + alpha * _kl(t, log_m)


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    alpha: float = 0.5,
    topk: Optional[int] = 100,
    add_tail: bool = True,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token SDPO distillation loss ``D(π_θ(·|x, y<t), stopgrad q(·|x, f, y<t))`` (Eq. 1).

    The divergence (:func:`generalized_jsd`) is taken on the support of :func:`topk_support`.
    Defaults follow the science/tool-use setting: JSD α=0.5, student top-100 + tail, T=1.

    Args:
        student_logits: ``[..., V]`` the student's logits at the response positions, any float dtype.
        teacher_logits: ``[..., V]`` the teacher's, aligned to the student's positions.
        alpha: generalised-JSD mixing (:func:`generalized_jsd`).
        topk: the student's top-K support (:func:`topk_support`); None: the full vocabulary.
        add_tail: add the tail bucket to the support.
        temperature: divides both logits.

    Returns:
        ``[...]`` float32 per-token loss; the teacher receives no gradient.
    """
    s, t = topk_support(student_logits, teacher_logits, topk, add_tail, temperature)
    return generalized_jsd(s, t, alpha)


def chunked_distillation_loss(
    student_hidden: Tensor,
    student_head: Callable[[Tensor], Tensor],
    teacher_hidden: Tensor,
    teacher_head: Callable[[Tensor], Tensor],
    chunk_size: int = 1024,
    alpha: float = 0.5,
    topk: Optional[int] = 100,
    add_tail: bool = True,
    temperature: float = 1.0,
) -> Tensor:
    """:func:`distillation_loss` from the two models' final hidden states, in chunks of positions.

    The logits ``[T, V]`` of both models are never materialised at once: each chunk of
    ``chunk_size`` positions is projected by its head, reduced to its per-token loss, and
    recomputed in the backward pass (activation checkpointing). Peak extra memory is thus
    ``O(chunk_size × V)`` instead of ``O(T × V)`` (docs/pitfalls.md#18, #19).

    Args:
        student_hidden: ``[..., H]`` student hidden states at the response positions (grad).
        student_head: maps hidden states to logits (e.g. ``model.lm_head``).
        teacher_hidden: ``[..., H]`` teacher hidden states at the same positions (no grad).
        teacher_head: the teacher's head.
        chunk_size: positions per chunk (over the flattened leading dims).
        alpha: as in :func:`distillation_loss`.
        topk: as in :func:`distillation_loss`.
        add_tail: as in :func:`distillation_loss`.
        temperature: as in :func:`distillation_loss`.

    Returns:
        ``[...]`` float32 per-token loss, identical to the unchunked computation.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = student_hidden.shape[:-1]
    if teacher_hidden.shape[:-1] != lead:
        raise ValueError(
            f"student hidden {tuple(student_hidden.shape)} and teacher hidden "
            f"{tuple(teacher_hidden.shape)} must share leading dims"
        )
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])

    def chunk_loss(h_s: Tensor, h_t: Tensor) -> Tensor:
        with torch.no_grad():
            t_logits = teacher_head(h_t)
        return distillation_loss(student_head(h_s), t_logits, alpha, topk, add_tail, temperature)

    out = []
    for start in range(0, hs.shape[0], chunk_size):
        h_s, h_t = hs[start : start + chunk_size], ht[start : start + chunk_size]
        if torch.is_grad_enabled() and h_s.requires_grad:
            out.append(checkpoint(chunk_loss, h_s, h_t, use_reentrant=False))
        else:
            out.append(chunk_loss(h_s, h_t))
    if not out:
        return hs.new_zeros(lead, dtype=torch.float32)
    return torch.cat(out).reshape(lead)


def token_level_distillation_loss(student_logp: Tensor, teacher_logp: Tensor) -> Tensor:
    """Token-level (sampled-token, non-logit) SDPO estimator (docs/specification.md §1.3, reverse KL only).

    ``ℓ_t = stopgrad(log π_θ(y_t) − log q(y_t)) · log π_θ(y_t)``: a REINFORCE estimator whose
    gradient in expectation over ``y_t ~ π_θ`` is that of ``KL(π_θ ‖ q)``. Its *value* is not
    a divergence; only its gradient is meaningful.

    Args:
        student_logp: ``[..., T]`` log-prob of the sampled tokens under the student (grad).
        teacher_logp: ``[..., T]`` log-prob of the same tokens under the teacher.
    """
    s = student_logp.float()
    advantage = (s - teacher_logp.float()).detach()
    return advantage * s


def importance_ratio(
    logp: Tensor, old_logp: Tensor, clip: float = 2.0, log_ratio_clamp: float = 20.0
) -> Tensor:
    """SDPO's detached per-token IS weight ``min(exp(clamp(log π − log π_old, ±20)), clip)``.

    docs/specification.md §1.4 and §7 item 9: ``is_clip = 2``; exactly 1 on-policy (``old = current``).
    The same form serves the rollout-correction (TIS) weight with ``old_logp`` = the sampler's.
    """
    log_ratio = (logp.detach().float() - old_logp.detach().float()).clamp(
        -log_ratio_clamp, log_ratio_clamp
    )
    return log_ratio.exp().clamp(max=clip)


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float = 2.0) -> tuple[Tensor, Tensor]:
    """Rollout correction (TIS) for the sampler/trainer mismatch (docs/specification.md §1.4(2)): the
    detached per-token weight ``min(π_old(y_t) / π_sampler(y_t), cap)`` and the untruncated
    ratio (for diagnostics). Applied as ``aggregate_loss(..., token_weights=)``."""
    raw = importance_ratio(old_logp, sampler_logp, clip=float("inf"))
    return raw.clamp(max=cap), raw


def masked_mean(x: Tensor, mask: Tensor) -> float:
    """``Σ m x / max(1, Σ m)`` as a float (for logged diagnostics)."""
    return ((x * mask).sum() / mask.sum().clamp_min(1)).item()


# ---------------------------------------------------------------------------------------
# The SDPO per-token term, one function for its three estimators
# ---------------------------------------------------------------------------------------

SDPOEstimator = Literal["full", "chunked", "token"]
SDPO_ESTIMATORS = ("full", "chunked", "token")


def self_distillation_loss(
    estimator: SDPOEstimator,
    student: Tensor,
    teacher: Tensor,
    *,
    targets: Optional[Tensor] = None,
    alpha: float = 0.5,
    topk: Optional[int] = 100,
    add_tail: bool = True,
    student_head: Optional[Callable[[Tensor], Tensor]] = None,
    teacher_head: Optional[Callable[[Tensor], Tensor]] = None,
    chunk_size: Optional[int] = None,
    temperature: float = 1.0,
) -> Tensor:
    """The per-token SDPO distillation term of the rows that have a teacher, ``[n, T]`` float32.

    ``estimator`` chooses what ``student`` and ``teacher`` are:

    * ``full`` (the paper's setting): ``[n, T, V]`` logits of both, already divided by the
      temperature: :func:`distillation_loss` (generalised JSD on the student's top-K + tail);
    * ``chunked``: the same loss from ``[n, T, H]`` final hidden states and the two LM heads,
      over chunks of ``chunk_size`` positions (:func:`chunked_distillation_loss`); the
      temperature is applied here;
    * ``token``: ``student`` is the ``[n, T]`` log-prob of the sampled tokens (grad), ``teacher``
      the teacher's ``[n, T, V]`` logits (divided by the temperature), ``targets`` the sampled
      tokens: :func:`token_level_distillation_loss` (reverse KL only).
    """
    if estimator == "full":
        return distillation_loss(student, teacher, alpha, topk, add_tail, 1.0)
    if estimator == "chunked":
        if student_head is None or teacher_head is None or chunk_size is None:
            raise ValueError("the chunked estimator needs student_head, teacher_head and chunk_size")
        return chunked_distillation_loss(student, student_head, teacher, teacher_head, chunk_size, alpha, topk,
                                         add_tail, temperature)
    if estimator == "token":
        if targets is None:
            raise ValueError("the token-level estimator needs the sampled tokens (targets)")
        return token_level_distillation_loss(student, sampled_logprobs(teacher, targets))
    raise ValueError(f"SDPO estimator must be one of {SDPO_ESTIMATORS}, got {estimator!r}")


def distillation_diagnostics(teacher_logits: Tensor, targets: Tensor, mask: Tensor,
                             student_logp: Tensor) -> dict[str, float]:
    """The teacher's entropy and sampled-token log-prob, and the student's, over ``mask``: a
    teacher that stops copying the demonstration shows here first."""
    with torch.no_grad():
        t_logp, t_entropy = token_stats(teacher_logits, targets)
        return {"teacher_entropy": masked_mean(t_entropy, mask),
                "teacher_logp_sampled": masked_mean(t_logp, mask),
                "student_logp_sampled": masked_mean(student_logp.detach(), mask)}


# ---------------------------------------------------------------------------------------
# GRPO (docs/specification.md §1.8 "GRPO baseline", A12)
# ---------------------------------------------------------------------------------------


def group_advantages(rewards: Tensor, norm_by_std: bool = False, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantages ``A_{q,i} = r_{q,i} − mean_j r_{q,j}`` (optionally ``/ (std + eps)``).

    Args:
        rewards: ``[B, G]``.
        norm_by_std: divide by the group's (unbiased, as verl) standard deviation. Off by
            default: SDPO's GRPO baseline (Dr.GRPO style, ``norm_adv_by_std_in_grpo=False``).
            SC-SDPO's theory refers to the normalised form; both are supported (docs/specification.md A12).
        eps: 1e-6 (verl).

    Returns:
        ``[B, G]`` detached float32 advantages (0 for groups of identical rewards).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    r = rewards.detach().float()
    adv = r - r.mean(dim=1, keepdim=True)
    if norm_by_std:
        std = r.std(dim=1, keepdim=True) if r.shape[1] > 1 else torch.zeros_like(adv)
        adv = adv / (std + eps)
    return adv


def ppo_clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
) -> Tensor:
    """Per-token PPO clipped surrogate loss ``max(−A ρ, −A clip(ρ, 1−ε_low, 1+ε_high))``.

    ``ρ = exp(log π − log π_old)`` (log-ratio clamped to ±20). ε_low 0.2, ε_high 0.28 (the
    "clip-higher" of SDPO's GRPO baseline). On-policy (ρ ≡ 1) the gradient is ``−A ∇log π``.

    Args:
        logp: ``[N, T]`` current log-probs of the sampled tokens (grad).
        old_logp: ``[N, T]`` log-probs under the policy that sampled (no grad).
        advantages: ``[N, T]`` or ``[N, 1]`` (broadcast) advantages.
    """
    log_ratio = (logp.float() - old_logp.detach().float()).clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    adv = advantages.detach().float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - eps_low, 1 + eps_high)
    return torch.maximum(unclipped, clipped)


def kl_to_reference(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token ``k3`` estimator of ``KL(π ‖ π_ref)``: ``exp(Δ) − Δ − 1``, ``Δ = log π_ref − log π``.

    Non-negative, unbiased, low variance (Schulman's k3; verl's ``low_var_kl``, with Δ clamped
    to ±10 as verl does). Off by default in the paper (``use_kl_loss=False``).
    """
    delta = (ref_logp.detach().float() - logp.float()).clamp(-10.0, 10.0)
    return delta.exp() - delta - 1


def grpo_token_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    ref_logp: Optional[Tensor] = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Per-token GRPO loss: :func:`ppo_clipped_surrogate` ``+ kl_coef ·`` :func:`kl_to_reference`.

    The KL term is added only when ``kl_coef > 0`` (then ``ref_logp`` is required).
    """
    loss = ppo_clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (the reference policy's log-probs)")
        loss = loss + kl_coef * kl_to_reference(logp, ref_logp)
    return loss


def mix_losses(grpo_loss: Tensor, sdpo_loss: Tensor, lam: float = 0.0) -> Tensor:
    """λ-mix ``λ · L_GRPO + (1 − λ) · L_SDPO`` (paper §4.5, Eq. 3; default λ = 0 = pure SDPO).

    Mixing aggregated losses is TRL's loss-level form; it equals Eq. 3's advantage mix in
    gradient when both losses use the same aggregation and normaliser.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    return lam * grpo_loss + (1 - lam) * sdpo_loss


# ---------------------------------------------------------------------------------------
# Aggregation (docs/specification.md §1.6, A13; docs/pitfalls.md#7 to #9)
# ---------------------------------------------------------------------------------------

AggregationMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]
AGGREGATION_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")


def global_normalizer(
    mask: Tensor,
    mode: AggregationMode = "seq-mean-token-mean",
    reduce: Optional[Reduce] = None,
) -> Tensor:
    """The global denominator of :func:`aggregate_loss` for the *whole* batch.

    Call it once per optimizer step on all of this rank's sequences (every micro-batch);
    ``reduce`` sums over ranks. ``token-mean``: the number of unmasked tokens (at least 1);
    ``seq-mean-*``: the number of sequences ``N`` (masked sequences counted, docs/specification.md §1.6).

    Args:
        mask: ``[N, T]`` loss mask, or ``[N]`` per-sequence counts of unmasked tokens.
    """
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"aggregation mode must be one of {AGGREGATION_MODES}, got {mode!r}")
    if mode == "token-mean":
        local = mask.detach().float().sum()
    else:
        local = torch.tensor(float(mask.shape[0]), device=mask.device)
    return _as_reduce(reduce)(local, "sum").clamp_min(1.0)


def aggregate_loss(
    per_token: Tensor,
    mask: Tensor,
    mode: AggregationMode = "seq-mean-token-mean",
    normalizer: Optional[Union[Tensor, float]] = None,
    weights: Optional[Tensor] = None,
    token_weights: Optional[Tensor] = None,
) -> Tensor:
    """Reduce a per-token loss ``[N, T]`` to this shard's contribution to the global loss.

    * ``token-mean``: ``Σ_{i,t} m ℓ / normalizer`` (normalizer = global unmasked tokens);
    * ``seq-mean-token-mean`` (default, the official runs): ``Σ_i (Σ_t m ℓ / max(1, Σ_t m)) /
      normalizer`` (normalizer = global number of sequences, masked ones counted);
    * ``seq-mean-token-sum``: ``Σ_i Σ_t m ℓ / normalizer``.

    With ``normalizer`` from :func:`global_normalizer`, the contributions of all micro-batches
    and ranks *sum* to the global loss, so loss and gradients do not depend on micro-batch
    size or world size. (Under DDP, whose gradient all-reduce averages, multiply the
    contribution by the world size.) ``normalizer=None`` uses this shard alone.

    Args:
        per_token: ``[N, T]`` per-token loss.
        mask: ``[N, T]`` 0/1 loss mask (response mask × self-distillation mask). Masked
            entries are *selected out* (not multiplied), so a NaN there cannot leak.
        weights: optional ``[N]`` per-sequence factors (SC-SDPO's ``w_q`` repeated over the
            G rollouts), applied before the reduction.
        token_weights: optional ``[N, T]`` detached per-token factors (the rollout correction,
            :func:`truncated_is_weights`), applied first.

    Returns:
        A scalar, exactly 0 and still attached to the graph when everything is masked.
    """
    if per_token.shape != mask.shape:
        raise ValueError(f"per_token {tuple(per_token.shape)} and mask {tuple(mask.shape)} differ")
    if mode not in AGGREGATION_MODES:
        raise ValueError(f"aggregation mode must be one of {AGGREGATION_MODES}, got {mode!r}")
    if token_weights is not None:
        per_token = per_token * token_weights
    m = mask.bool()
    loss = torch.where(m, per_token.float(), per_token.new_zeros((), dtype=torch.float32))
    if weights is not None:
        if weights.shape != per_token.shape[:1]:
            raise ValueError(f"weights must be [N={per_token.shape[0]}], got {tuple(weights.shape)}")
        loss = loss * weights.detach().float()[:, None]
    if normalizer is None:
        normalizer = global_normalizer(mask, mode)
    if mode == "seq-mean-token-mean":
        seq = loss.sum(dim=1) / m.float().sum(dim=1).clamp_min(1.0)
        return seq.sum() / normalizer
    return loss.sum() / normalizer

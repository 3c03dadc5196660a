"""The modules' grouped options: small dataclasses, each field documented and checked where it
is defined (``__post_init__``), so a bad value fails when the configuration is parsed, before
any weights load, with a one-line error that names the key.

In a config file each group is one block under ``model.init_args``::

    model:
      class_path: lit_scsdpo.SDPO
      init_args:
        optim: {lr: 1.0e-5, warmup_steps: 10}
        distillation: {alpha: 0.5, topk: 100}
        teacher: {mode: ema, rate: 0.05}
        reprompt: {include_feedback: false}

The defaults are the SDPO / SC-SDPO papers' science and tool-use setting
(docs/specification.md §1.8). Every class here is registered with
``torch.serialization.add_safe_globals``: checkpoints store them among the module's
hyper-parameters and stay readable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

TeacherMode = Literal["ema", "frozen", "live", "trust_region"]
TEACHER_MODES = ("ema", "frozen", "live", "trust_region")
ROLLOUT_CORRECTION_MODES = ("auto", "token", "off")


@dataclass
class RepromptTemplates:
    """The teacher prompt templates (SDPO's effective YAML strings, docs/specification.md §1.2(4)).

    Attributes:
        reprompt: the user message; ``{prompt}`` is the original last user message,
            ``{solution}`` and ``{feedback}`` the rendered sections ("" when absent).
        solution: the demonstration section; ``{successful_previous_attempt}``.
        feedback: the feedback section; ``{feedback_raw}``.
    """

    reprompt: str = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question."
    solution: str = "\nCorrect solution:\n\n{successful_previous_attempt}"
    feedback: str = "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}"



def _check(ok: bool, key: str, requirement: str, value: object) -> None:
    if not ok:
        raise ValueError(f"model.{key} must be {requirement}, got {value!r}")


@dataclass
class OptimConfig:
    """Optimiser settings (docs/specification.md §1.8, science / tool use).

    Attributes:
        lr: peak learning rate (paper: 1e-5, constant after warmup).
        betas: AdamW betas (paper: (0.9, 0.999)).
        weight_decay: AdamW weight decay (paper: 0.01).
        warmup_steps: linear warmup optimizer steps (paper: 10).
        grad_clip: max global grad norm (paper: 1.0); 0 disables clipping.
    """

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "> 0", self.lr)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               "two values in [0, 1)", self.betas)
        for name in ("weight_decay", "warmup_steps", "grad_clip"):
            _check(getattr(self, name) >= 0, f"optim.{name}", ">= 0", getattr(self, name))


@dataclass
class RolloutCorrection:
    """Truncated importance sampling (TIS) for the sampler/trainer mismatch
    (docs/specification.md §1.4(2)): each token's loss × ``min(π_old_train(y_t) / π_sampler(y_t), cap)``,
    detached.

    Attributes:
        mode: ``auto`` (default): on when the rollouts come from an engine with its own copy of
            the weights and kernels (vLLM), off for the HF engine, which samples with the trained
            weights (the weight would be ≡ 1); ``token``: always on; ``off``.
        cap: the truncation ρ (paper: 2).
    """

    mode: str = "auto"
    cap: float = 2.0

    def __post_init__(self) -> None:
        _check(self.mode in ROLLOUT_CORRECTION_MODES, "rollout_correction.mode",
               f"one of {ROLLOUT_CORRECTION_MODES}", self.mode)
        _check(self.cap > 0, "rollout_correction.cap", "> 0", self.cap)


@dataclass
class GRPOConfig:
    """The GRPO objective's settings: GRPO's own loss, and the GRPO term of SDPO's λ-mix.

    Attributes:
        norm_adv_by_std: divide the group-centred reward ``r_i − mean(r)`` by the group's
            reward std (original GRPO: True; the SDPO/SC-SDPO papers' baseline and Dr. GRPO:
            False, which avoids up-weighting nearly solved or nearly failed questions).
        eps_low: the PPO ratio ``π/π_old`` is clipped to ``[1 − eps_low, 1 + eps_high]``
            (paper: 0.2). It only acts off-policy (``data.updates_per_batch > 1``); on-policy
            the ratio is exactly 1.
        eps_high: the upper clip (paper: 0.28, DAPO's "clip-higher").
    """

    norm_adv_by_std: bool = False
    eps_low: float = 0.2
    eps_high: float = 0.28

    def __post_init__(self) -> None:
        _check(0 <= self.eps_low < 1, "grpo.eps_low", "in [0, 1)", self.eps_low)
        _check(self.eps_high >= 0, "grpo.eps_high", ">= 0", self.eps_high)


@dataclass
class DistillationConfig:
    """What SDPO distils: the divergence and its support (docs/specification.md §1.3-1.4).

    Attributes:
        alpha: generalised-JSD mixing (0 forward KL, 1 reverse KL; paper: 0.5).
        topk: student top-K support (paper: 100); None = the full vocabulary.
        add_tail: add the tail bucket (the mass outside the top-K; paper: True).
        full_logit_distillation: True (paper): the divergence of the full (top-K) distributions;
            False: the token-level (sampled-token) estimator, reverse KL only (``alpha: 1``).
        is_clip: SDPO importance-ratio clip (paper: 2; the ratio is exactly 1 on-policy).
    """

    alpha: float = 0.5
    topk: Optional[int] = 100
    add_tail: bool = True
    full_logit_distillation: bool = True
    is_clip: float = 2.0

    def __post_init__(self) -> None:
        _check(0 <= self.alpha <= 1, "distillation.alpha", "in [0, 1]", self.alpha)
        if not self.full_logit_distillation and self.alpha != 1.0:
            raise ValueError("model.distillation.full_logit_distillation=False (token-level) supports only "
                             "reverse KL: alpha=1")
        _check(self.topk is None or self.topk >= 1, "distillation.topk", ">= 1 or null (full vocabulary)",
               self.topk)
        _check(self.is_clip > 0, "distillation.is_clip", "> 0", self.is_clip)


@dataclass
class TeacherConfig:
    """The self-teacher's weights and their regularisation (docs/specification.md §1.5).

    Attributes:
        mode: ``ema`` (paper): an fp32 copy updated ``θ' ← (1−rate)θ' + rate·θ`` once per
            rollout batch; ``frozen``: the initial weights; ``live``: the current policy itself
            (no anchor; diverges in the paper's Table 4); ``trust_region``: the logits
            ``(1−rate)·initial + rate·current`` (paper Eq. 6).
        rate: the EMA rate (paper: 0.05 science / tool use, 0.01 LiveCodeBench) or the
            trust-region α.
    """

    mode: TeacherMode = "ema"
    rate: float = 0.05

    def __post_init__(self) -> None:
        _check(self.mode in TEACHER_MODES, "teacher.mode", "ema|frozen|live|trust_region", self.mode)
        _check(0 <= self.rate <= 1, "teacher.rate", "in [0, 1]", self.rate)


@dataclass
class RepromptConfig:
    """How each rollout's teacher prompt is built (docs/specification.md §1.2).

    Attributes:
        dont_reprompt_on_self_success: never demonstrate with the rollout itself (paper: True).
        include_feedback: put the environment's feedback in the reprompt (science / tool use:
            False; the rich-feedback code setting: True).
        feedback_only_without_solution: feedback only when there is no demonstration (True).
        remove_thinking: strip ``<think>`` blocks from demonstrations (True).
        max_teacher_prompt_tokens: the teacher prompt budget (paper: 10240); the demonstration
            text is truncated to fit.
        templates: the reprompt templates (docs/specification.md §1.2(4)).
    """

    dont_reprompt_on_self_success: bool = True
    include_feedback: bool = False
    feedback_only_without_solution: bool = True
    remove_thinking: bool = True
    max_teacher_prompt_tokens: int = 10240
    templates: RepromptTemplates = field(default_factory=RepromptTemplates)

    def __post_init__(self) -> None:
        _check(self.max_teacher_prompt_tokens >= 1, "reprompt.max_teacher_prompt_tokens", ">= 1",
               self.max_teacher_prompt_tokens)

    @property
    def min_group_size(self) -> int:
        """Sibling demonstrations need G >= 2, unless a rollout may demonstrate to itself or
        feedback alone can make a teacher context."""
        return 1 if self.include_feedback or not self.dont_reprompt_on_self_success else 2


# hyper-parameters saved in checkpoints: readable by torch.load(weights_only=True), Lightning's default
torch.serialization.add_safe_globals([OptimConfig, RolloutCorrection, GRPOConfig, DistillationConfig, TeacherConfig,
                                      RepromptConfig, RepromptTemplates])

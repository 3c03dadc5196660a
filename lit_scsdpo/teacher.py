"""The SDPO self-teacher: reprompt construction, the self-distillation mask, and the
regularised teacher weights (EMA by default). docs/specification.md §1.2 (reprompting), §1.5 (teacher
regularisation), §7 items 5, 8 and 11.

The reprompt builder is a pure function of the rollouts of a batch (whole groups): for each
rollout it picks the first *other* successful rollout of the same question as the
demonstration (never the rollout itself), adds environment feedback only when enabled and,
by default, only when there is no demonstration, and renders the teacher chat (original
system messages + one user message with the reprompt text). The student's response token ids
are appended to the teacher prompt unchanged; they are never re-tokenised.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from . import sharding
from .config import RepromptConfig, RepromptTemplates, TeacherConfig, TeacherMode
from .chat import render_prompt, strip_thinking
from .forward import PackedRows, SharedPrefixRows, supports_shared_prefix

Rows = Union[PackedRows, SharedPrefixRows]


@dataclass
class Reprompt:
    """The teacher context of one rollout.

    Attributes:
        system: the original system messages, kept as they are.
        prompt: the content of the original last user message.
        demonstration: the sibling's successful response text (None: no demonstration).
        feedback: the environment feedback used (None: not used).
        demo_index: batch index of the demonstrating rollout.
    """

    system: list[dict[str, str]]
    prompt: str
    demonstration: Optional[str] = None
    feedback: Optional[str] = None
    demo_index: Optional[int] = None

    @property
    def active(self) -> bool:
        """The self-distillation mask: trained iff it has a demonstration or feedback."""
        return self.demonstration is not None or self.feedback is not None

    def messages(self, templates: RepromptTemplates = RepromptTemplates()) -> list[dict[str, str]]:
        solution = (
            templates.solution.format(successful_previous_attempt=self.demonstration)
            if self.demonstration is not None
            else ""
        )
        feedback = (
            templates.feedback.format(feedback_raw=self.feedback) if self.feedback is not None else ""
        )
        text = templates.reprompt.format(prompt=self.prompt, solution=solution, feedback=feedback)
        return [*self.system, {"role": "user", "content": text}]


def self_distillation_mask(
    rewards: Sequence[float],
    group_ids: Sequence[Any],
    has_feedback: Sequence[bool],
    success_threshold: float = 0.5,
    dont_reprompt_on_self_success: bool = True,
    include_feedback: bool = False,
) -> list[bool]:
    """Which rollouts get a teacher context (docs/specification.md §1.2(6), §7 item 5).

    A rollout is trained iff another rollout of its question succeeded (or itself, when
    ``dont_reprompt_on_self_success`` is False), or feedback is enabled and non-empty.
    """
    candidates = demonstration_candidates(rewards, group_ids, success_threshold, dont_reprompt_on_self_success)
    return [bool(c) or (include_feedback and bool(f)) for c, f in zip(candidates, has_feedback)]


def demonstration_candidates(
    rewards: Sequence[float],
    group_ids: Sequence[Any],
    success_threshold: float = 0.5,
    dont_reprompt_on_self_success: bool = True,
) -> list[list[int]]:
    """For each rollout, the batch indices of the successful rollouts of its question that may
    demonstrate to it, in batch order (itself excluded unless allowed). The one rule that both
    the reprompt builder and the self-distillation mask use."""
    successes: dict[Any, list[int]] = {}
    for i, (r, g) in enumerate(zip(rewards, group_ids)):
        if r >= success_threshold:
            successes.setdefault(g, []).append(i)
    return [[j for j in successes.get(g, []) if j != i or not dont_reprompt_on_self_success]
            for i, g in enumerate(group_ids)]


def build_reprompts(
    messages: Sequence[list[dict[str, str]]],
    responses: Sequence[str],
    rewards: Sequence[float],
    group_ids: Sequence[Any],
    feedback: Sequence[str],
    success_threshold: float = 0.5,
    dont_reprompt_on_self_success: bool = True,
    include_feedback: bool = False,
    feedback_only_without_solution: bool = True,
    remove_thinking: bool = True,
) -> list[Reprompt]:
    """Build each rollout's teacher context from its group (docs/specification.md §1.2).

    Args:
        messages: the original chat of each rollout (system messages + user question).
        responses: each rollout's decoded response (special tokens skipped).
        rewards: each rollout's reward; success iff ``reward >= success_threshold`` (0.5).
        group_ids: the question id of each rollout (rollouts of a question share it).
        feedback: each rollout's environment feedback ("" if none).
        dont_reprompt_on_self_success: exclude the rollout's own response (True in every
            paper experiment).
        include_feedback: use feedback (False for science / tool use, the SC-SDPO setting).
        feedback_only_without_solution: use feedback only when there is no demonstration.
        remove_thinking: strip ``<think>...</think>`` from demonstrations.

    Returns:
        One :class:`Reprompt` per rollout, in batch order. The demonstration is the first
        other success in batch order.
    """
    n = len(messages)
    if not (len(responses) == len(rewards) == len(group_ids) == len(feedback) == n):
        raise ValueError("build_reprompts: messages, responses, rewards, group_ids, feedback differ in length")
    all_candidates = demonstration_candidates(rewards, group_ids, success_threshold, dont_reprompt_on_self_success)
    out = []
    for i in range(n):
        msgs = messages[i]
        if not msgs or msgs[-1].get("role") != "user":
            raise ValueError(f"rollout {i}: the original chat must end with a user message")
        system = [m for m in msgs[:-1] if m.get("role") == "system"]
        rp = Reprompt(system=system, prompt=msgs[-1]["content"])
        candidates = all_candidates[i]
        if candidates:
            rp.demo_index = candidates[0]
            demo = responses[candidates[0]]
            rp.demonstration = strip_thinking(demo) if remove_thinking else demo
        if include_feedback and feedback[i] and not (feedback_only_without_solution and rp.demonstration is not None):
            rp.feedback = feedback[i]
        out.append(rp)
    return out


def fit_reprompt(
    tokenizer: Any,
    reprompt: Reprompt,
    max_tokens: int,
    templates: RepromptTemplates = RepromptTemplates(),
    enable_thinking: bool = False,
) -> tuple[Optional[list[int]], bool]:
    """Teacher prompt ids within ``max_tokens``, truncating *inside* the demonstration (or the
    feedback) text, never the question or the assistant header (docs/pitfalls.md#12).

    Returns:
        ``(ids, truncated)``; ``ids`` is None when even an empty demonstration/feedback does
        not fit (the rollout is then masked and counted).
    """
    ids = render_prompt(tokenizer, reprompt.messages(templates), enable_thinking)
    if len(ids) <= max_tokens:
        return ids, False
    field = "demonstration" if reprompt.demonstration is not None else "feedback"
    text = getattr(reprompt, field)
    if text is None:
        return None, True
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    keep = len(text_ids) - (len(ids) - max_tokens)
    while keep > 0:
        cut = copy.copy(reprompt)
        setattr(cut, field, tokenizer.decode(text_ids[:keep]))
        ids = render_prompt(tokenizer, cut.messages(templates), enable_thinking)
        if len(ids) <= max_tokens:
            return ids, True
        keep -= max(1, len(ids) - max_tokens)  # re-tokenisation at the cut can shift a token
    return None, True


class StepPrompts(NamedTuple):
    """The teacher prompts of every row of one optimizer step (on this rank), built once per step
    so that the loss normaliser counts exactly the rows that have a teacher.

    Attributes:
        ids: each row's teacher prompt token ids; None: no teacher context, or it cannot fit.
        truncated: whether the row's demonstration (or feedback) was cut to fit.
        reprompts: each row's :class:`Reprompt`.
    """

    ids: list[Optional[list[int]]]
    truncated: list[bool]
    reprompts: list[Reprompt]

    def has_teacher(self) -> torch.Tensor:
        """``[n_step]`` bool: the row has a teacher prompt (the self-distillation mask)."""
        return torch.tensor([p is not None for p in self.ids], dtype=torch.bool)


def build_step_prompts(step: Any, tokenizer: Any, config: RepromptConfig, success_threshold: float,
                       enable_thinking: bool) -> StepPrompts:
    """The teacher prompts of a step's rows (``step``: a :class:`~lit_scsdpo.data.StepInfo`)."""
    reprompts = build_reprompts(step.messages, step.responses, step.rewards.tolist(), step.group_ids.tolist(),
                                step.feedback, success_threshold, config.dont_reprompt_on_self_success,
                                config.include_feedback, config.feedback_only_without_solution,
                                config.remove_thinking)
    ids, cut = [], []
    for rp in reprompts:
        fitted, truncated = (fit_reprompt(tokenizer, rp, config.max_teacher_prompt_tokens, config.templates,
                                          enable_thinking) if rp.active else (None, False))
        ids.append(fitted)
        cut.append(truncated)
    return StepPrompts(ids, cut, reprompts)


def _detached_copy(policy: nn.Module) -> nn.Module:
    # fp32 EMA (docs/pitfalls.md#5): a float32 policy gives a float32 copy; the modules keep fp32 weights
    # whenever they train (PolicyOptimization.configure_model upcasts after sharding)
    teacher = copy.deepcopy(policy)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


class SelfTeacher(nn.Module):
    """The teacher weights θ' and their regularisation (docs/specification.md §1.5).

    Args:
        policy: the student policy (a causal LM).
        mode: ``ema`` (default): an fp32 copy updated ``θ' ← (1−rate)θ' + rate·θ`` after each
            optimizer step; ``frozen``: the initial weights θ_0; ``live``: the current policy
            itself (no anchor; diverges in the paper's Table 4); ``trust_region``: logits
            ``(1−rate)·ref + rate·current`` with ``ref`` the frozen θ_0 (paper Eq. 6).
        rate: EMA rate (0.05 for science/tool use, 0.01 for LCB), or the trust-region mix α.
    """

    def __init__(self, policy: nn.Module, mode: TeacherMode = "ema", rate: float = 0.05) -> None:
        super().__init__()
        TeacherConfig(mode, rate)  # checked where the options are defined
        self.mode, self.rate = mode, rate
        # the policy is held by reference only (not a submodule: it is saved with the module)
        object.__setattr__(self, "_policy", policy)
        self.weights: Optional[nn.Module] = None if mode == "live" else _detached_copy(policy)

    def train(self, mode: bool = True) -> "SelfTeacher":
        super().train(mode)
        if self.weights is not None:
            self.weights.eval()  # no dropout in the teacher, ever
        return self

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step (mode ``ema``); a no-op for the other modes."""
        if self.mode != "ema":
            return
        sharding.reshard(self.weights)  # a no-grad forward leaves a sharded root gathered
        if any(p.dtype != torch.float32 for p in self.weights.parameters()):
            raise ValueError("SelfTeacher.update: the EMA teacher must be float32 (a bf16 EMA at rate 0.05 "
                             "loses most updates to rounding); train with fp32 master weights")
        for t, s in zip(self.weights.parameters(), self._policy.parameters()):
            t.lerp_(s.detach().to(t.dtype), self.rate)
        for t, s in zip(self.weights.buffers(), self._policy.buffers()):
            t.copy_(s)

    @torch.no_grad()
    def reset(self) -> None:
        """Make the teacher weights the policy's current ones (θ' ← θ): the start of a new run
        whose policy was loaded after this teacher was built (``fit --weights_from``)."""
        if self.weights is None:
            return
        for t, s in zip(self.weights.parameters(), self._policy.parameters()):
            t.copy_(s.detach().to(t.dtype))
        for t, s in zip(self.weights.buffers(), self._policy.buffers()):
            t.copy_(s)

    def _model(self) -> nn.Module:
        return self._policy if self.mode == "live" else self.weights

    def _models(self) -> list[nn.Module]:
        return {"live": [self._policy], "trust_region": [self.weights, self._policy]}.get(self.mode, [self.weights])

    def can_share_prefix(self) -> bool:
        """Whether the teacher forward may share each distinct prompt over its rows
        (:class:`~lit_scsdpo.forward.SharedPrefixRows`; exact for plain full-attention LMs)."""
        return all(supports_shared_prefix(m) for m in self._models())

    @torch.no_grad()
    def response_hidden(self, rows: Rows) -> torch.Tensor:
        """Final hidden states ``[n, T, H]`` at the positions predicting the response tokens
        (chunked-loss mode). Not available for ``trust_region`` (it mixes two models' logits)."""
        if self.mode == "trust_region":
            raise ValueError("response_hidden: the trust_region teacher is defined on logits only")
        return rows.forward(self._model(), "hidden")

    def head(self) -> nn.Module:
        """The teacher's LM head (maps hidden states to logits)."""
        return self._model().get_output_embeddings()

    @torch.no_grad()
    def response_logits(self, rows: Rows) -> torch.Tensor:
        """Teacher logits ``[n, T, V]`` (fp32) at the positions predicting the response tokens."""
        if self.mode == "live":
            return rows.forward(self._policy, "logits").float()
        ref = rows.forward(self.weights, "logits").float()
        if self.mode == "trust_region":
            current = rows.forward(self._policy, "logits").float()
            return torch.lerp(ref, current, self.rate)
        return ref

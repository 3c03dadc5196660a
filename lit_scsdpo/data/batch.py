"""The batch types of the data room: :class:`Rollouts` (one epoch's scored rollouts on this
rank), :class:`RolloutBatch` (a micro-batch of whole groups, what the loss reads) with its
:class:`StepInfo` (what every micro-batch knows about its optimizer step), and
:func:`collate_rollouts`, which turns the first into the second.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..layout import pack_prompt_response
from ..tasks.base import Score


@dataclass
class StepInfo:
    """What every micro-batch knows about its whole optimizer step on this rank, so that the
    loss can use step-level (then global) normalisers (see ``losses.global_normalizer``)."""

    rewards: torch.Tensor  # [n_step] rewards of all sequences of the step
    group_ids: torch.Tensor  # [n_step] question index of each sequence
    has_feedback: torch.Tensor  # [n_step] bool: non-empty environment feedback
    response_lengths: torch.Tensor  # [n_step] response token counts
    question_weights: torch.Tensor  # [n_step] the weight of each sequence's question
    num_micro_batches: int = 1
    messages: list = field(default_factory=list)  # [n_step] chat of each sequence's question
    responses: list = field(default_factory=list)  # [n_step] decoded responses
    feedback: list = field(default_factory=list)  # [n_step] feedback text ("" if none)
    update_index: int = 0  # which optimizer step of its rollout batch this is
    num_updates: int = 1  # optimizer steps per rollout batch (data.updates_per_batch)
    step_id: int = 0  # the optimizer step's index within the run's draws
    #: this step's identity, the same in all its micro-batches and never reused (the SDPO teacher
    #: prompts are built once per step under it); a new step, a new uid
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)


def _tensors_to(obj: Any, device: Any) -> Any:
    moved = {f.name: (v.to(device) if isinstance(v, torch.Tensor) else _tensors_to(v, device) if isinstance(v, StepInfo)
                      else v) for f in dataclasses.fields(obj) for v in [getattr(obj, f.name)]}
    return dataclasses.replace(obj, **moved)


@dataclass
class RolloutBatch:
    """A micro-batch of scored rollouts, whole groups only (``n = questions × G`` rows).

    Token layout: ``input_ids = [left-padded prompt | right-padded response]`` with the
    prompt part ``prompt_width`` wide, so response position ``t`` sits at column
    ``prompt_width + t`` for every row.
    """

    input_ids: torch.Tensor  # [n, P + T]
    attention_mask: torch.Tensor  # [n, P + T]
    position_ids: torch.Tensor  # [n, P + T] from the attention-mask cumsum
    response_ids: torch.Tensor  # [n, T] (pad after the end)
    response_mask: torch.Tensor  # [n, T] float 0/1
    sampler_logprobs: torch.Tensor  # [n, T] the engine's per-token log-probs
    rewards: torch.Tensor  # [n]
    pass_rates: torch.Tensor  # [n] pass rate of each row's question
    question_weights: torch.Tensor  # [n] weight of each row's question (1 = plain)
    group_ids: torch.Tensor  # [n] question index within the epoch's rollouts
    prompt_width: int
    group_size: int
    temperature: float
    enable_thinking: bool
    uids: list[str]
    messages: list[list[dict[str, str]]]
    responses: list[str]  # decoded, special tokens skipped
    preds: list[Optional[str]]
    feedback: list[str]
    step: StepInfo
    micro_index: int = 0  # position of this micro-batch within its optimizer step
    step_offset: int = 0  # index of this micro-batch's first row among its step's rows
    success_threshold: float = 0.5  # reward counted as a success (data.success_threshold)
    stats: dict[str, float] = field(default_factory=dict)  # rollout-phase metrics
    separate_sampler: bool = False  # sampler log-probs come from another copy of the weights (vLLM)

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: Any) -> "RolloutBatch":
        """The batch with its tensors (and its step's) on ``device``; lists and strings are
        shared, not copied (Lightning's generic mover deep-copies dataclasses: ~9 ms a step)."""
        return _tensors_to(self, device)

    @property
    def last_in_step(self) -> bool:
        return self.micro_index == self.step.num_micro_batches - 1

    @property
    def last_in_rollout_batch(self) -> bool:
        """The last micro-batch of the last optimizer step on this rollout batch."""
        return self.last_in_step and self.step.update_index == self.step.num_updates - 1


@dataclass
class Rollouts:
    """All scored rollouts of one epoch on this rank, question-major (G rows per question)."""

    rows: list[dict[str, Any]]  # the dataset rows of the questions
    messages: list[list[dict[str, str]]]  # per question
    prompt_ids: list[list[int]]  # per question
    response_ids: list[list[int]]  # per rollout
    logprobs: list[list[float]]  # per rollout
    responses: list[str]  # per rollout
    scores: list[Score]  # per rollout
    group_size: int
    question_weights: torch.Tensor = None  # [B] set by a callback; ones by default
    stats: dict[str, float] = field(default_factory=dict)
    success_threshold: float = 0.5  # the one definition of success (data.success_threshold)
    separate_sampler: bool = False  # sampled by an engine with its own copy of the weights (vLLM)

    def __post_init__(self) -> None:
        if self.question_weights is None:
            self.question_weights = torch.ones(self.num_questions)

    @property
    def num_questions(self) -> int:
        return len(self.prompt_ids)

    @property
    def rewards(self) -> torch.Tensor:
        """``[B, G]`` rewards."""
        return torch.tensor([s.reward for s in self.scores], dtype=torch.float32).view(
            self.num_questions, self.group_size
        )

    @property
    def pass_rates(self) -> torch.Tensor:
        """``[B]`` each question's pass rate p̂: the share of its G rewards ``>= success_threshold``."""
        return (self.rewards >= self.success_threshold).float().mean(1)


def step_info(r: "Rollouts", step_questions: list[int], num_micro: int, update_index: int = 0,
              num_updates: int = 1, step_id: int = 0) -> StepInfo:
    """The :class:`StepInfo` of the optimizer step over ``step_questions`` (built once per step
    and shared by its micro-batches)."""
    G = r.group_size
    step_seqs = [q * G + j for q in step_questions for j in range(G)]
    return StepInfo(
        rewards=r.rewards.view(-1)[step_seqs],
        group_ids=torch.tensor([i // G for i in step_seqs]),
        has_feedback=torch.tensor([bool(r.scores[i].feedback) for i in step_seqs]),
        response_lengths=torch.tensor([len(r.response_ids[i]) for i in step_seqs]),
        question_weights=r.question_weights[[i // G for i in step_seqs]].float(),
        num_micro_batches=num_micro,
        messages=[r.messages[i // G] for i in step_seqs],
        responses=[r.responses[i] for i in step_seqs],
        feedback=[r.scores[i].feedback or "" for i in step_seqs],
        update_index=update_index,
        num_updates=num_updates,
        step_id=step_id,
    )


def collate_rollouts(r: "Rollouts", questions: list[int], step: StepInfo, step_questions: list[int],
                     micro_index: int, pad_id: int, temperature: float, enable_thinking: bool) -> RolloutBatch:
    """Tensors for the rollouts of ``questions`` (all G rows of each), which are a contiguous
    run of ``step_questions``, the questions of the optimizer ``step`` (:func:`step_info`)."""
    G = r.group_size
    seqs = [q * G + j for q in questions for j in range(G)]
    prompts = [r.prompt_ids[i // G] for i in seqs]
    responses = [r.response_ids[i] for i in seqs]
    T = max(1, max(len(x) for x in responses))
    n = len(seqs)
    response_ids = torch.full((n, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, T))
    logprobs = torch.zeros((n, T))
    for k, (y, i) in enumerate(zip(responses, seqs)):
        if y:
            response_ids[k, : len(y)] = torch.tensor(y)
            response_mask[k, : len(y)] = 1
            logprobs[k, : len(y)] = torch.tensor(r.logprobs[i])
    input_ids, attention, positions, P = pack_prompt_response(prompts, response_ids, response_mask, pad_id)
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        response_ids=response_ids,
        response_mask=response_mask,
        sampler_logprobs=logprobs,
        rewards=r.rewards.view(-1)[seqs],
        pass_rates=r.pass_rates[[i // G for i in seqs]],
        question_weights=r.question_weights[[i // G for i in seqs]].float(),
        group_ids=torch.tensor([i // G for i in seqs]),
        prompt_width=P,
        group_size=G,
        temperature=temperature,
        enable_thinking=enable_thinking,
        uids=[str(r.rows[i // G].get("uid", i // G)) for i in seqs],
        messages=[r.messages[i // G] for i in seqs],
        responses=[r.responses[i] for i in seqs],
        preds=[r.scores[i].pred for i in seqs],
        feedback=[r.scores[i].feedback or "" for i in seqs],
        step=step,
        micro_index=micro_index,
        step_offset=step_questions.index(questions[0]) * G if questions else 0,
        success_threshold=r.success_threshold,
        stats=dict(r.stats),
        separate_sampler=r.separate_sampler,
    )

"""Micro-batch planning: how one rollout batch becomes optimizer steps and micro-batches of
whole groups, and the loader that yields them in order on each rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch


@dataclass(frozen=True)
class MicroBatchPlan:
    """One micro-batch of the plan.

    Attributes:
        questions: its questions (each with all its G rollouts).
        step_questions: the questions of its optimizer step (it is a contiguous run of them).
        micro_index: its position within the step.
        num_micro: the step's number of micro-batches.
        update_index: the step's index within the rollout batch.
        num_updates: optimizer steps per rollout batch.
    """

    questions: list[int]
    step_questions: list[int]
    micro_index: int
    num_micro: int
    update_index: int
    num_updates: int


def plan_micro_batches(num_questions: int, steps: int, micro_batch_questions: int) -> list[MicroBatchPlan]:
    """Split ``num_questions`` into ``steps`` optimizer steps (contiguous, the last may be
    shorter), each into micro-batches of ``micro_batch_questions`` questions."""
    per_step = -(-num_questions // steps)
    starts = list(range(0, num_questions, per_step))
    plan = []
    for u, s in enumerate(starts):
        step_q = list(range(s, min(s + per_step, num_questions)))
        chunks = [step_q[i : i + micro_batch_questions] for i in range(0, len(step_q), micro_batch_questions)]
        plan.extend(MicroBatchPlan(chunk, step_q, mi, len(chunks), u, len(starts)) for mi, chunk in enumerate(chunks))
    return plan


class PlannedBatches(torch.utils.data.IterableDataset):
    """This rank's micro-batches, in order, collated lazily (so question weights set by a callback
    at epoch start are used). Iterable (with a length), so that Lightning does not re-shard it
    with a DistributedSampler: each rank already holds its own questions, and every rank must see
    all of its micro-batches (a re-shard gave ranks different micro-batch counts and mismatched
    collectives)."""

    def __init__(self, items: list[MicroBatchPlan], collate: Callable[[MicroBatchPlan], Any]) -> None:
        self.items, self.collate = items, collate

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return (self.collate(item) for item in self.items)

"""The accounting of the optimisation loop, in one object: what one optimizer step measured
(phase times, tokens, the metrics of its micro-batches, whether a micro-batch had a non-finite
loss) and what the run counts across steps (skipped and non-finite steps, the streak of
consecutive non-finite steps that stops a diverged run). Only the run's counters and the streak
are kept in checkpoints (:meth:`StepAccounting.state_dict`); a step's own figures start afresh
with its first micro-batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepAccounting:
    """Per-step figures and per-run counters of the training loop.

    Attributes:
        counters: run totals: ``nonfinite_loss`` (micro-batches), ``nonfinite_grad`` and
            ``skipped_steps`` (optimizer steps); logged as ``train/<name>``.
        consecutive_nonfinite: optimizer steps in a row with a non-finite loss or gradient.
        times: seconds per phase of the current step (``student``, ``teacher``, ``backward``,
            ``optimizer``); logged as ``time/<phase>``.
        metrics: the current step's metrics, one value per micro-batch.
        tokens: tokens (prompt and response) the current step trained on.
        nonfinite: a micro-batch of the current step had a non-finite loss (on any rank).
        updated_in_batch: an optimizer step of the current rollout batch updated the policy.
    """

    counters: dict[str, int] = field(
        default_factory=lambda: {"nonfinite_loss": 0, "nonfinite_grad": 0, "skipped_steps": 0})
    consecutive_nonfinite: int = 0
    times: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    tokens: int = 0
    nonfinite: bool = False
    updated_in_batch: bool = False
    started: float = field(default_factory=time.perf_counter)

    def start_step(self, first_of_rollout_batch: bool) -> None:
        """The first micro-batch of an optimizer step: its figures start from zero."""
        self.times, self.metrics, self.tokens, self.nonfinite = {}, {}, 0, False
        self.started = time.perf_counter()
        if first_of_rollout_batch:
            self.updated_in_batch = False

    def add_time(self, phase: str, seconds: float) -> None:
        self.times[phase] = self.times.get(phase, 0.0) + seconds

    def add_micro_batch(self, metrics: dict[str, float], tokens: int) -> None:
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append(v)
        self.tokens += tokens

    def nonfinite_loss(self) -> None:
        """A micro-batch's loss was non-finite on some rank: the whole step will be skipped."""
        self.counters["nonfinite_loss"] += 1
        self.nonfinite = True

    def end_step(self, updated: bool, nonfinite: bool) -> None:
        """The optimizer step is over: ``updated`` (the weights changed) or skipped, and whether
        its loss or gradient was non-finite (which a skipped step with a zero gradient is not)."""
        if updated:
            self.updated_in_batch = True
        else:
            self.counters["skipped_steps"] += 1
            if nonfinite and not self.nonfinite:
                self.counters["nonfinite_grad"] += 1
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if nonfinite else 0

    @property
    def seconds(self) -> float:
        """Wall time since the step's first micro-batch started."""
        return time.perf_counter() - self.started

    def step_logs(self, seconds: float) -> dict[str, float]:
        """The step's metrics (the loss summed over micro-batches, the rest averaged), phase
        times, training throughput over ``seconds`` and the run counters, as logged."""
        logs = {f"train/{k}": sum(v) if k == "loss" else sum(v) / len(v) for k, v in self.metrics.items()}
        logs.update({f"time/{k}": v for k, v in self.times.items()})
        logs["train/tokens_per_s"] = self.tokens / max(seconds, 1e-9)
        logs.update({f"train/{k}": float(v) for k, v in self.counters.items()})
        return logs

    def state_dict(self) -> dict[str, Any]:
        return {"counters": dict(self.counters), "consecutive_nonfinite": self.consecutive_nonfinite}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counters.update(state.get("counters", {}))
        self.consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))

"""Scoring, and the statistics of a scored rollout batch.

:class:`SafeScorer` runs a task's verifier so that a bug in it cannot kill or stall a run;
:func:`rollout_stats` is the one place the rollout metrics are computed (the ``rollout/*``
scalars), and :func:`pass_rate_shares` the shares of unsolved, solved and mixed questions that
the curriculum logger reports too.
"""

from __future__ import annotations

import logging
import signal
import threading
import traceback
from typing import Any, Optional

import torch

from ..tasks.base import Score, Task

log = logging.getLogger(__name__)


class _ScoreTimeout(BaseException):
    """A BaseException: verifiers (sympy, math-verify, reasoning-gym) catch ``Exception``, and
    would otherwise swallow the timeout and return a wrong answer instead of being cut."""


def _raise_timeout(signum, frame):  # SIGALRM handler
    raise _ScoreTimeout()


class SafeScorer:
    """Runs a task's verifier so that a bug in it cannot kill or stall a long run.

    An exception, a NaN reward or a verifier that runs past ``timeout`` seconds scores 0 with
    no prediction, and is counted (``score_errors``, ``score_timeouts``); the traceback is
    logged once per kind of fault (exception type and the line that raised it), not once per
    response. The time-out uses ``SIGALRM`` and so applies in the main thread of a POSIX
    process (where training runs); elsewhere verifiers run without one.
    """

    def __init__(self, task: Task, timeout: Optional[float] = 10.0) -> None:
        self.task, self.timeout = task, timeout
        self._seen: set[str] = set()

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            log.warning("%s (further faults of this kind are counted in rollout/score_errors, not logged)", message)

    def _call(self, completion: str, row: dict[str, Any]) -> Score:
        use_alarm = (self.timeout is not None and hasattr(signal, "setitimer")
                     and threading.current_thread() is threading.main_thread())
        if not use_alarm:
            return self.task.score(completion, row)
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return self.task.score(completion, row)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def __call__(self, completion: str, row: dict[str, Any], counters: dict[str, int]) -> Score:
        try:
            score = self._call(completion, row)
        except _ScoreTimeout:
            counters["score_timeouts"] = counters.get("score_timeouts", 0) + 1
            self._log_once("timeout", f"verifier of task {self.task.name!r} took more than {self.timeout} s "
                                      f"(row uid={row.get('uid')}); scored 0")
            return Score(reward=0.0, pred=None, feedback="", format_ok=False)
        except Exception as exc:  # noqa: BLE001 - any verifier bug
            counters["score_errors"] = counters.get("score_errors", 0) + 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._log_once(f"{type(exc).__name__}@{where.filename}:{where.lineno}",
                           f"verifier of task {self.task.name!r} raised on row uid={row.get('uid')}; scored 0:\n"
                           + "".join(traceback.format_exception(exc)))
            return Score(reward=0.0, pred=None, feedback="", format_ok=False)
        reward = float(score.reward)
        if reward != reward:  # NaN reward
            counters["score_errors"] = counters.get("score_errors", 0) + 1
            self._log_once("nan", f"verifier of task {self.task.name!r} returned a NaN reward "
                                  f"(row uid={row.get('uid')}); scored 0")
            return Score(reward=0.0, pred=score.pred, feedback=score.feedback, format_ok=score.format_ok)
        return score


def pass_rate_shares(p_hat: torch.Tensor) -> dict[str, float]:
    """The shares of questions with pass rate 0 (``frac_p0``), 1 (``frac_p1``) and in between
    (``frac_mixed``): only the mixed ones have a GRPO advantage, and a p̂ = 0 question has no
    SDPO demonstration."""
    return {"frac_p0": (p_hat == 0).float().mean().item(),
            "frac_p1": (p_hat == 1).float().mean().item(),
            "frac_mixed": ((p_hat > 0) & (p_hat < 1)).float().mean().item()}


def rollout_stats(rewards: torch.Tensor, p_hat: torch.Tensor, scores: list[Score], lengths: list[int],
                  finished: list[bool], success_threshold: float) -> dict[str, float]:
    """The rollout metrics of one scored batch: ``rewards`` ``[B, G]``, ``p_hat`` ``[B]``, and per
    rollout its score, response length and whether it ended before the token budget."""
    return {
        "reward_mean": rewards.mean().item(),
        "pass_rate_mean": p_hat.mean().item(),
        **pass_rate_shares(p_hat),
        "success_group_fraction": (p_hat > 0).float().mean().item(),  # SDPO's metric names
        "success_sample_fraction": (rewards >= success_threshold).float().mean().item(),
        "format_rate": sum(s.format_ok for s in scores) / len(scores),
        "response_length": torch.tensor(lengths, dtype=torch.float32).mean().item(),
        "truncated_fraction": 1.0 - sum(finished) / len(finished),
    }

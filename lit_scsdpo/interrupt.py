"""A process-wide stop request: set by the SIGTERM / SIGINT handler of the checkpoint callback,
polled at the boundaries of the long phases (token by token in generation, before each
micro-batch, before the optimizer step), so that a preemption signal is honoured within
seconds even in the middle of a step that takes minutes.

The partial step is abandoned by raising :class:`Preempted`; nothing of it has touched the
weights, the optimizer or the teacher, so the state saved is the end of the last completed
step (see ``callbacks/checkpoint.py``). Imports nothing heavy: engines, the DataModule and the
module all poll it.
"""

from __future__ import annotations

import signal
from typing import Optional

_requested: Optional[int] = None  # the signal number, once one arrived


class Preempted(SystemExit):
    """The run was stopped by a signal; its exit status is ``128 + signal`` (143 for SIGTERM,
    130 for SIGINT), as a shell reports a process killed by that signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask the run to stop at the next boundary (what the signal handler calls)."""
    global _requested
    if _requested is None:
        _requested = int(signum)


def stop_requested() -> Optional[int]:
    """The signal number if a stop was requested, else None."""
    return _requested


def clear() -> None:
    """Forget a stop request (a new run in the same process, tests)."""
    global _requested
    _requested = None


def check() -> None:
    """Raise :class:`Preempted` if a stop was requested (this process only; see
    :func:`check_global` where ranks must agree)."""
    if _requested is not None:
        raise Preempted(_requested)


def check_global(device: Optional[object] = None) -> None:
    """Like :func:`check`, but all data-parallel ranks agree (an all-reduce of the flag), so
    that they abandon the step together and no collective is left waiting on one rank."""
    import torch

    from . import distributed

    flag = _requested or 0
    if distributed.initialized():
        flag = int(distributed.all_reduce(torch.tensor([flag], dtype=torch.long, device=device), "max").item())
    if flag:
        request_stop(flag)
        raise Preempted(flag)

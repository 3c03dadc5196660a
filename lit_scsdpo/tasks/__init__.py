"""Tasks: question sources with verifiable rewards (see :mod:`lit_scsdpo.tasks.base`)."""

from .arithmetic import ArithmeticTask
from .base import Score, Task, extract_tagged_answer

__all__ = ["ArithmeticTask", "Score", "Task", "extract_tagged_answer"]

"""Tasks: question sources with verifiable rewards (see :mod:`lit_scsdpo.tasks.base`)."""

from .arithmetic import ArithmeticTask
from .base import Score, Task, extract_tagged_answer
from .files import MultipleChoiceTask, ToolUseTask

__all__ = ["ArithmeticTask", "MultipleChoiceTask", "Score", "Task", "ToolUseTask", "extract_tagged_answer"]

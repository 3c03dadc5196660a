"""Tasks: question sources with verifiable rewards (see :mod:`lit_scsdpo.tasks.base`)."""

from .arithmetic import ArithmeticTask
from .base import Score, Task, extract_tagged_answer
from .files import MultipleChoiceTask, SciKnowEvalTask, ToolUseTask
from .math import MathTask  # math-verify is imported by MathTask(), not here (optional extra)

__all__ = ["ArithmeticTask", "MathTask", "MultipleChoiceTask", "Score", "SciKnowEvalTask", "Task", "ToolUseTask",
           "extract_tagged_answer"]

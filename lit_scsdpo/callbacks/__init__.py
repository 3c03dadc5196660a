"""Callbacks: cross-cutting parts of the training loop."""

from .checkpoint import RunCheckpoint
from .curriculum import CurriculumLogger
from .difficulty import DifficultyWeighting
from .evaluation import MajorityVoteEvaluation
from .progress import StepProgressBar

__all__ = ["CurriculumLogger", "DifficultyWeighting", "MajorityVoteEvaluation", "RunCheckpoint",
           "StepProgressBar"]

"""Callbacks: cross-cutting parts of the training loop."""

from .difficulty import DifficultyWeighting

__all__ = ["DifficultyWeighting"]

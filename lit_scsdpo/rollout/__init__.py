"""Rollout engines: :class:`RolloutEngine` protocol and its implementations."""

from .base import Generations, RolloutEngine, SamplingConfig
from .hf import HFGenerateEngine

__all__ = ["Generations", "RolloutEngine", "SamplingConfig", "HFGenerateEngine"]

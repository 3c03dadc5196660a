"""Rollout engines: :class:`RolloutEngine` protocol and its implementations."""

from .base import Generations, RolloutEngine, SamplingConfig
from .hf import HFGenerateEngine
from .vllm import VLLMEngine  # imports vllm itself only when an engine starts

__all__ = ["Generations", "RolloutEngine", "SamplingConfig", "HFGenerateEngine", "VLLMEngine"]

"""lit_scsdpo: GRPO, SDPO and SC-SDPO for LLM reasoning, on PyTorch Lightning."""

from . import interrupt, sharding  # sharding registers --trainer.strategy fsdp2
from .callbacks import DifficultyWeighting, RunCheckpoint
from .data import RolloutBatch, RolloutDataModule
from .module import GRPO, SDPO, OptimConfig, PolicyOptimization, RolloutCorrection
from .teacher import RepromptTemplates, SelfTeacher

__version__ = "0.1.0"
__all__ = [
    "GRPO", "SDPO", "PolicyOptimization", "OptimConfig", "RolloutDataModule", "RolloutBatch",
    "DifficultyWeighting", "RunCheckpoint", "SelfTeacher", "interrupt", "RepromptTemplates",
    "sharding", "RolloutCorrection",
]

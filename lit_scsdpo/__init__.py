"""lit_scsdpo: GRPO, SDPO and SC-SDPO for LLM reasoning, on PyTorch Lightning.

The names below are imported on first use (PEP 562), so that ``lit-scsdpo --help`` and the
checkpoint tools start without importing torch, Lightning and transformers."""

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GRPO": "module", "SDPO": "module", "PolicyOptimization": "module", "OptimConfig": "config",
    "RolloutCorrection": "config", "GRPOConfig": "config", "DistillationConfig": "config",
    "TeacherConfig": "config", "RepromptConfig": "config", "RepromptTemplates": "config",
    "RolloutDataModule": "data", "RolloutBatch": "data",
    "DifficultyWeighting": "callbacks", "RunCheckpoint": "callbacks", "SelfTeacher": "teacher",
}
__all__ = [*_EXPORTS, "interrupt", "sharding"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        from . import sharding  # noqa: F401 - registers --trainer.strategy fsdp2

        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in ("interrupt", "sharding"):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

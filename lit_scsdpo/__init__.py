"""lit_scsdpo: GRPO, SDPO and SC-SDPO for LLM reasoning, on PyTorch Lightning."""

__version__ = "0.1.0"

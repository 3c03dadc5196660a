"""The rollout engine protocol: prompts (token ids) in, sampled responses (token ids) out.

An engine never decodes and re-tokenises: what it returns are the exact token ids the
policy sampled, and the trainer scores those same ids (docs/pitfalls.md#10). The DataModule calls
:meth:`RolloutEngine.update_weights` with the current policy before each generation, so an
engine that keeps its own copy of the weights (vLLM) can refresh it; one that samples from
the policy object itself (transformers ``generate``) just keeps a reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, runtime_checkable

import torch


@dataclass
class SamplingConfig:
    """How responses are sampled.

    Attributes:
        temperature: 1.0 for training rollouts and 0.6 for validation in the paper
            (docs/specification.md §1.8); 0 means greedy decoding (the n responses of a prompt are then
            one greedy response repeated; refused for training rollouts, whose G draws would
            all be equal).
        top_p: nucleus sampling mass; 1.0 for training, 0.95 for validation (paper).
        max_new_tokens: response length cap; 8192 in the paper, small on CPU.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8192

    def __post_init__(self) -> None:
        self.check()

    def check(self, name: str = "sampling") -> None:
        """One line naming ``name`` (``data.sampling`` or ``data.evaluation.sampling``) and the field."""
        if self.temperature < 0:
            raise ValueError(f"{name}.temperature must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"{name}.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"{name}.max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def check_values(cls, values: dict, name: str) -> None:
        """Check raw configuration ``values`` before the dataclass is built (the CLI's pre-flight,
        so that a bad ``data.evaluation.sampling`` is reported as such, not as ``sampling``)."""
        fields = {f: values[f] for f in ("temperature", "top_p", "max_new_tokens") if values.get(f) is not None}
        probe = cls.__new__(cls)
        probe.__dict__.update({**cls().__dict__, **fields})
        probe.check(name)


@dataclass
class Generations:
    """``len(prompts) * n`` responses, prompt-major (prompt 0's n samples first).

    Attributes:
        prompt_index: for each response, the index of its prompt in the request.
        response_ids: the sampled token ids, up to and including the stop token if one was
            sampled; never padded.
        logprobs: per-token log-probabilities of the sampled ids under the policy at the
            sampling temperature (``log_softmax(logits / T)``, before top-p truncation), as
            the trainer computes them; used for rollout importance correction.
        finished: True if the response ended with a stop token (False: cut at max tokens).
        seconds: wall time of the generation.
    """

    prompt_index: list[int] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    logprobs: list[list[float]] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """Samples responses from the current policy."""

    def update_weights(self, policy: torch.nn.Module) -> None:
        """Make the next :meth:`generate` sample from ``policy``'s current weights."""

    def generate(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, seed: Optional[int] = None
    ) -> Generations:
        """Sample ``n`` responses for each prompt (token ids, no padding).

        ``seed`` makes the draw a function of the weights, the prompts and the seed alone (the
        DataModule passes one per step, so a resumed run samples exactly what the uninterrupted
        one did). An engine should return early (with fewer or shorter
        responses) once ``lit_scsdpo.interrupt.stop_requested()`` is set; the caller then
        abandons the draw with ``interrupt.check_global()``, on every rank together."""

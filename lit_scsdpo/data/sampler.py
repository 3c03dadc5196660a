"""Which questions each rollout batch draws, and the seed of every draw.

:class:`QuestionSampler` walks a seeded permutation of the train split without replacement
across epochs (a new permutation when the split is used up), hands each rank its share of a
batch, and derives the sampling seed of every draw from the run's seeds, the draw's kind and
index and the rank. Its state (position in the permutation, draws so far, the global seed) is
saved in checkpoints, so a resumed run draws exactly what the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional

import torch


def stream_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class QuestionSampler:
    """The question order and the seeds of the draws.

    Args:
        questions_per_step: B, questions per rollout batch over all ranks.
        seed: the data seed (``data.seed``): the permutation and, with the global seed, every
            sampling stream.
    """

    def __init__(self, questions_per_step: int, seed: int = 0) -> None:
        self.questions_per_step, self.seed = questions_per_step, seed
        self.cycle = 0
        self.cursor = 0
        self.order: Optional[list[int]] = None
        self.draws = 0  # training rollout batches drawn so far (the sampling stream index)
        self.base_seed: Optional[int] = None

    def set_base_seed(self) -> None:
        """The global seed of ``seed_everything``, read once (a resume restores the saved one)."""
        if self.base_seed is None:
            self.base_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))

    def generation_seed(self, kind: str, index: int, rank: int) -> int:
        """The seed of one draw: ``kind`` ("train" / "validation" / "test"), its index (the
        rollout batch, or the optimizer step for evaluation), the rank, and the run's seeds."""
        return stream_seed(self.base_seed, self.seed, kind, int(index), rank)

    def next_questions(self, n: int, rank: int, world: int) -> list[int]:
        """The next B/world of the ``n`` train questions for ``rank``; every rank walks the same
        permutation, so together they draw B distinct questions."""
        if self.questions_per_step % world:
            raise ValueError(f"data.questions_per_step ({self.questions_per_step}) must be divisible by the "
                             f"world size {world}")
        out: list[int] = []
        while len(out) < self.questions_per_step:
            if self.order is None:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.cycle)
                self.order = torch.randperm(n, generator=g).tolist()
            if self.cursor >= n:
                self.cycle, self.cursor, self.order = self.cycle + 1, 0, None
                continue
            take = min(self.questions_per_step - len(out), n - self.cursor)
            out.extend(self.order[self.cursor : self.cursor + take])
            self.cursor += take
        per_rank = self.questions_per_step // world
        return out[rank * per_rank : (rank + 1) * per_rank]

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "cursor": self.cursor, "draws": self.draws, "base_seed": self.base_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cycle, self.cursor, self.order = int(state["cycle"]), int(state["cursor"]), None
        self.draws = int(state.get("draws", 0))
        if state.get("base_seed") is not None:
            self.base_seed = int(state["base_seed"])

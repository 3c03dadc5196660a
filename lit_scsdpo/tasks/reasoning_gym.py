"""Reasoning Gym tasks as an optional task source (``pip install 'lit-scsdpo[reasoning-gym]'``).

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ ships ~100 procedural
generators with algorithmic verifiers that work offline. This adapter exposes one of them as
a :class:`~lit_scsdpo.tasks.Task`: splits are generated with distinct seeds, the prompt asks
for the answer in ``<answer>…</answer>``, and the generator's own ``score_answer`` verifies
the extracted answer (any score ≥ ``success_score`` counts as a success; the reward is
binary, as SDPO / SC-SDPO assume).

It is not a core dependency: installing it compiles native extensions (pycosat and
others) and pulls sympy, so the core install stays light; see docs/tasks.md for the
measured cost.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Optional

from .base import Score, extract_tagged_answer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import datasets

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem. Put only your final answer between <answer> and </answer>, "
    "for example <answer>42</answer>."
)
_SPLIT_OFFSET = {"train": 0, "validation": 1, "test": 2}


class ReasoningGymTask:
    """One reasoning-gym generator as a task.

    Args:
        dataset: the generator's name, e.g. ``chain_sum``, ``basic_arithmetic``, ``leg_counting``.
        train_size, val_size, test_size: questions per split.
        seed: base seed; the splits use ``seed``, ``seed + 1``, ``seed + 2`` (so they are
            generated independently; reasoning-gym does not deduplicate across seeds).
        system_prompt: the system message (default asks for ``<answer>…</answer>``); None
            or "" for none.
        success_score: a verifier score at or above this is a success (reward 1).
    """

    def __init__(
        self,
        dataset: str = "chain_sum",
        train_size: int = 4096,
        val_size: int = 128,
        test_size: int = 128,
        seed: int = 0,
        system_prompt: Optional[str] = DEFAULT_SYSTEM_PROMPT,
        success_score: float = 1.0,
    ) -> None:
        try:
            import reasoning_gym  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "ReasoningGymTask needs the optional dependency: pip install 'lit-scsdpo[reasoning-gym]'"
            ) from exc
        for name, value in [("train_size", train_size), ("val_size", val_size), ("test_size", test_size)]:
            if value < 0:
                raise ValueError(f"task.{name} must be >= 0, got {value}")
        self.dataset, self.seed, self.success_score = dataset, seed, success_score
        self.sizes = {"train": train_size, "validation": val_size, "test": test_size}
        self.system_prompt = system_prompt or None
        self.name = f"reasoning_gym/{dataset}"
        self._generators: dict[str, Any] = {}

    def _generator(self, split: str) -> Any:
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r}; expected one of {list(self.sizes)}")
        if split not in self._generators:
            import reasoning_gym

            self._generators[split] = reasoning_gym.create_dataset(
                self.dataset, size=max(1, self.sizes[split]), seed=self.seed + _SPLIT_OFFSET[split]
            )
        return self._generators[split]

    def load(self, split: str) -> "datasets.Dataset":
        import datasets

        gen = self._generator(split)
        rows = [
            {
                "uid": f"{self.name}/{split}/{i:06d}",
                "data_source": self.name,
                "split": split,
                "question": entry["question"],
                "answer": str(entry["answer"]),
                "metadata": json.dumps(entry.get("metadata", {}), default=str),
            }
            for i, entry in zip(range(self.sizes[split]), gen)
        ]
        return datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
            {k: [] for k in ("uid", "data_source", "split", "question", "answer", "metadata")})

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": row["question"]}]

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        pred = extract_tagged_answer(completion)
        if pred is None:
            return Score(0.0, None, "Your response did not contain an <answer>...</answer> tag.", False)
        entry = {"question": row["question"], "answer": row["answer"], "metadata": json.loads(row["metadata"])}
        value = float(self._generator(row.get("split", "train")).score_answer(answer=pred, entry=entry))
        ok = value >= self.success_score
        return Score(float(ok), pred, "" if ok else "Your answer is incorrect.", True)

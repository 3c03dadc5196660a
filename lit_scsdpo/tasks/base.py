"""The task protocol: where questions come from and how a completion is scored.

A *task* is the environment of the RL loop. It has three jobs:

* :meth:`Task.load` returns one split (``"train"``, ``"validation"`` or ``"test"``) as a
  ``datasets.Dataset``. Every row has at least

  - ``uid`` (str): unique over all splits of the task; used to group the ``G`` rollouts of
    a question and to key per-question statistics,
  - ``data_source`` (str): the bucket under which metrics are logged (e.g. a sub-benchmark
    or a difficulty level, ``"arithmetic/L3"``),
  - ``answer`` (str): the gold answer, used only by :meth:`Task.score`.

  Tasks may add further columns (``question``, ``level``, ...); consumers must ignore the
  ones they do not know.
* :meth:`Task.messages` turns a row into chat messages (an optional ``system`` message, then
  one ``user`` message) that the policy's chat template renders into a prompt.
* :meth:`Task.score` verifies a completion and returns a :class:`Score`: a *binary* reward
  (1.0 correct, 0.0 otherwise), the extracted prediction (used for majority voting), whether
  the completion had the expected answer format, and environment feedback text. SDPO puts the
  feedback of a failed attempt into the teacher's context, so feedback must never leak the
  gold answer when the task is meant to be solved rather than copied.

:class:`Task` is a :class:`typing.Protocol` (``runtime_checkable``): any object with these
members is a task, no inheritance needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - typing only; keeps `import lit_scsdpo.tasks` light
    import datasets

__all__ = ["Score", "Task", "extract_tagged_answer"]


@dataclass(frozen=True)
class Score:
    """The verdict on one completion."""

    reward: float
    """1.0 if the completion is correct, 0.0 otherwise (binary, verifiable)."""
    pred: Optional[str]
    """The extracted answer string (used for majority voting); ``None`` when none was found."""
    feedback: str = ""
    """Environment feedback text (for arithmetic it never contains the gold answer)."""
    format_ok: bool = False
    """True iff the completion has the expected answer format."""


@runtime_checkable
class Task(Protocol):
    """A verifiable question-answering environment (see the module docstring)."""

    name: str

    def load(self, split: str) -> "datasets.Dataset":
        """Return ``split`` (``"train"``, ``"validation"`` or ``"test"``) as a dataset whose
        rows have at least ``uid`` (unique str), ``data_source`` (str) and ``answer`` (str)."""
        ...

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for ``row``: an optional system message, then the user message."""
        ...

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        """Verify ``completion`` (the decoded response only) against ``row``."""
        ...


def extract_tagged_answer(
    text: str, open: str = "<answer>", close: str = "</answer>"
) -> Optional[str]:
    """The stripped text between the *last* ``open`` tag and the ``close`` tag after it.

    This is the SDPO multiple-choice rule: a model may mention the tag while reasoning, the
    final occurrence is its answer. Returns ``None`` when ``text`` has no ``open`` tag or no
    ``close`` tag follows the last one.

    >>> extract_tagged_answer("<answer>1</answer> no, <answer> 2 </answer>")
    '2'
    >>> extract_tagged_answer("<answer>3") is None
    True
    """
    start = text.rfind(open)
    if start < 0:
        return None
    start += len(open)
    end = text.find(close, start)
    if end < 0:
        return None
    return text[start:end].strip()

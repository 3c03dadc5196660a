"""The paper's benchmarks from local JSON-lines files (SDPO's data format, paper-spec §1.9).

Rows have ``idx``, ``prompt`` (the user message), ``system`` (a system prompt, or ``None`` /
``"None"``), ``answer``, ``kind`` and ``dataset``. Files are read with the ``datasets`` JSON
loader; ``validation`` is the test file, as in the papers (validation = the benchmark's test
split, evaluated during training).

* :class:`MultipleChoiceTask`: SciKnowEval L3 MCQ (Biology / Chemistry / Material / Physics).
  Reward 1 iff the text after the last ``<answer>`` (up to the following ``</answer>``),
  stripped, equals the gold letter; ``pred`` is that text. No feedback (as the paper's reward).
* :class:`ToolUseTask`: ToolAlpaca. Reward 1 iff the multiset of ``Action:`` names equals
  the gold one **and** the merged dict of all ``Action Input:`` JSON objects equals the merged
  gold inputs; ``pred`` is ``"Actions: [...], Inputs: {...}"``. Its feedback names the
  mismatch and therefore contains the gold answer: keep ``include_feedback`` off (pitfalls 14).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

from .base import Score, extract_tagged_answer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import datasets

_SPLITS = ("train", "validation", "test")


class _JsonLinesTask:
    """Shared loading: ``{split}.json`` files of one benchmark, uid and data_source added."""

    def __init__(self, name: str, train_file: Optional[str], test_file: str) -> None:
        self.name = name
        self.files = {"train": train_file, "validation": test_file, "test": test_file}

    def load(self, split: str) -> "datasets.Dataset":
        import datasets

        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
        path = self.files[split]
        if path is None:
            raise ValueError(f"task {self.name!r} has no {split} file")
        try:
            ds = datasets.load_dataset("json", data_files=path, split="train")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"task {self.name!r}: {split} file not found: {path}") from exc
        for column in ("prompt", "answer"):
            if column not in ds.column_names:
                raise ValueError(f"task {self.name!r}: {path} has no {column!r} column")
        keep = [c for c in ds.column_names if c not in ("embedding", "description", "tests")]
        ds = ds.select_columns(keep)
        return ds.map(lambda row, i: {"uid": f"{self.name}/{split}/{row.get('idx', i)}",
                                      "data_source": self.name}, with_indices=True)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        system = row.get("system")
        msgs = [] if system in (None, "", "None") else [{"role": "system", "content": system}]
        return msgs + [{"role": "user", "content": row["prompt"]}]


class MultipleChoiceTask(_JsonLinesTask):
    """SciKnowEval-style multiple choice (gold = a letter).

    Args:
        name: the data source name, e.g. ``sciknoweval/chemistry``.
        train_file: JSON-lines training file (None: evaluation only).
        test_file: JSON-lines test file (also the validation split).
    """

    def __init__(self, name: str, test_file: str, train_file: Optional[str] = None) -> None:
        super().__init__(name, train_file, test_file)

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        pred = extract_tagged_answer(completion)
        if pred is None:
            return Score(0.0, None, "", False)
        return Score(float(pred == str(row["answer"]).strip()), pred, "", True)


_ACTION = re.compile(r"^\s*Action\s*:\s*(.+?)\s*$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"Action\s+Input\s*:\s*", re.MULTILINE)


def parse_tool_calls(text: str) -> tuple[list[str], dict[str, Any], bool]:
    """``(action names, merged inputs, all inputs parsed)`` from a ReAct-style completion."""
    actions = [a for a in _ACTION.findall(text)]
    merged: dict[str, Any] = {}
    ok = True
    decoder = json.JSONDecoder()
    for m in _ACTION_INPUT.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, m.end())
        except json.JSONDecodeError:
            ok = False
            continue
        if isinstance(value, dict):
            merged.update(value)
        else:
            ok = False
    return actions, merged, ok


class ToolUseTask(_JsonLinesTask):
    """ToolAlpaca-style tool calls (gold = a JSON list of ``{"Action", "Action_Input"}``).

    Args:
        name: the data source name (default ``tooluse``).
        test_file: JSON-lines test file (also the validation split).
        train_file: JSON-lines training file (not shipped with the shared data).
    """

    def __init__(self, test_file: str, train_file: Optional[str] = None, name: str = "tooluse") -> None:
        super().__init__(name, train_file, test_file)

    @staticmethod
    def gold(row: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        calls = json.loads(row["answer"]) if isinstance(row["answer"], str) else row["answer"]
        merged: dict[str, Any] = {}
        for call in calls:
            inputs = call.get("Action_Input", "{}")
            merged.update(json.loads(inputs) if isinstance(inputs, str) else inputs)
        return [c["Action"] for c in calls], merged

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        actions, inputs, parsed = parse_tool_calls(completion)
        if not actions:
            return Score(0.0, None, "Your response did not contain an 'Action:' line.", False)
        pred = f"Actions: {json.dumps(sorted(actions))}, Inputs: {json.dumps(inputs, sort_keys=True)}"
        gold_actions, gold_inputs = self.gold(row)
        same_actions = Counter(actions) == Counter(gold_actions)
        same_inputs = inputs == gold_inputs
        if same_actions and same_inputs:
            return Score(1.0, pred, "", parsed)
        why = []
        if not same_actions:
            why.append(f"expected actions {sorted(gold_actions)}, got {sorted(actions)}")
        if not same_inputs:
            why.append(f"expected inputs {json.dumps(gold_inputs, sort_keys=True)}, got "
                       f"{json.dumps(inputs, sort_keys=True)}")
        return Score(0.0, pred, "; ".join(why), parsed)

"""The paper's benchmarks from local JSON-lines files (SDPO's data format, paper-spec §1.9).

Rows have ``idx``, ``prompt`` (the user message), ``system`` (a system prompt, or ``None`` /
``"None"``), ``answer``, ``kind`` and ``dataset``. Files are read with the ``datasets`` JSON
loader; ``validation`` is the test file, as in the papers (validation = the benchmark's test
split, evaluated during training). ``load`` checks every row (non-empty ``prompt``, a usable
``answer``, unique ``idx``) and stops on the first bad one with a one-line ``ValueError``.

* :class:`MultipleChoiceTask`: SciKnowEval L3 MCQ (Biology / Chemistry / Material / Physics).
  Reward 1 iff the text after the last ``<answer>`` (up to the following ``</answer>``),
  stripped, equals the gold letter; ``pred`` is that text. No feedback (as the paper's reward).
* :class:`ToolUseTask`: ToolAlpaca. Reward 1 iff the multiset of ``Action:`` names equals
  the gold one **and** the merged dict of all ``Action Input:`` JSON objects equals the merged
  gold inputs; ``pred`` is ``"Actions: [...], Inputs: {...}"``. Its feedback names the
  mismatch and therefore contains the gold answer: keep ``include_feedback`` off (pitfalls 14).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

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
        """``split`` read with the ``datasets`` JSON loader, every row checked (:meth:`check_row`).

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: (one line naming the task, the file and, for a bad row, its 0-based row
                index, 1-based line and field) the file is empty, not JSON lines, or a row is
                unusable. Raised here, before training, rather than mid-run in the chat
                template or the verifier.
        """
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
        except Exception as exc:  # empty: StopIteration/ValueError; bad JSON: DatasetGenerationError
            raise ValueError(f"task {self.name!r}: {path} {_why_unreadable(path, exc)}") from exc
        drop = ("embedding", "description", "tests", "uid", "data_source")
        ds = ds.select_columns([c for c in ds.column_names if c not in drop])
        try:  # decode every value now, so that no row fails later in a consumer
            rows = list(ds)  # the decoding path consumers use (to_list() skips feature decoding)
        except Exception as exc:  # Arrow structs with odd field names ("", "\x00", duplicates)
            raise ValueError(f"task {self.name!r}: {path} could not be read by the datasets JSON "
                             f"loader: {_one_line(exc)}") from exc
        validate_rows(rows, path, self.name, self.check_row)
        uids = [f"{self.name}/{split}/{_row_key(row, i)}" for i, row in enumerate(rows)]
        return ds.add_column("uid", uids).add_column("data_source", [self.name] * len(rows))

    def check_row(self, row: dict[str, Any]) -> Optional[str]:
        """What is wrong with ``row`` (None: usable). Subclasses add their ``answer`` check."""
        system, idx = row.get("system"), row.get("idx")
        if system is not None and not isinstance(system, str):
            return f"field 'system' must be a string or null, got {type(system).__name__}"
        if isinstance(idx, (list, dict)):  # the uid suffix
            return f"field 'idx' must be a number or string, got {type(idx).__name__}"
        return _need_text(row, "prompt", "the user message")

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        system = row.get("system")
        msgs = [] if system in (None, "", "None") else [{"role": "system", "content": system}]
        return msgs + [{"role": "user", "content": row["prompt"]}]


def _row_key(row: dict[str, Any], index: int) -> Any:
    """The uid suffix: the row's ``idx``, else its index (Arrow fills an absent ``idx`` with None)."""
    idx = row.get("idx")
    return index if idx is None else idx


def _need_text(row: dict[str, Any], field: str, what: str) -> Optional[str]:
    value = row.get(field)
    if isinstance(value, str) and value.strip():
        return None
    if value is None or isinstance(value, str):
        return f"field {field!r} is missing or empty (expected {what}, a non-empty string)"
    return f"field {field!r} must be a non-empty string ({what}), got {type(value).__name__}"


def _one_line(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _why_unreadable(path: str, exc: BaseException) -> str:
    """Why the ``datasets`` loader failed on ``path``, from a cheap line-by-line re-read."""
    rows = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.decode("utf-8"))
            except json.JSONDecodeError as err:
                return f"is not JSON lines: {err.msg} at column {err.colno} (line {line_no})"
            except (ValueError, RecursionError) as err:  # bad UTF-8, huge ints, deep nesting
                return f"is not JSON lines: {_one_line(err)} (line {line_no})"
            if not isinstance(value, dict):
                return f"is not JSON lines: expected a JSON object, got {type(value).__name__} (line {line_no})"
            rows += 1
    if rows == 0:
        return "is empty (no rows)"
    return f"could not be read by the datasets JSON loader: {_one_line(exc.__cause__ or exc)}"


def _line_of(path: str, index: int) -> Optional[int]:
    """1-based line of the ``index``-th row (the loader skips blank lines); None if not found."""
    with open(path, "rb") as f:
        rows = (n for n, line in enumerate(f, 1) if line.strip())
        return next(itertools.islice(rows, index, None), None)


def validate_rows(rows: Iterable[dict[str, Any]], path: str, task: str,
                  check: Callable[[dict[str, Any]], Optional[str]]) -> None:
    """Raise a one-line ``ValueError`` naming ``task``, ``path``, the row and the field at the
    first of ``rows`` (read from ``path``) that ``check`` rejects, or that repeats an earlier
    row's uid (``idx``)."""
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        problem = check(row)
        key = str(_row_key(row, i))
        if problem is None and key in seen:
            problem = f"field 'idx' value {key!r} repeats row {seen[key]} (uids must be unique)"
        if problem is not None:
            line = _line_of(path, i)
            where = f"row {i} (0-based" + (f", line {line})" if line else ")")
            raise ValueError(f"task {task!r}: {path} {where}: {problem}")
        seen[key] = i


class MultipleChoiceTask(_JsonLinesTask):
    """SciKnowEval-style multiple choice (gold = a letter).

    Args:
        name: the data source name, e.g. ``sciknoweval/chemistry``.
        train_file: JSON-lines training file (None: evaluation only).
        test_file: JSON-lines test file (also the validation split).
    """

    def __init__(self, name: str, test_file: str, train_file: Optional[str] = None) -> None:
        super().__init__(name, train_file, test_file)

    def check_row(self, row: dict[str, Any]) -> Optional[str]:
        return super().check_row(row) or _need_text(row, "answer", "the gold letter")

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        pred = extract_tagged_answer(completion)
        if pred is None:
            return Score(0.0, None, "", False)
        return Score(float(pred == str(row["answer"]).strip()), pred, "", True)


# Linear-time patterns: `[^\S\n]` (whitespace but not newline) keeps a match on its line,
# and the name is stripped in Python; `\s*...(.+?)\s*$` backtracked quadratically.
_ACTION = re.compile(r"^[^\S\n]*Action[^\S\n]*:(.*)$", re.MULTILINE)
_ACTION_INPUT = re.compile(r"Action\s+Input\s*:\s*")
_MAX_DEPTH = 64  # of an Action Input; deeper values could hit the recursion limit in json.dumps


def _nesting(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: the value may be ~1000 levels deep)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            depth = max(depth, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return depth


def parse_tool_calls(text: str) -> tuple[list[str], dict[str, Any], bool]:
    """``(action names, merged inputs, all inputs parsed)`` from a ReAct-style completion.

    An ``Action Input:`` that is not a JSON object (bad JSON, nested deeper than 64 levels,
    integers over CPython's 4300-digit limit) counts as unparsed; it never raises.
    """
    actions = [name for name in map(str.strip, _ACTION.findall(text)) if name]
    merged: dict[str, Any] = {}
    ok = True
    decoder = json.JSONDecoder()
    matches = list(_ACTION_INPUT.finditer(text))
    for m, after in zip(matches, matches[1:] + [None]):
        # decode within this input's own segment: a JSONDecodeError costs O(its offset) (it
        # counts lines), which made many failing inputs in one long text quadratic
        segment = text[m.end():after.start() if after else len(text)]
        try:
            value, _ = decoder.raw_decode(segment)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
            ok = False
            continue
        if isinstance(value, dict) and _nesting(value) <= _MAX_DEPTH:
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
        """``(action names, merged inputs)`` of ``row["answer"]``, a JSON list of
        ``{"Action": name, "Action_Input": JSON object}``; ValueError saying why otherwise."""
        calls = row.get("answer")
        try:
            if isinstance(calls, str):
                calls = json.loads(calls)
            if not isinstance(calls, list) or not calls:
                raise ValueError("expected a non-empty JSON list of calls")
            merged: dict[str, Any] = {}
            for k, call in enumerate(calls):
                if not isinstance(call, dict) or not isinstance(call.get("Action"), str) or not call["Action"]:
                    raise ValueError(f"call {k} has no 'Action' name")
                inputs = call.get("Action_Input")
                if inputs is None:  # absent (Arrow fills an absent struct field with None)
                    inputs = {}
                elif isinstance(inputs, str):
                    inputs = json.loads(inputs)
                if not isinstance(inputs, dict):
                    raise ValueError(f"call {k}: 'Action_Input' is not a JSON object")
                merged.update(inputs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        return [c["Action"] for c in calls], merged

    def check_row(self, row: dict[str, Any]) -> Optional[str]:
        problem = super().check_row(row)
        if problem is None and row.get("answer") in (None, ""):
            problem = "field 'answer' is missing or empty (expected the gold calls as a JSON list)"
        if problem is None:
            try:
                self.gold(row)
            except ValueError as exc:
                problem = (f"field 'answer' is not a JSON list of {{\"Action\", \"Action_Input\"}} "
                           f"objects: {_one_line(exc)}")
        return problem

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

"""The paper's benchmarks: SciKnowEval multiple choice and ToolAlpaca tool use.

Rows are in SDPO's format (docs/specification.md §1.9): ``idx``, ``prompt`` (the user
message), ``system`` (a system prompt, or ``None`` / ``"None"``), ``answer``, ``kind``,
``dataset``. They come from

* local JSON-lines or parquet files (:class:`MultipleChoiceTask`, :class:`ToolUseTask`), read
  with the ``datasets`` loaders; ``validation`` is the test file, as in the papers;
* the hub (:class:`SciKnowEvalTask`): ``hicai-zju/SciKnowEval`` read with
  ``datasets.load_dataset``, filtered and split exactly as SDPO's data scripts do;
* a copy of the SDPO code release's ``datasets/`` folder (``data_dir`` of
  :class:`SciKnowEvalTask` and :class:`ToolUseTask`): ``sciknoweval/<domain>/{train,test}.json``
  and ``tooluse/{train,test}.json``. ToolAlpaca has no hub copy in that format; this folder is its source.

A missing file is one line naming the file and where to get it (``FileNotFoundError``).

Every row is checked on load; the first bad one stops with a one-line ``ValueError`` naming the
task, the file (or hub id), the row and the field.

The rewards follow the official SDPO reward code (``lasgroup/SDPO``,
``verl/utils/reward_score/feedback/mcq.py`` and ``tooluse.py``) rule for rule, lenient parts
included; each function below says which rule it implements. Where those rules fail on valid
input (tool use), a corrected parser is an option, never the default. ``docs/tasks.md`` states
the rules and where they came from.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Optional, Sequence

from .base import Score, extract_tagged_answer

if TYPE_CHECKING:  # pragma: no cover - typing only
    import datasets

_SPLITS = ("train", "validation", "test")
_DROP = ("embedding", "description", "tests", "uid", "data_source")  # unused or ours to add
#: The SDPO code release, whose ``datasets/`` folder holds the papers' files in SDPO's format.
SDPO_RELEASE = "https://github.com/lasgroup/SDPO"


# ------------------------------------------------------------------ reading files
class _FileTask:
    """Shared loading: one benchmark's ``{split}`` files (JSON lines or parquet)."""

    #: How to get a missing file: the end of the one-line ``FileNotFoundError``.
    missing_hint = "paths are relative to the working directory"

    def __init__(self, name: str, train_file: Optional[str], test_file: str) -> None:
        self.name = name
        self.files = {"train": train_file, "validation": test_file, "test": test_file}

    def load(self, split: str) -> "datasets.Dataset":
        """``split`` read with the ``datasets`` JSON (or, for ``*.parquet``, parquet) loader,
        every row checked (:meth:`check_row`).

        Raises:
            FileNotFoundError: (one line naming the task, the file and how to get it) the file
                does not exist.
            ValueError: (one line naming the task, the file and, for a bad row, its 0-based row
                index, for JSON its 1-based line, and the field) the file is empty, unreadable,
                or a row is unusable. Raised here, before training, rather than mid-run.
        """
        _check_split(split)
        path = self.files[split]
        if path is None:
            raise ValueError(f"task {self.name!r} has no {split} file")
        ds, rows = _read(self.name, path, self.missing_hint)
        line_of = None if _is_parquet(path) else (lambda i: _line_of(path, i))
        validate_rows(rows, path, self.name, self.check_row, line_of)
        return _with_uids(ds, self.name, split, rows)

    def check_row(self, row: dict[str, Any]) -> Optional[str]:
        """What is wrong with ``row`` (None: usable). Subclasses add their ``answer`` check."""
        system, idx = row.get("system"), row.get("idx")
        if system is not None and not isinstance(system, str):
            return f"field 'system' must be a string or null, got {type(system).__name__}"
        if isinstance(idx, (list, dict)):  # the uid suffix
            return f"field 'idx' must be a number or string, got {type(idx).__name__}"
        if isinstance(row.get("prompt"), list) and "reward_model" in row:
            return ("field 'prompt' is a chat (a verl-preprocessed file?); expected SDPO rows with "
                    "the user message as a string: use the train.json/test.json it was made from")
        return _need_text(row, "prompt", "the user message")

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        system = row.get("system")
        msgs = [] if system in (None, "", "None") else [{"role": "system", "content": system}]
        return msgs + [{"role": "user", "content": row["prompt"]}]


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")


def _is_parquet(path: str) -> bool:
    return str(path).endswith(".parquet")


def _read(task: str, path: str, hint: str) -> tuple["datasets.Dataset", list[dict[str, Any]]]:
    """``path`` as a dataset (unused columns dropped) and its decoded rows; ``hint`` ends the
    message when the file does not exist."""
    import datasets

    kind = "parquet" if _is_parquet(path) else "json"
    missing = FileNotFoundError(f"task {task!r}: file not found: {path} ({hint})")
    if "://" not in str(path) and not any(c in str(path) for c in "*?[") and not os.path.exists(path):
        raise missing  # a plain local path: no need to ask the loader
    try:
        ds = datasets.load_dataset(kind, data_files=path, split="train")
    except FileNotFoundError as exc:
        raise missing from exc
    except Exception as exc:  # empty: StopIteration/ValueError; bad JSON: DatasetGenerationError
        why = (_why_unreadable if kind == "json" else _why_unreadable_parquet)(path, exc)
        raise ValueError(f"task {task!r}: {path} {why}") from exc
    ds = ds.select_columns([c for c in ds.column_names if c not in _DROP])
    try:  # decode every value now, so that no row fails later in a consumer
        rows = list(ds)  # the decoding path consumers use (to_list() skips feature decoding)
    except Exception as exc:  # Arrow structs with odd field names ("", "\x00", duplicates)
        raise ValueError(f"task {task!r}: {path} could not be read by the datasets {kind} "
                         f"loader: {_one_line(exc)}") from exc
    if not rows:
        raise ValueError(f"task {task!r}: {path} is empty (no rows)")
    return ds, rows


def _with_uids(ds: "datasets.Dataset", task: str, split: str, rows: list[dict[str, Any]]) -> "datasets.Dataset":
    uids = [f"{task}/{split}/{_row_key(row, i)}" for i, row in enumerate(rows)]
    return ds.add_column("uid", uids).add_column("data_source", [task] * len(rows))


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
    """Why the ``datasets`` JSON loader failed on ``path``, from a cheap line-by-line re-read."""
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


def _why_unreadable_parquet(path: str, exc: BaseException) -> str:
    import pyarrow.parquet as pq

    try:
        if pq.read_metadata(path).num_rows == 0:
            return "is empty (no rows)"
    except Exception:  # not parquet at all: the loader's own message says so
        pass
    return f"could not be read by the datasets parquet loader: {_one_line(exc.__cause__ or exc)}"


def _line_of(path: str, index: int) -> Optional[int]:
    """1-based line of the ``index``-th row (the loader skips blank lines); None if not found."""
    with open(path, "rb") as f:
        rows = (n for n, line in enumerate(f, 1) if line.strip())
        return next(itertools.islice(rows, index, None), None)


def validate_rows(rows: Iterable[dict[str, Any]], path: str, task: str,
                  check: Callable[[dict[str, Any]], Optional[str]],
                  line_of: Optional[Callable[[int], Optional[int]]] = None) -> None:
    """Raise a one-line ``ValueError`` naming ``task``, ``path``, the row (and, given
    ``line_of``, its line) and the field at the first of ``rows`` that ``check`` rejects, or
    that repeats an earlier row's uid (``idx``)."""
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        problem = check(row)
        key = str(_row_key(row, i))
        if problem is None and key in seen:
            problem = f"field 'idx' value {key!r} repeats row {seen[key]} (uids must be unique)"
        if problem is not None:
            line = line_of(i) if line_of else None
            where = f"row {i} (0-based" + (f", line {line})" if line else ")")
            raise ValueError(f"task {task!r}: {path} {where}: {problem}")
        seen[key] = i


# ------------------------------------------------------------------ multiple choice (SciKnowEval)
def official_mcq_answer(text: str) -> str:
    """SDPO ``mcq.extract_xml_answer``: the text after the LAST ``<answer>`` (all of ``text``
    when there is none), cut at the first ``</answer>`` after it (kept whole when there is
    none), stripped. A bare ``B`` gives ``"B"``; ``<answer>B`` gives ``"B"``; ``B</answer>``
    gives ``"B"``. Linear: ``rfind``/``find`` instead of splitting copies."""
    start = text.rfind("<answer>")
    start = 0 if start < 0 else start + len("<answer>")
    end = text.find("</answer>", start)
    return text[start:end if end >= 0 else len(text)].strip()


_MCQ_FORMAT = re.compile(r"<answer>\s*[ABCD]\s*</answer>$")


def official_mcq_format(text: str) -> bool:
    """SDPO ``mcq.is_correct_format``: the text ends (``$``: optionally before one final
    newline) with ``<answer>``, one of the letters A-D (whitespace around it allowed) and
    ``</answer>``."""
    return _MCQ_FORMAT.search(text) is not None


class MultipleChoiceTask(_FileTask):
    """SciKnowEval-style multiple choice (gold = a letter), from local files.

    Reward (SDPO ``mcq.compute_score``): 1 iff :func:`official_mcq_answer` equals the gold
    ``answer`` exactly (case-sensitive, no normalisation); ``pred`` is that text (never None);
    ``format_ok`` is :func:`official_mcq_format`; no feedback.

    Args:
        name: the data source name, e.g. ``sciknoweval/chemistry``.
        test_file: JSON-lines (or ``.parquet``) test file (also the validation split).
        train_file: training file (None: evaluation only).
        require_tags: False (default): the official rule above. True: the stricter rule this
            package used before, where text without an ``<answer>`` tag followed by a
            ``</answer>`` scores 0 with ``pred`` None.
    """

    missing_hint = ("paths are relative to the working directory; SciKnowEvalTask reads the papers' "
                    "SciKnowEval rows from the hub")

    def __init__(self, name: str, test_file: str, train_file: Optional[str] = None,
                 require_tags: bool = False) -> None:
        super().__init__(name, train_file, test_file)
        self.require_tags = require_tags

    def check_row(self, row: dict[str, Any]) -> Optional[str]:
        problem = super().check_row(row) or _need_text(row, "answer", "the gold letter")
        if problem is None and row["answer"] != row["answer"].strip():
            problem = (f"field 'answer' {row['answer']!r} has surrounding whitespace (it is "
                       f"compared exactly, so no answer could match)")
        return problem

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        if self.require_tags and extract_tagged_answer(completion) is None:
            return Score(0.0, None, "", False)
        pred = official_mcq_answer(completion)
        return Score(float(pred == row["answer"]), pred, "", official_mcq_format(completion))


# ------------------------------------------------------------------ SciKnowEval from the hub
#: The system prompt of SDPO's ``data/format/sciknoweval.py`` (paper Listing 1).
SCIKNOWEVAL_SYSTEM_PROMPT = """
Given a question and four options, please select the right answer. Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>

For the answer, only output the letter corresponding to the correct option (A, B, C, or D), and nothing else. Do not restate the answer text. For example, if the answer is "A", just output:
<answer>
A
</answer>
"""
#: Our domain names -> the hub's ``domain`` values.
SCIKNOWEVAL_DOMAINS = {"biology": "Biology", "chemistry": "Chemistry", "material": "Material", "physics": "Physics"}


class SciKnowEvalTask(MultipleChoiceTask):
    """SciKnowEval L3 MCQ of one domain, from the hub as SDPO's data scripts build it, or from
    a copy of the SDPO release's files.

    ``datasets.load_dataset(hub_id, split="test")``; keep the rows whose ``domain`` is the
    domain, ``type`` one of ``types`` and ``details.level`` one of ``levels``, in hub order;
    each becomes an SDPO row (``idx`` = its position among the kept rows; ``prompt`` =
    ``question + "\\n\\n" + "A: ...\\nB: ..." + "\\nPlease reason step by step."``; ``system`` =
    :data:`SCIKNOWEVAL_SYSTEM_PROMPT`; ``answer`` = ``answerKey``); then
    ``train_test_split(test_size, seed)`` gives train and test (= validation). With the
    defaults this reproduces the SDPO files row for row. Scoring as :class:`MultipleChoiceTask`.

    With ``data_dir`` the hub is not used: the rows are read from
    ``<data_dir>/sciknoweval/<domain>/train.json`` and ``test.json``, the layout of the
    ``datasets/`` folder of the SDPO code release (:data:`SDPO_RELEASE`), and checked as
    :class:`MultipleChoiceTask` checks them; ``hub_id``, ``revision``, ``levels``, ``types``,
    ``test_size`` and ``seed`` are then unused.

    Args:
        domain: ``biology``, ``chemistry``, ``material`` or ``physics`` (any case).
        hub_id: a hub dataset id, or a local folder laid out like it (``data/*test*.jsonl``).
        revision: hub revision (commit) to pin; None: the default branch.
        levels, types, test_size, seed: the paper's filter and split (docs/specification.md §1.9).
        name: data source name (default ``sciknoweval/<domain>``).
        require_tags: see :class:`MultipleChoiceTask`.
        data_dir: a folder laid out like the SDPO release's ``datasets/`` (relative to the
            working directory); None (default): the hub.
    """

    def __init__(self, domain: str, hub_id: str = "hicai-zju/SciKnowEval", revision: Optional[str] = None,
                 levels: Sequence[str] = ("L3",), types: Sequence[str] = ("mcq-4-choices", "mcq-2-choices"),
                 test_size: float = 0.1, seed: int = 42, name: Optional[str] = None,
                 require_tags: bool = False, data_dir: Optional[str] = None) -> None:
        if str(domain).lower() not in SCIKNOWEVAL_DOMAINS:
            raise ValueError(f"domain: expected one of {sorted(SCIKNOWEVAL_DOMAINS)}, got {domain!r}")
        key = domain.lower()
        folder = None if data_dir is None else os.path.join(str(data_dir), "sciknoweval", key)
        test_file, train_file = (hub_id, hub_id) if folder is None else \
            (os.path.join(folder, "test.json"), os.path.join(folder, "train.json"))
        super().__init__(name or f"sciknoweval/{key}", test_file=test_file, train_file=train_file,
                         require_tags=require_tags)
        self.domain, self.hub_id, self.revision = SCIKNOWEVAL_DOMAINS[key], hub_id, revision
        self.levels, self.types, self.test_size, self.seed = list(levels), list(types), test_size, seed
        self.data_dir = data_dir
        self.missing_hint = (f"data_dir must hold sciknoweval/{key}/train.json and test.json, as the datasets "
                             f"folder of the SDPO code release {SDPO_RELEASE} does; leave data_dir unset to "
                             f"read {hub_id} from the hub; see docs/reproducing.md")
        self._splits: Optional[dict[str, "datasets.Dataset"]] = None

    def load(self, split: str) -> "datasets.Dataset":
        """``split`` of the filtered rows (hub read once per task object), or of the files in
        ``data_dir``.

        Raises:
            FileNotFoundError: (one line naming the file and how to get it) with ``data_dir``,
                a file is missing.
            ValueError: (one line) the hub dataset cannot be loaded, lacks a column, a kept row
                has a missing or mistyped field (named with its row index in the hub split),
                or no row passes the filter; with ``data_dir``, as :meth:`MultipleChoiceTask.load`.
        """
        if self.data_dir is not None:
            return super().load(split)
        _check_split(split)
        if self._splits is None:
            self._splits = self._build()
        ds = self._splits["train" if split == "train" else "test"]
        return _with_uids(ds, self.name, split, [{"idx": i} for i in ds["idx"]])

    def _build(self) -> dict[str, "datasets.Dataset"]:
        import datasets

        try:
            raw = datasets.load_dataset(self.hub_id, split="test", revision=self.revision)
        except Exception as exc:
            raise ValueError(f"task {self.name!r}: datasets.load_dataset({self.hub_id!r}, split='test') "
                             f"failed: {_one_line(exc)} (offline? set data_dir to a copy of the datasets "
                             f"folder of the SDPO code release {SDPO_RELEASE}; see docs/reproducing.md)") from exc
        rows = [self._sdpo_row(row, idx) for idx, row in enumerate(self._kept(raw))]
        if not rows:
            raise ValueError(f"task {self.name!r}: no row of {self.hub_id} has domain {self.domain!r}, "
                             f"type in {self.types} and details.level in {self.levels}")
        parts = datasets.Dataset.from_list(rows).train_test_split(test_size=self.test_size, seed=self.seed)
        return {split: parts[split].flatten_indices() for split in ("train", "test")}

    def _kept(self, raw: "datasets.Dataset") -> Iterable[dict[str, Any]]:
        """The rows that pass the filter, each checked (:func:`check_sciknoweval_row`)."""
        for field in ("domain", "type", "details", "question", "choices", "answerKey"):
            if field not in raw.column_names:
                raise ValueError(f"task {self.name!r}: {self.hub_id} has no column {field!r} (expected "
                                 f"SciKnowEval's question, choices, answerKey, domain, type, details)")
        for i, (domain, kind) in enumerate(zip(raw["domain"], raw["type"])):
            if domain != self.domain or kind not in self.types:
                continue
            row = raw[i]
            level = _level(row)
            if level is not None and level not in self.levels:
                continue
            problem = check_sciknoweval_row(row)
            if problem is not None:
                raise ValueError(f"task {self.name!r}: {self.hub_id} row {i} (0-based, split 'test'): {problem}")
            yield row

    @staticmethod
    def _sdpo_row(row: dict[str, Any], idx: int) -> dict[str, Any]:
        """SDPO ``data/format/sciknoweval.py`` ``format``: the hub row as an SDPO row."""
        choices = "\n".join(f"{label}: {text}" for label, text in zip(row["choices"]["label"], row["choices"]["text"]))
        return {"idx": idx, "prompt": row["question"] + "\n\n" + choices + "\nPlease reason step by step.",
                "system": SCIKNOWEVAL_SYSTEM_PROMPT, "answer": row["answerKey"], "kind": "mcq",
                "dataset": "sciknoweval"}


def _level(row: dict[str, Any]) -> Optional[str]:
    details = row.get("details")
    level = details.get("level") if isinstance(details, dict) else None
    return level if isinstance(level, str) else None


def check_sciknoweval_row(row: dict[str, Any]) -> Optional[str]:
    """What is wrong with a hub SciKnowEval row of the wanted domain, type and level (None: usable)."""
    if _level(row) is None:
        return "field 'details.level' is missing or not a string (expected the level, e.g. 'L3')"
    problem = _need_text(row, "question", "the question")
    if problem:
        return problem
    choices = row.get("choices")
    labels = choices.get("label") if isinstance(choices, dict) else None
    texts = choices.get("text") if isinstance(choices, dict) else None
    if not (isinstance(labels, list) and isinstance(texts, list) and labels and len(labels) == len(texts)
            and all(isinstance(x, str) for x in labels + texts)):
        return "field 'choices' must be {'label': [str, ...], 'text': [str, ...]} with equal, non-zero lengths"
    if row.get("answerKey") not in labels:
        return f"field 'answerKey' {row.get('answerKey')!r} is not one of the labels {labels}"
    return None


# ------------------------------------------------------------------ tool use (ToolAlpaca)
_OFFICIAL_ACTION = re.compile(r"Action:\s*(\w+)")
_JSON_ACTION = re.compile(r"Action:\s*(\S+)")
_INPUT_HEAD = re.compile(r"Action Input:\s*")
_MAX_DEPTH = 64  # of an Action Input; deeper values could hit the recursion limit in repr/json
_PARSERS = ("official", "json")
ToolParser = Literal["official", "json"]


def _nesting(value: Any) -> int:
    """Nesting depth of a decoded JSON value (iterative: the value may be ~1000 levels deep)."""
    depth, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            depth = max(depth, d)
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return depth


def _as_input(decode: Callable[[], Any]) -> Optional[dict[str, Any]]:
    """The decoded JSON object, or None when it is not one (bad JSON, not an object, nested
    deeper than 64 levels, an integer over CPython's 4300-digit limit). Never raises."""
    try:
        value = decode()
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None
    return value if isinstance(value, dict) and _nesting(value) <= _MAX_DEPTH else None


def official_input_blocks(text: str) -> Iterable[str]:
    """SDPO ``tooluse.extract_action_inputs``' blocks, ``re.findall(r'Action Input:\\s*({.*?})',
    text, re.DOTALL)``, found in linear time: after each ``Action Input:`` and whitespace, a
    block starts at a ``{`` and ends at the FIRST ``}`` after it (so a nested object or a ``}``
    inside a string cuts it short); the search goes on after that ``}``."""
    pos = 0
    while (m := _INPUT_HEAD.search(text, pos)) is not None:
        pos = m.end()
        if text.startswith("{", pos):
            close = text.find("}", pos)
            if close < 0:  # no "}" anywhere after: no later block can close either
                return
            yield text[pos:close + 1]
            pos = close + 1


def _official_inputs(text: str) -> tuple[dict[str, Any], int]:
    merged, parsed = {}, 0
    for block in official_input_blocks(text):
        value = _as_input(lambda: json.loads(block))
        if value is not None:  # the official code skips blocks json.loads rejects
            merged.update(value)
            parsed += 1
    return merged, parsed


def _json_inputs(text: str) -> tuple[dict[str, Any], int]:
    merged, parsed = {}, 0
    decoder = json.JSONDecoder()
    heads = list(_INPUT_HEAD.finditer(text))
    for m, after in zip(heads, heads[1:] + [None]):
        # decode within this input's own segment: a JSONDecodeError costs O(its offset)
        segment = text[m.end():after.start() if after else len(text)]
        value = _as_input(lambda: decoder.raw_decode(segment)[0])
        if value is not None:
            merged.update(value)
            parsed += 1
    return merged, parsed


def parse_tool_calls(text: str, parser: ToolParser = "official") -> tuple[list[str], dict[str, Any], bool]:
    """``(action names, merged inputs, every Action Input gave a JSON object)``. Never raises.

    ``parser="official"`` (SDPO ``tooluse.extract_actions`` / ``extract_action_inputs``): names
    are ``re.findall(r'Action:\\s*(\\w+)')`` anywhere in the text (``\\s*`` may cross lines; a
    name stops at the first non-word character); inputs are :func:`official_input_blocks`
    decoded with ``json.loads`` and merged with ``dict.update`` in order (a block that does not
    decode is skipped).

    ``parser="json"`` (corrected): a name is the run of non-whitespace after ``Action:``
    (``[Optional]updateUserProfile``, ``get-weather``); an input is one whole JSON value decoded
    after each ``Action Input:`` (nested objects and ``}`` in strings work); objects are merged.
    """
    if parser not in _PARSERS:
        raise ValueError(f"parser: expected one of {_PARSERS}, got {parser!r}")
    names = (_OFFICIAL_ACTION if parser == "official" else _JSON_ACTION).findall(text)
    inputs, parsed = (_official_inputs if parser == "official" else _json_inputs)(text)
    return names, inputs, parsed == text.count("Action Input:")


def official_tool_format(text: str) -> bool:
    """SDPO ``tooluse.is_correct_format``, ``re.search(r"Action:.*?\\nAction Input:.*?", text,
    re.DOTALL)``, in linear time: some ``Action:`` is followed, anywhere later, by a line that
    starts with ``Action Input:``."""
    first = text.find("Action:")
    return first >= 0 and text.find("\nAction Input:", first + len("Action:")) >= 0


class ToolUseTask(_FileTask):
    """ToolAlpaca-style tool calls (gold = a JSON list of ``{"Action", "Action_Input"}``).

    Reward (SDPO ``tooluse.compute_score``): 1 iff the multiset of action names equals the
    gold one **and** the merged input dict equals the merged gold inputs (Python ``==``: ``1``,
    ``1.0`` and ``true`` are equal), both from :func:`parse_tool_calls`. ``pred`` is
    ``f"Actions: {names}, Inputs: {inputs}"`` (Python reprs, in text order, never None);
    ``format_ok`` is :func:`official_tool_format`; the feedback names the mismatch with the
    expected calls, so it contains the gold answer: keep ``include_feedback`` off
    (docs/pitfalls.md#14).

    No hub copy in SDPO's format is known: the SDPO code release (:data:`SDPO_RELEASE`) ships
    the data in that format as ``datasets/tooluse/train.json`` (about 4,000 rows) and
    ``test.json`` (68).

    Args:
        test_file: JSON-lines (or ``.parquet``) test file (also the validation split); default
            ``<data_dir>/tooluse/test.json``.
        train_file: training file; default ``<data_dir>/tooluse/train.json`` (None without
            ``data_dir``: evaluation only).
        name: the data source name (default ``tooluse``).
        parser: ``"official"`` (default, the papers' scores) or ``"json"``, the corrected
            parser, for inputs with nested objects and names with non-word characters (2 of
            the 68 test questions cannot score 1 under the official parser; docs/tasks.md).
        data_dir: a folder laid out like the SDPO release's ``datasets/`` (relative to the
            working directory), read for the files not given.
    """

    missing_hint = (f"ToolAlpaca in SDPO's format is datasets/tooluse/train.json and test.json of the "
                    f"SDPO code release {SDPO_RELEASE}: set data_dir (--data.task.init_args.data_dir) "
                    f"to that datasets folder or a copy of it; see docs/reproducing.md")

    def __init__(self, test_file: Optional[str] = None, train_file: Optional[str] = None, name: str = "tooluse",
                 parser: ToolParser = "official", data_dir: Optional[str] = None) -> None:
        if parser not in _PARSERS:
            raise ValueError(f"parser: expected one of {_PARSERS}, got {parser!r}")
        if data_dir is not None:
            folder = os.path.join(str(data_dir), "tooluse")
            test_file = test_file or os.path.join(folder, "test.json")
            train_file = train_file or os.path.join(folder, "train.json")
        if test_file is None:
            raise ValueError("ToolUseTask: give test_file or data_dir (a folder with tooluse/test.json)")
        super().__init__(name, train_file, test_file)
        self.parser, self.data_dir = parser, data_dir

    @staticmethod
    def gold(row: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        """``(action names, merged inputs)`` of ``row["answer"]``, a JSON list of
        ``{"Action": name, "Action_Input": JSON object}`` (SDPO merges the inputs in order,
        skipping empty ones); ValueError saying why otherwise."""
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
        actions, inputs, _ = parse_tool_calls(completion, self.parser)
        gold_actions, gold_inputs = self.gold(row)
        pred = f"Actions: {actions!r}, Inputs: {inputs!r}"
        why = []
        if Counter(actions) != Counter(gold_actions):
            why.append(f"Actions mismatch: predicted {actions!r}, expected {gold_actions!r}")
        if inputs != gold_inputs:
            why.append(f"Action inputs mismatch: predicted {inputs!r}, expected {gold_inputs!r}")
        return Score(0.0 if why else 1.0, pred, "; ".join(why), official_tool_format(completion))

"""Bad task inputs fail early, in the constructor or in ``load()``, with one clear line."""

import json

import pytest

from lit_scsdpo.tasks import ArithmeticTask, MultipleChoiceTask, ToolUseTask
from lit_scsdpo.tasks.files import parse_tool_calls

MCQ = {"idx": 0, "prompt": "Which? A: x B: y", "system": "Answer in <answer></answer>.", "answer": "B"}
CALLS = json.dumps([{"Action": "getFacts", "Action_Input": '{"limit": 3}'}])
TOOL = {"idx": 0, "prompt": "Use the tools.", "system": "None", "answer": CALLS}


def write(tmp_path, rows, name="test.json"):
    """Rows as JSON lines (dicts are dumped, strings written as they are)."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def rows_with(base, bad, n=3, at=2):
    """``n`` good rows (idx 0..n-1) with row ``at`` replaced by ``base`` updated with ``bad``
    (a value of ``...`` deletes the field)."""
    rows = [{**base, "idx": i} for i in range(n)]
    rows[at] = {k: v for k, v in {**rows[at], **bad}.items() if v is not ...}
    return rows


def load_error(task, split="test"):
    with pytest.raises(ValueError) as info:
        task.load(split)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"task {task.name!r}: "), message
    return message


def mcq(path):
    return MultipleChoiceTask("sciknoweval/chemistry", test_file=path)


@pytest.mark.parametrize("bad", [{"answer": ...}, {"answer": None}, {"answer": ""}, {"answer": "  "}])
def test_mcq_missing_or_empty_answer(tmp_path, bad):
    path = write(tmp_path, rows_with(MCQ, bad))
    message = load_error(mcq(path))
    assert f"{path} row 2 (0-based, line 3): field 'answer' is missing or empty" in message


def test_mcq_answer_not_a_string(tmp_path):
    path = write(tmp_path, rows_with(MCQ, {"answer": ["B"]}))
    assert "row 2 (0-based, line 3): field 'answer' must be a non-empty string" in load_error(mcq(path))


@pytest.mark.parametrize("bad,what", [({"prompt": ...}, "is missing or empty"), ({"prompt": ""}, "is missing or empty"),
                                      ({"prompt": 7}, "must be a non-empty string (the user message), got int")])
def test_missing_or_bad_prompt(tmp_path, bad, what):
    path = write(tmp_path, rows_with(MCQ, bad))
    assert f"{path} row 2 (0-based, line 3): field 'prompt' {what}" in load_error(mcq(path))


def test_prompt_column_absent_names_first_row(tmp_path):
    path = write(tmp_path, [{"idx": 0, "answer": "A"}])
    assert f"{path} row 0 (0-based, line 1): field 'prompt' is missing" in load_error(mcq(path))


def test_system_not_a_string(tmp_path):
    path = write(tmp_path, rows_with(MCQ, {"system": 5}))
    assert "row 2 (0-based, line 3): field 'system' must be a string or null, got int" in load_error(mcq(path))


def test_system_may_be_absent_or_none(tmp_path):
    rows = [{**MCQ, "idx": 0, "system": None}, {**MCQ, "idx": 1, "system": "None"}]
    rows.append({k: v for k, v in MCQ.items() if k != "system"} | {"idx": 2})
    ds = mcq(write(tmp_path, rows)).load("test")
    assert len(ds) == 3 and [len(mcq("x").messages(r)) for r in ds] == [1, 1, 1]


def test_idx_not_a_scalar(tmp_path):
    path = write(tmp_path, rows_with(MCQ, {"idx": [2]}, n=1, at=0))
    assert "row 0 (0-based, line 1): field 'idx' must be a number or string, got list" in load_error(mcq(path))


def test_duplicate_idx(tmp_path):
    path = write(tmp_path, rows_with(MCQ, {"idx": 0}))
    assert f"{path} row 2 (0-based, line 3): field 'idx' value '0' repeats row 0" in load_error(mcq(path))


def test_row_line_counts_blank_lines(tmp_path):
    path = write(tmp_path, [{**MCQ, "idx": 0}, "", "   ", {**MCQ, "idx": 1, "answer": ""}])
    assert f"{path} row 1 (0-based, line 4): field 'answer'" in load_error(mcq(path))


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "test.json"
    path.write_text(content)
    assert load_error(mcq(str(path))) == f"task 'sciknoweval/chemistry': {path} is empty (no rows)"


@pytest.mark.parametrize("lines,reason", [
    ([json.dumps(MCQ), "not json"], "Expecting value at column 1 (line 2)"),
    ([json.dumps(MCQ), json.dumps(MCQ)[:-1]], "(line 2)"),  # truncated last line
    (["[1, 2", json.dumps(MCQ)], "(line 1)"),
])
def test_not_json_lines(tmp_path, lines, reason):
    path = write(tmp_path, lines)
    message = load_error(mcq(path))
    assert message.startswith(f"task 'sciknoweval/chemistry': {path} is not JSON lines: ") and message.endswith(reason)


def test_not_utf8(tmp_path):
    path = tmp_path / "test.json"
    path.write_bytes(json.dumps(MCQ).encode() + b"\n\xff\xfe{}\n")
    message = load_error(mcq(str(path)))
    assert f"{path} is not JSON lines: 'utf-8' codec can't decode" in message and message.endswith("(line 2)")


def test_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="test.json"):
        mcq(str(tmp_path / "test.json")).load("test")


@pytest.mark.parametrize("answer,reason", [
    ("not json", "Expecting value"),
    (json.dumps({"Action": "a"}), "expected a non-empty JSON list of calls"),
    ("[]", "expected a non-empty JSON list of calls"),
    (json.dumps([{"Action_Input": "{}"}]), "call 0 has no 'Action' name"),
    (json.dumps([{"Action": "a", "Action_Input": "{}"}, {"Action": 3}]), "call 1 has no 'Action' name"),
    (json.dumps([{"Action": "a", "Action_Input": "[1]"}]), "call 0: 'Action_Input' is not a JSON object"),
    (json.dumps([{"Action": "a", "Action_Input": "{oops"}]), "Expecting property name"),
    ("[" * 100_000, "JSON nested too deeply"),
])
def test_tooluse_bad_answer(tmp_path, answer, reason):
    path = write(tmp_path, rows_with(TOOL, {"answer": answer}))
    message = load_error(ToolUseTask(test_file=path))
    assert message.startswith(f"task 'tooluse': {path} row 2 (0-based, line 3): field 'answer' is not a JSON list")
    assert reason in message


def test_tooluse_missing_answer(tmp_path):
    path = write(tmp_path, rows_with(TOOL, {"answer": ...}))
    assert "row 2 (0-based, line 3): field 'answer' is missing or empty" in load_error(ToolUseTask(test_file=path))


def test_valid_files_load(tmp_path):
    ds = ToolUseTask(test_file=write(tmp_path, rows_with(TOOL, {}))).load("validation")
    assert ds["uid"] == ["tooluse/validation/0", "tooluse/validation/1", "tooluse/validation/2"]
    # rows without idx get their index as uid (Arrow fills the absent idx with None)
    rows = [MCQ, {k: v for k, v in MCQ.items() if k != "idx"}]
    assert mcq(write(tmp_path, rows, "other.json")).load("test")["uid"] == [
        "sciknoweval/chemistry/test/0", "sciknoweval/chemistry/test/1"]


# ------------------------------------------------------------------ verifiers on hostile text
def test_tool_parser_survives_deep_nesting_and_huge_integers():
    for text in ['Action: a\nAction Input: {"x": ' + "[" * 100_000,  # RecursionError in json
                 'Action: a\nAction Input: {"x": ' + "1" * 5000 + "}",  # > 4300 digits: ValueError
                 'Action: a\nAction Input: {"x": ' + "[" * 500 + "]" * 500 + "}"]:  # too deep to keep
        assert parse_tool_calls(text) == (["a"], {}, False)
        score = ToolUseTask(test_file="unused.json").score(text, {"answer": CALLS})
        assert score.reward == 0.0 and score.format_ok  # format = SDPO is_correct_format


def test_arithmetic_score_huge_integer():
    score = ArithmeticTask().score("<answer>" + "9" * 5000 + "</answer>", {"answer": "-22"})
    assert score.reward == 0.0 and score.pred == "9" * 5000
    assert ArithmeticTask().score("<answer>-000</answer>", {"answer": "0"}).pred == "0"


# ------------------------------------------------------------------ arithmetic arguments
@pytest.mark.parametrize("kwargs,message", [
    ({"levels": 3}, "levels: expected a list of levels from [0, 1, 2, 3, 4, 5], got 3"),
    ({"levels": "012"}, "levels: expected a list of levels from [0, 1, 2, 3, 4, 5], got '012'"),
    ({"system_prompt": 1}, "system_prompt: must be a string or None, got int"),
    # already checked before this file existed; here for the one-line message format
    ({"levels": [7]}, "levels: unknown level 7; known levels are [0, 1, 2, 3, 4, 5]"),
    ({"train_size": -1}, "train_size: must be an integer >= 0, got -1"),
    ({"val_size": 2.5}, "val_size: must be an integer >= 0, got 2.5"),
])
def test_arithmetic_bad_arguments(kwargs, message):
    with pytest.raises(ValueError) as info:
        ArithmeticTask(**kwargs)
    assert str(info.value) == message

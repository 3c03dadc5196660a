"""The paper's benchmarks as tasks, on the real rows in ../shared/data (skipped if absent)."""

import json
from pathlib import Path

import pytest

from lit_scsdpo.tasks import Score, Task
from lit_scsdpo.tasks.files import MultipleChoiceTask, ToolUseTask, parse_tool_calls

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not available")

SPLITS = {"chemistry": (1890, 210), "biology": (450, 50), "material": (841, 94), "physics": (720, 80)}


@pytest.mark.parametrize("domain", sorted(SPLITS))
def test_sciknoweval_splits_and_prompts(domain):  # docs/specification.md §7 item 12
    task = MultipleChoiceTask(f"sciknoweval/{domain}", test_file=str(DATA / "sciknoweval" / domain / "test.json"),
                              train_file=str(DATA / "sciknoweval" / domain / "train.json"))
    assert isinstance(task, Task)
    train, val = task.load("train"), task.load("validation")
    assert (len(train), len(val)) == SPLITS[domain]
    assert len(set(train["uid"])) == len(train) and not set(train["uid"]) & set(val["uid"])
    row = val[0]
    msgs = task.messages(row)
    assert msgs[0]["role"] == "system" and "<answer>" in msgs[0]["content"]
    assert msgs[1]["content"].endswith("Please reason step by step.") and "\nA: " in msgs[1]["content"]
    assert row["data_source"] == f"sciknoweval/{domain}"
    assert set(train["answer"]) | set(val["answer"]) <= set("ABCD")  # exact letters (docs/tasks.md)


def test_mcq_scoring_rules():  # SDPO mcq.py; more edge cases in test_reward_rules.py
    task = MultipleChoiceTask("mcq", test_file="unused.json")
    row = {"answer": "B"}
    assert task.score("<reasoning>x</reasoning>\n<answer>\nB\n</answer>", row) == task.score("<answer>B</answer>", row)
    ok = task.score("<answer>A</answer> wait <answer> B </answer>", row)  # the last tag wins
    assert ok.reward == 1.0 and ok.pred == "B" and ok.format_ok and ok.feedback == ""
    bad = task.score("<answer>B: 56 pC</answer>", row)  # exact letter only
    assert bad.reward == 0.0 and bad.pred == "B: 56 pC"
    untagged = task.score("The answer is B", row)  # no tags: the whole text is the answer
    assert untagged.reward == 0.0 and untagged.pred == "The answer is B" and not untagged.format_ok
    assert task.score("B", row).reward == 1.0 and not task.score("B", row).format_ok
    strict = MultipleChoiceTask("mcq", test_file="unused.json", require_tags=True)
    assert strict.score("B", row) == Score(0.0, None, "", False)
    assert strict.score("<answer>B</answer>", row).reward == 1.0


#: The ToolAlpaca test questions that no completion can solve under the official parser.
UNSOLVABLE_OFFICIAL = {4072: "nested object in an input", 4079: "nested object; action name '[Optional]...'"}


def gold_completion(row):
    return "\n".join(f"Thought: call it\nAction: {c['Action']}\nAction Input: {c['Action_Input']}"
                     for c in json.loads(row["answer"]))


def test_tooluse_rows_and_gold_completions_score_one():  # ToolAlpaca test: 68 questions
    """Counts the rows the official parser cannot score (docs/tasks.md quotes these ids)."""
    official, fixed = ToolUseTask(test_file=str(DATA / "tooluse" / "test.json")), \
        ToolUseTask(test_file=str(DATA / "tooluse" / "test.json"), parser="json")
    val = official.load("validation")
    assert len(val) == 68
    failed = set()
    for row in val:
        assert official.messages(row)[-1]["content"] == row["prompt"] and len(official.messages(row)) == 1
        score = official.score(gold_completion(row), row)
        assert score.pred.startswith("Actions: [") and score.format_ok
        if score.reward != 1.0:
            failed.add(row["idx"])
        assert fixed.score(gold_completion(row), row).reward == 1.0, row["uid"]
    assert failed == set(UNSOLVABLE_OFFICIAL)


def test_tooluse_mismatches():
    task = ToolUseTask(test_file="unused.json")
    row = {"answer": json.dumps([{"Action": "a", "Action_Input": '{"x": 1}'},
                                 {"Action": "b", "Action_Input": '{"y": "z"}'}])}
    good = "Action: b\nAction Input: {\"y\": \"z\"}\nAction: a\nAction Input: {\"x\": 1}"
    assert task.score(good, row).reward == 1.0  # order does not matter (multiset)
    wrong_input = task.score("Action: a\nAction Input: {\"x\": 2}\nAction: b\nAction Input: {\"y\": \"z\"}", row)
    assert wrong_input.reward == 0.0 and wrong_input.feedback.startswith("Action inputs mismatch: predicted")
    twice = task.score(good + "\nAction: a\nAction Input: {}", row)  # an extra call: multiset differs
    assert twice.reward == 0.0 and twice.feedback.startswith("Actions mismatch: predicted")
    assert task.score("I would call a tool", row).format_ok is False
    actions, inputs, ok = parse_tool_calls("Action: a\nAction Input: {not json}")
    assert actions == ["a"] and inputs == {} and not ok


def test_tooluse_rows_whose_calls_share_input_keys():  # docs/tasks.md: the merged-dict rule
    rows = ToolUseTask(test_file=str(DATA / "tooluse" / "test.json")).load("test")
    shared = set()
    for row in rows:
        keys = [k for call in json.loads(row["answer"]) for k in json.loads(call["Action_Input"])]
        if len(keys) != len(set(keys)):
            shared.add(row["idx"])
    assert shared == {4052, 4053, 4055, 4063, 4079, 4096, 4098, 4099, 4111, 4112, 4113}

"""The paper's benchmarks as tasks, on the real rows in ../shared/data (skipped if absent)."""

import json
from pathlib import Path

import pytest

from lit_scsdpo.tasks import Task
from lit_scsdpo.tasks.files import MultipleChoiceTask, ToolUseTask, parse_tool_calls

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not available")

SPLITS = {"chemistry": (1890, 210), "biology": (450, 50), "material": (841, 94), "physics": (720, 80)}


@pytest.mark.parametrize("domain", sorted(SPLITS))
def test_sciknoweval_splits_and_prompts(domain):  # paper-spec §7 item 12
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
    assert row["data_source"] == f"sciknoweval/{domain}" and row["answer"] in "ABCD"


def test_mcq_scoring_rules():
    task = MultipleChoiceTask("mcq", test_file="unused.json")
    row = {"answer": "B"}
    assert task.score("<reasoning>x</reasoning>\n<answer>\nB\n</answer>", row) == task.score("<answer>B</answer>", row)
    ok = task.score("<answer>A</answer> wait <answer> B </answer>", row)  # the last tag wins
    assert ok.reward == 1.0 and ok.pred == "B" and ok.format_ok and ok.feedback == ""
    bad = task.score("<answer>B: 56 pC</answer>", row)  # exact letter only
    assert bad.reward == 0.0 and bad.pred == "B: 56 pC"
    none = task.score("The answer is B", row)
    assert none.reward == 0.0 and none.pred is None and not none.format_ok


def test_tooluse_rows_and_gold_completions_score_one():  # ToolAlpaca test: 68 questions
    task = ToolUseTask(test_file=str(DATA / "tooluse" / "test.json"))
    val = task.load("validation")
    assert len(val) == 68
    for row in val:
        assert task.messages(row)[-1]["content"] == row["prompt"] and len(task.messages(row)) == 1
        calls = json.loads(row["answer"])
        completion = "\n".join(f"Thought: call it\nAction: {c['Action']}\nAction Input: {c['Action_Input']}"
                               for c in calls)
        score = task.score(completion, row)
        assert score.reward == 1.0, (row["uid"], completion, score)
        assert score.pred.startswith("Actions: [")


def test_tooluse_mismatches():
    task = ToolUseTask(test_file="unused.json")
    row = {"answer": json.dumps([{"Action": "a", "Action_Input": '{"x": 1}'},
                                 {"Action": "b", "Action_Input": '{"y": "z"}'}])}
    good = "Action: b\nAction Input: {\"y\": \"z\"}\nAction: a\nAction Input: {\"x\": 1}"
    assert task.score(good, row).reward == 1.0  # order does not matter (multiset)
    wrong_input = task.score("Action: a\nAction Input: {\"x\": 2}\nAction: b\nAction Input: {\"y\": \"z\"}", row)
    assert wrong_input.reward == 0.0 and "expected inputs" in wrong_input.feedback
    twice = task.score(good + "\nAction: a\nAction Input: {}", row)  # an extra call: multiset differs
    assert twice.reward == 0.0 and "expected actions" in twice.feedback
    assert task.score("I would call a tool", row).format_ok is False
    actions, inputs, ok = parse_tool_calls("Action: a\nAction Input: {not json}")
    assert actions == ["a"] and inputs == {} and not ok

"""The optional reasoning-gym task source (skipped when the extra is not installed)."""

import pytest

pytest.importorskip("reasoning_gym")

from lit_scsdpo.tasks import Task  # noqa: E402
from lit_scsdpo.tasks.reasoning_gym import ReasoningGymTask  # noqa: E402


def test_reasoning_gym_task_loads_scores_and_is_a_task():
    task = ReasoningGymTask("chain_sum", train_size=8, val_size=4, test_size=4, seed=1)
    assert isinstance(task, Task)
    train, val = task.load("train"), task.load("validation")
    assert len(train) == 8 and len(val) == 4
    assert len(set(train["uid"]) | set(val["uid"])) == 12
    row = train[0]
    assert row["data_source"] == "reasoning_gym/chain_sum"
    msgs = task.messages(row)
    assert msgs[0]["role"] == "system" and msgs[-1] == {"role": "user", "content": row["question"]}
    good = task.score(f"I think <answer>{row['answer']}</answer>", row)
    assert good.reward == 1.0 and good.pred == row["answer"] and good.format_ok
    bad = task.score("<answer>not a number</answer>", row)
    assert bad.reward == 0.0 and row["answer"] not in bad.feedback
    assert task.score("no tags", row).format_ok is False
    # deterministic by seed
    assert ReasoningGymTask("chain_sum", train_size=8, seed=1).load("train")["question"] == train["question"]

"""Tasks: the SDPO answer-tag rule, the arithmetic generator, its splits and its scorer."""

import random
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_scsdpo.tasks import ArithmeticTask, Score, Task, extract_tagged_answer
from lit_scsdpo.tasks.arithmetic import LEVELS, expression_at, level_size, sample_expression

torch.set_num_threads(1)

LEVEL_PATTERNS = {
    0: r"[0-9]\+[0-9]",
    1: r"[1-9][0-9][+-][0-9]",
    2: r"[1-9][0-9]\+[1-9][0-9]",
    3: r"[1-9][0-9]-[1-9][0-9]",
    4: r"([0-9]|[1-9][0-9])\*[0-9]",
    5: r"[1-9][0-9][+-][1-9][0-9][+-][0-9]",
}
QUESTION_RE = re.compile(r"What is (.+)\?")


def expr_of(row):
    return QUESTION_RE.fullmatch(row["question"]).group(1)


@pytest.fixture(scope="module")
def default_task():
    task = ArithmeticTask()
    return task, {s: task.rows(s) for s in ("train", "validation", "test")}


# ------------------------------------------------------------------ extract_tagged_answer
@pytest.mark.parametrize(
    "text,expected",
    [
        ("<answer>12</answer>", "12"),
        ("reasoning <answer> 7 </answer>", "7"),  # stripped
        ("<answer>\n -3\t</answer>", "-3"),
        ("<answer>1</answer> wait <answer>2</answer> done", "2"),  # last tag wins
        ("<answer>1</answer> then <answer>2", None),  # last tag has no close
        ("<answer>5", None),
        ("no tags at all", None),
        ("</answer>4<answer>", None),
        ("", None),
        ("<answer></answer>", ""),
        ("<answer>a <b> c</answer></answer>", "a <b> c"),  # the first close after the last open
    ],
)
def test_extract_tagged_answer(text, expected):
    assert extract_tagged_answer(text) == expected


def test_extract_tagged_answer_custom_tags():
    assert extract_tagged_answer("\\boxed{1} \\boxed{ 2 }", "\\boxed{", "}") == "2"


@settings(max_examples=50, deadline=None)
@given(prefix=st.text(), inner=st.text(), suffix=st.text())
def test_extract_tagged_answer_property(prefix, inner, suffix):
    inner_clean = inner.replace("<answer>", "").replace("</answer>", "")
    suffix_clean = suffix.replace("<answer>", "")
    text = f"{prefix}<answer>{inner_clean}</answer>{suffix_clean}"
    assert extract_tagged_answer(text) == inner_clean.strip()


# ------------------------------------------------------------------ level generators
def test_level_sizes():
    assert [level_size(lv) for lv in sorted(LEVELS)] == [100, 1800, 8100, 8100, 1000, 324000]
    with pytest.raises(ValueError, match="levels"):
        level_size(6)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_level_expressions_valid(level):
    rng = random.Random(level)
    pattern = re.compile(LEVEL_PATTERNS[level])
    for _ in range(300):
        expr, value = sample_expression(level, rng)
        assert pattern.fullmatch(expr), expr
        assert value == eval(expr)  # noqa: S307 - digits and + - * only


@pytest.mark.parametrize("level", [0, 1, 4])
def test_level_index_is_a_bijection(level):
    exprs = [expression_at(level, i)[0] for i in range(level_size(level))]
    assert len(set(exprs)) == level_size(level)
    assert all(re.fullmatch(LEVEL_PATTERNS[level], e) for e in exprs)
    with pytest.raises(ValueError):
        expression_at(level, level_size(level))


def test_level_forms_cover_expected_cases():
    l3 = {expression_at(3, i)[1] for i in range(level_size(3))}
    assert min(l3) == 10 - 99 and max(l3) == 99 - 10  # L3 can be negative
    l4 = {expression_at(4, i)[0] for i in range(level_size(4))}
    assert {"7*8", "0*0", "99*9", "10*0"} <= l4
    l5 = {expression_at(5, i)[0] for i in (0, level_size(5) - 1)}
    assert l5 == {"10+10+0", "99-99-9"}


# ------------------------------------------------------------------ splits
def test_split_sizes_rows_and_sources(default_task):
    task, rows = default_task
    assert isinstance(task, Task)
    assert {s: len(r) for s, r in rows.items()} == {"train": 4096, "validation": 120, "test": 120}
    for split, split_rows in rows.items():
        for i, row in enumerate(split_rows):
            assert row["uid"] == f"arithmetic/{split}/{i:06d}"
            assert row["data_source"] == f"arithmetic/L{row['level']}"
            expr = expr_of(row)
            assert row["question"] == f"What is {expr}?"
            assert re.fullmatch(LEVEL_PATTERNS[row["level"]], expr)
            assert row["answer"] == str(eval(expr))  # noqa: S307
    for split in ("validation", "test"):  # spread evenly over the levels
        counts = {lv: sum(r["level"] == lv for r in rows[split]) for lv in range(6)}
        assert counts == {lv: 20 for lv in range(6)}
        assert len({expr_of(r) for r in rows[split]}) == 120  # no repeats
    train_counts = [sum(r["level"] == lv for r in rows["train"]) for lv in range(6)]
    assert train_counts == [683, 683, 683, 683, 682, 682]
    first = [r["level"] for r in rows["train"][:12]]
    assert first != sorted(first)  # train is shuffled across levels


def test_no_overlap_between_splits(default_task):
    _, rows = default_task
    train = {expr_of(r) for r in rows["train"]}
    val = {expr_of(r) for r in rows["validation"]}
    test = {expr_of(r) for r in rows["test"]}
    assert not train & val and not train & test and not val & test
    uids = [r["uid"] for split_rows in rows.values() for r in split_rows]
    assert len(set(uids)) == len(uids)


def test_train_repeats_only_when_level_exhausted():
    task = ArithmeticTask(levels=[0, 2], train_size=400, val_size=40, test_size=40, seed=3)
    train = task.rows("train")
    held_out = {expr_of(r) for s in ("validation", "test") for r in task.rows(s)}
    l0 = [expr_of(r) for r in train if r["level"] == 0]
    l2 = [expr_of(r) for r in train if r["level"] == 2]
    assert len(l0) == 200 and len(l2) == 200
    assert set(l0) == {expression_at(0, i)[0] for i in range(100)} - held_out  # all 60 left
    assert len(l2) == len(set(l2))  # L2 has room: no repeats
    assert not (set(l0) | set(l2)) & held_out


def test_splits_deterministic_by_seed():
    kw = dict(levels=[1, 3, 5], train_size=60, val_size=9, test_size=9)
    a, b = ArithmeticTask(seed=1, **kw), ArithmeticTask(seed=1, **kw)
    c = ArithmeticTask(seed=2, **kw)
    for split in ("train", "validation", "test"):
        assert a.rows(split) == b.rows(split)
        assert a.rows(split) != c.rows(split)
    # the held-out questions do not depend on train_size
    d = ArithmeticTask(seed=1, **{**kw, "train_size": 7})
    assert d.rows("validation") == a.rows("validation") and d.rows("test") == a.rows("test")


def test_load_returns_dataset():
    task = ArithmeticTask(levels=[0, 1, 2], train_size=5, val_size=7, test_size=0, name="arith")
    val = task.load("validation")
    assert val.column_names == ["uid", "data_source", "question", "answer", "level"]
    assert [r["data_source"] for r in val] == ["arith/L0"] * 3 + ["arith/L1"] * 2 + ["arith/L2"] * 2
    assert val[0]["uid"] == "arith/validation/000000"
    assert len(task.load("train")) == 5
    empty = task.load("test")
    assert len(empty) == 0 and "answer" in empty.column_names
    with pytest.raises(ValueError, match="split"):
        task.load("dev")


def test_messages():
    row = {"question": "What is 1+2?"}
    assert ArithmeticTask().messages(row) == [{"role": "user", "content": "What is 1+2?"}]
    task = ArithmeticTask(system_prompt="Answer in <answer></answer>.")
    assert task.messages(row) == [
        {"role": "system", "content": "Answer in <answer></answer>."},
        {"role": "user", "content": "What is 1+2?"},
    ]


# ------------------------------------------------------------------ scoring
ROW = {"question": "What is 34-56?", "answer": "-22"}


@pytest.mark.parametrize(
    "completion,reward,pred,format_ok",
    [
        ("34-56 = -22. <answer>-22</answer>", 1.0, "-22", True),
        ("<answer> -22 </answer>", 1.0, "-22", True),
        ("<answer>\n-022\n</answer>", 1.0, "-22", True),  # canonical integer
        ("<answer>22</answer> no: <answer>-22</answer>", 1.0, "-22", True),
        ("<answer>-22</answer> no: <answer>22</answer>", 0.0, "22", True),
        ("<answer>+22</answer>", 0.0, "22", True),
        ("<answer>-21.5</answer>", 0.0, "-21.5", True),  # not an integer
        ("<answer>- 22</answer>", 0.0, "- 22", True),
        ("<answer>minus twenty-two</answer>", 0.0, "minus twenty-two", True),
        ("<answer></answer>", 0.0, "", True),
        ("The answer is -22", 0.0, None, False),
        ("<answer>-22", 0.0, None, False),
    ],
)
def test_score_cases(completion, reward, pred, format_ok):
    score = ArithmeticTask().score(completion, ROW)
    assert isinstance(score, Score)
    assert (score.reward, score.pred, score.format_ok) == (reward, pred, format_ok)
    assert "-22" not in score.feedback  # never the gold
    assert (score.feedback == "") == (reward == 1.0)


def test_score_feedback():
    task = ArithmeticTask()
    assert task.score("<answer>-22</answer>", ROW).feedback == ""
    wrong = task.score("<answer>17</answer>", ROW)
    assert wrong.feedback == "Your answer was 17, which is incorrect."
    assert "-22" not in wrong.feedback and "22" not in wrong.feedback
    missing = task.score("I think it is 17.", ROW)
    assert missing.feedback == "Your response did not contain an <answer>...</answer> tag."
    long = task.score("<answer>" + "9" * 500 + "</answer>", ROW)
    assert long.reward == 0.0 and len(long.feedback) < 200
    with pytest.raises(AttributeError):  # frozen
        wrong.reward = 1.0


@settings(max_examples=50, deadline=None)
@given(gold=st.integers(-200, 10_000), pred=st.integers(-200, 10_000))
def test_score_integer_property(gold, pred):
    score = ArithmeticTask().score(f"<answer>{pred}</answer>", {"answer": str(gold)})
    assert score.reward == float(pred == gold) and score.pred == str(pred) and score.format_ok
    if pred != gold:
        assert score.feedback == f"Your answer was {pred}, which is incorrect."


def test_generated_rows_score_with_their_answers():
    task = ArithmeticTask(train_size=0, val_size=30, test_size=0)
    for row in task.rows("validation"):
        assert task.score(f"<answer>{row['answer']}</answer>", row).reward == 1.0
        assert task.score(f"<answer>{int(row['answer']) + 1}</answer>", row).reward == 0.0


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"levels": [0, 6]}, r"levels: unknown level 6"),
        ({"levels": [-1]}, r"levels: unknown level -1"),
        ({"levels": []}, r"levels"),
        ({"levels": [1, 1]}, r"levels: duplicate"),
        ({"levels": ["1"]}, r"levels"),
        ({"train_size": -1}, r"train_size"),
        ({"val_size": -5}, r"val_size"),
        ({"test_size": -1}, r"test_size"),
        ({"levels": [0], "val_size": 60, "test_size": 41}, r"level 0 has only 100"),
        ({"levels": [0], "val_size": 50, "test_size": 50}, r"none is left for train"),
        ({"name": ""}, r"name"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticTask(**kwargs)


def test_held_out_may_use_whole_level_without_train():
    task = ArithmeticTask(levels=[0], train_size=0, val_size=50, test_size=50)
    assert len({expr_of(r) for s in ("validation", "test") for r in task.rows(s)}) == 100


def test_worked_solutions_are_correct_step_by_step():
    import random
    import re

    from lit_scsdpo.tasks.arithmetic import sample_expression, worked_solution

    rng = random.Random(0)
    examples = {worked_solution("23+45"): "23+45: 20+40=60, 3+5=8, 60+8=68",
                worked_solution("45*3"): "45*3: 40*3=120, 5*3=15, 120+15=135",
                worked_solution("94-85"): "94-85: 94-80=14, 14-5=9",
                worked_solution("34-56+7"): "34-56+7: 34-56=-22, -22+7=-15",
                worked_solution("7*8"): "7*8=56",
                worked_solution("47-8", final=40): "47-8=40",
                worked_solution("23+45", final=69): "23+45: 20+40=60, 3+5=8, 60+8=69"}
    for got, want in examples.items():
        assert got == want
    for level in range(6):
        for _ in range(200):
            expr, value = sample_expression(level, rng)
            text = worked_solution(expr)
            steps = re.findall(r"(-?\d+[+\-*]\d+)=(-?\d+)", text)
            assert steps and all(eval(lhs) == int(rhs) for lhs, rhs in steps), text
            assert int(steps[-1][1]) == value
    with pytest.raises(ValueError, match="not an expression"):
        worked_solution("2**3")


@pytest.mark.parametrize("completion, reward, pred", [
    ("12 + 7 = 19", 1.0, "19"),
    ("The answer is 19.", 1.0, "19"),
    ("19 or maybe 18", 0.0, "18"),
    ("<answer>19</answer>", 1.0, "19"),
    ("no digits here", 0.0, None),
])
def test_arithmetic_last_number_format(completion, reward, pred):
    from lit_scsdpo.tasks import ArithmeticTask

    task = ArithmeticTask(levels=[1], train_size=4, val_size=0, test_size=0, answer_format="last_number")
    score = task.score(completion, {"answer": "19"})
    assert (score.reward, score.pred) == (reward, pred)
    assert task.score("3 - 5 = -2", {"answer": "-2"}).reward == 1.0
    with pytest.raises(ValueError, match="answer_format"):
        ArithmeticTask(answer_format="boxed")

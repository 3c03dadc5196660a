"""MathTask: math-verify scoring, its time limit (and how it nests in SafeScorer's), loading.

math-verify is in the ``test`` extra: these tests run for real, never skipped. No network.
"""

import copy
import json
import signal
import threading
import time

import datasets
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_scsdpo.tasks import MathTask, Task
from lit_scsdpo.tasks.math import MathScoring, extract_final_answer, gold_answer_text, run_with_deadline

HUGE = r"\boxed{9^{9^{9^{9^{9}}}}}"  # sympy works on it for minutes
LIMIT = 0.5  # the time limit of the time-limit tests (s)
SLACK = 4.0  # allowed overrun on a loaded 2-core machine (s): the unbounded cases take minutes


@pytest.fixture(scope="module")
def task():
    """For verdicts: a generous limit, so that a loaded machine cannot turn one into a time-out."""
    return MathTask(test_source="unused.jsonl", scoring=MathScoring(timeout=10.0))


@pytest.fixture(scope="module")
def quick():
    """For the time limit."""
    return MathTask(test_source="unused.jsonl", scoring=MathScoring(timeout=LIMIT))


def row(answer, uid="math/test/0"):
    return {"uid": uid, "data_source": "math", "problem": "?", "answer": answer}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


@pytest.fixture(autouse=True)
def no_timer_left_behind():
    """Every test leaves SIGALRM as it found it: no armed timer, the same handler."""
    handler = signal.getsignal(signal.SIGALRM)
    yield
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert signal.getsignal(signal.SIGALRM) is handler


# ---------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("completion,gold", [
    (r"so the answer is \boxed{\frac{1}{2}}", "0.5"),
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"<answer>1/2</answer>", r"\frac{1}{2}"),
    (r"\boxed{\dfrac12}", "0.5"),
    (r"\boxed{50\%}", "0.5"),
    (r"<answer>$\frac{2}{4}$</answer>", r"\frac{1}{2}"),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}"),
    (r"\boxed{x = 3}", "3"),
    (r"\boxed{1,000}", "1000"),
    (r"\boxed{18.0}", "18"),
    (r"\boxed{[1, 2)}", "[1,2)"),
    (r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
    (r"\boxed{\{2, 1\}}", r"\{1,2\}"),
    (r"\boxed{(x+1)^2}", "x^2+2x+1"),
    (r"\fbox{\pi}", r"\pi"),
    (r"\boxed{\begin{pmatrix}1\\2\end{pmatrix}}", r"\begin{pmatrix}1\\2\end{pmatrix}"),
])
def test_equivalent_forms_are_correct(task, completion, gold):
    score = task.score(completion, row(gold))
    assert score.reward == 1.0 and score.format_ok and score.feedback == "", score
    assert score.pred == extract_final_answer(completion)


@pytest.mark.parametrize("completion,gold", [
    (r"\boxed{0.6}", r"\frac{1}{2}"),
    (r"<answer>\frac{1}{3}</answer>", "0.33"),
    (r"\boxed{(1, 2]}", "[1,2)"),
    (r"\boxed{\{1, 3\}}", r"\{1,2\}"),
    (r"\boxed{-3}", "3"),
    (r"\boxed{x^2+2x}", "(x+1)^2"),
    (r"\boxed{\text{seven}}", "7"),
])
def test_wrong_answers_score_zero_without_leaking_gold(task, completion, gold):
    score = task.score(completion, row(gold))
    assert score.reward == 0.0 and score.format_ok
    assert score.feedback == f"Your final answer {score.pred} is incorrect."


def test_last_answer_wins(task):
    assert task.score(r"\boxed{3} hmm, no: <answer>4</answer>", row("4")).reward == 1.0
    assert task.score(r"\boxed{3} hmm, no: <answer>4</answer>", row("3")).reward == 0.0
    assert task.score(r"<answer>3</answer> hmm, no: \boxed{4}", row("4")).reward == 1.0
    assert task.score(r"\boxed{3} then \boxed{4}", row("4")).pred == "4"
    assert task.score(r"<answer>\boxed{5}</answer>", row("5")).pred == "5"
    assert task.score(r"\boxed{\boxed{6}}", row("6")).reward == 1.0
    # nested braces and escaped set braces stay inside the box
    assert task.score(r"\boxed{\frac{1}{\sqrt{4}}} and \{", row("0.5")).reward == 1.0


@pytest.mark.parametrize("completion", [
    "The answer is 5.", "", "$5$", r"\boxed 5", "<answer>5", r"\boxed{5",
    r"\boxed{3} and finally \boxed{4",  # the last attempt was cut off: no answer
    "<answer>  </answer>", r"\boxed{$ $}", r"\boxed{}}",
])
def test_no_answer_is_a_format_failure(task, completion):
    score = task.score(completion, row("5"))
    assert (score.reward, score.pred, score.format_ok) == (0.0, None, False), score
    assert r"\boxed" in score.feedback


def test_gold_answer_text():
    assert gold_answer_text(72) == "72" and gold_answer_text(18.0) == "18" and gold_answer_text(0.5) == "0.5"
    assert gold_answer_text("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"  # GSM8K
    assert gold_answer_text(r"So $x = \boxed{\frac{1}{2}}$.") == r"\frac{1}{2}"  # MATH solution
    assert gold_answer_text(r" $\frac{1}{2}$ ") == r"\frac{1}{2}"
    for bad in (None, "", "  ", True, float("nan"), [1], {"a": 1}):
        assert gold_answer_text(bad) is None


def test_is_a_task_and_renders_messages():
    t = MathTask("unused.jsonl", system_prompt="Be brief.", prompt="Q: {problem}\nAnswer in <answer></answer>.")
    assert isinstance(t, Task)
    assert t.messages({"problem": "1+1?"}) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: 1+1?\nAnswer in <answer></answer>."}]
    default = MathTask("unused.jsonl").messages({"problem": "1+1?"})
    assert len(default) == 1 and default[0]["content"].startswith("1+1?\n\n") and r"\boxed{}" in default[0]["content"]


@pytest.mark.parametrize("kwargs,message", [
    (lambda: {"scoring": MathScoring(timeout=0)}, "timeout: must be"),
    (lambda: {"scoring": MathScoring(timeout="5")}, "timeout: must be"),
    (lambda: {"scoring": MathScoring(isolation="thread")}, "isolation: must be"),
    (lambda: {"prompt": "no placeholder"}, "{problem}"),
    (lambda: {"scoring": MathScoring(max_answer_chars=0)}, "max_answer_chars"),
    (lambda: {"problem_field": ""}, "problem_field"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        MathTask("unused.jsonl", **kwargs())


# ---------------------------------------------------------------------------- time limit
def test_pathological_answer_returns_within_the_limit(quick):
    before = quick.timeouts
    score, seconds = timed(quick.score, HUGE, row("1"))
    assert seconds < LIMIT + SLACK, seconds
    assert score.reward == 0.0 and score.format_ok and score.pred == "9^{9^{9^{9^{9}}}}"
    assert "time limit" in score.feedback and quick.timeouts == before + 1
    assert quick.score(r"\boxed{2}", row("2")).reward == 1.0  # and the next call is fine


def test_100k_character_expression(quick):
    completion = r"\boxed{" + "+".join(["x^{2}"] * 16_667) + "}"  # 100k characters
    assert len(completion) > 100_000
    score, seconds = timed(quick.score, completion, row("1"))  # over max_answer_chars: not parsed
    assert seconds < SLACK and score.reward == 0.0 and score.format_ok and "too long" in score.feedback
    # parsed: a signal cannot interrupt a long call inside C (measured 66 s under CI load with the
    # in-process deadline), so the hard bound is the worker process, killed after timeout + 1 s
    uncapped = MathTask("unused.jsonl", scoring=MathScoring(timeout=LIMIT, max_answer_chars=None, isolation="process"))
    score, seconds = timed(uncapped.score, completion, row("1"))
    assert seconds < LIMIT + 1 + SLACK and score.reward == 0.0 and score.format_ok


def test_outer_timer_is_preserved_not_cancelled(quick):
    """A SafeScorer-like outer ITIMER_REAL keeps running through the task's own deadline (a
    math-verify call with its own time-out would have cancelled it: ``signal.alarm(0)``)."""
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        quick.score(r"\boxed{1}", row("1"))
        quick.score(HUGE, row("1"))  # the task's own deadline fires and is cleaned up
        left = signal.getitimer(signal.ITIMER_REAL)[0]
        assert 30.0 - LIMIT - SLACK - 1 < left < 30.0, left
        assert signal.getsignal(signal.SIGALRM) is not None and not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_shorter_outer_deadline_still_fires():
    """An outer deadline shorter than the task's own is neither extended nor lost: it fires
    (right after the inner one, where its handler was meant to run)."""
    class Outer(Exception):
        pass

    def outer(*_):
        raise Outer()

    previous = signal.signal(signal.SIGALRM, outer)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t0 = time.perf_counter()
        with pytest.raises(Outer):
            run_with_deadline(lambda: time.sleep(5), 10.0)
        assert time.perf_counter() - t0 < 0.3 + SLACK
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_deadline_is_not_swallowed_by_except_exception():
    def stubborn():
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except Exception:  # noqa: BLE001 - what sympy & co. do
                pass
        return "finished"

    (done, value), seconds = timed(run_with_deadline, stubborn, 0.2)
    assert (done, value) == (False, None) and seconds < 0.2 + SLACK


def test_safe_scorer_path_nested_timeouts():
    """Scoring through the DataModule's SafeScorer (SIGALRM around every call): the task's
    shorter limit answers first and SafeScorer's timer survives it; with a shorter SafeScorer
    limit, SafeScorer's time-out fires and is counted."""
    from lit_scsdpo.data import RolloutDataModule

    task = MathTask("unused.jsonl", scoring=MathScoring(timeout=LIMIT))
    scorer = RolloutDataModule(task=task, score_timeout=10.0).scorer
    counters = {}
    assert scorer(r"\boxed{\frac{1}{2}}", row("0.5"), counters).reward == 1.0
    score, seconds = timed(scorer, HUGE, row("1"), counters)
    assert seconds < LIMIT + SLACK and score.format_ok and score.pred is not None and task.timeouts == 1
    assert counters.get("score_timeouts", 0) == 0 and counters.get("score_errors", 0) == 0

    strict = RolloutDataModule(task=MathTask("unused.jsonl", scoring=MathScoring(timeout=5.0)),
                               score_timeout=0.3).scorer
    score, seconds = timed(strict, HUGE, row("1"), counters)
    assert seconds < 0.3 + SLACK and counters["score_timeouts"] == 1 and score.pred is None
    assert strict(r"<answer>0.5</answer>", row(r"\frac12"), counters).reward == 1.0


def test_process_isolation_under_safe_scorer():
    """isolation="process": SafeScorer's alarm interrupts the wait, the busy worker is killed
    (its late answer cannot be taken for the next one) and a fresh one serves the next call."""
    from lit_scsdpo.data import SafeScorer

    task = MathTask("unused.jsonl", scoring=MathScoring(timeout=5.0, isolation="process"))
    try:
        assert task.score(r"\boxed{0.5}", row("1/2")).reward == 1.0  # starts the worker (~1 s)
        counters = {}
        score, seconds = timed(SafeScorer(task, timeout=1.0), HUGE, row("1"), counters)
        assert counters["score_timeouts"] == 1 and score.pred is None and seconds < 1.0 + SLACK
        patient = SafeScorer(task, timeout=60.0)  # the next call starts a fresh worker
        assert patient(r"\boxed{7}", row("7"), counters).reward == 1.0
        assert patient(r"\boxed{8}", row("7"), counters).reward == 0.0
        assert task._worker.starts == 2 and counters["score_timeouts"] == 1
    finally:
        task.close()


def test_other_threads_use_the_worker_process():
    """Off the main thread SIGALRM cannot be used: a worker process bounds the time instead."""
    task = MathTask("unused.jsonl", scoring=MathScoring(timeout=LIMIT))
    results = []

    def work():
        for completion, gold in ((r"\boxed{\frac{1}{2}}", "0.5"), (HUGE, "1"), (r"<answer>3</answer>", "3")):
            results.append(timed(task.score, completion, row(gold)))

    try:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join(60)
        assert not thread.is_alive() and len(results) == 3
        (first, _), (huge, seconds), (last, _) = results
        assert first.reward == 1.0 and last.reward == 1.0
        assert huge.reward == 0.0 and "time limit" in huge.feedback and seconds < LIMIT + SLACK
        assert task._worker.starts == 1  # the worker's own deadline answered: not killed
        clone = copy.deepcopy(task)  # copies do not share (or copy) the worker
        assert clone._worker is None and clone.score(r"\boxed{2}", row("2")).reward == 1.0
    finally:
        task.close()


pieces = st.sampled_from([r"\boxed{", r"\fbox{", "{", "}", "<answer>", "</answer>", "$", "\\", "^", "_",
                          r"\frac", r"\sqrt", "9", "0.5", "x", "=", ",", "(", ")", "[", r"\{", r"\}",
                          r"\begin{pmatrix}", r"\end{pmatrix}", r"\\", "&", r"\infty", "%", " ", "\n"])
texts = st.one_of(st.text(max_size=300), st.lists(st.one_of(pieces, st.text(max_size=5)), max_size=40).map("".join))


NO_ANSWER = r"Your response did not contain a final answer in \boxed{...} or <answer>...</answer>."
TIMED_OUT = "Your final answer could not be checked within the time limit."


@pytest.fixture(scope="module")
def fuzzed():
    return MathTask(test_source="unused.jsonl", scoring=MathScoring(timeout=2.0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(text=texts, gold=st.sampled_from(["0.5", r"\frac{1}{2}", "[1,2)", r"\{1,2\}", "72", "x"]))
def test_score_never_raises(fuzzed, text, gold):
    task = fuzzed
    score = task.score(text, row(gold))
    assert score.reward in (0.0, 1.0) and isinstance(score.format_ok, bool)
    assert (score.pred is None) == (not score.format_ok)
    shown = score.pred if score.pred is None or len(score.pred) <= 100 else score.pred[:100] + "..."
    assert score.feedback in ("", NO_ANSWER, f"Your final answer {shown} is incorrect.", TIMED_OUT,
                              f"Your final answer is too long to check ({len(score.pred or '')} characters).")
    # a final answer appended to any text is the one that counts
    assert task.score(text + r" \boxed{" + gold + "}", row(gold)).reward == 1.0


# ---------------------------------------------------------------------------- loading
ROWS = [
    {"problem": "What is 1/2 as a decimal?", "answer": "0.5", "unique_id": "a/1", "subject": "Prealgebra"},
    {"problem": "Solve x+1=4.", "answer": 3, "unique_id": "a/2", "subject": "Algebra"},
    {"problem": "Halve 1.", "answer": r"\frac{1}{2}", "unique_id": "a/3", "subject": "Algebra"},
]


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def load_error(task, split="test"):
    with pytest.raises(ValueError) as info:
        task.load(split)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"task {task.name!r}: "), message
    return message


def test_load_jsonl_and_save_to_disk_folder_alike(tmp_path):
    jsonl = write_jsonl(tmp_path / "test.jsonl", ROWS)
    folder = str(tmp_path / "saved")
    datasets.Dataset.from_list([{**r, "answer": str(r["answer"])} for r in ROWS]).save_to_disk(folder)
    parquet = str(tmp_path / "test.parquet")
    datasets.Dataset.from_list(ROWS[:1]).to_parquet(parquet)
    loaded = []
    for source in (jsonl, folder):
        task = MathTask(source, id_field="unique_id", source_field="subject")
        ds = task.load("test")
        assert ds.column_names == ["uid", "data_source", "problem", "answer"]
        loaded.append(ds.to_list())
        assert task.load("validation")["uid"][0] == "math/validation/a/1"  # validation = test source
    assert loaded[0] == loaded[1]
    first = loaded[0][0]
    assert first == {"uid": "math/test/a/1", "data_source": "math/Prealgebra",
                     "problem": ROWS[0]["problem"], "answer": "0.5"}
    assert loaded[0][1]["answer"] == "3"
    task = MathTask(jsonl)
    assert task.score(r"\boxed{\frac12}", task.load("test")[0]).reward == 1.0
    assert MathTask(parquet).load("test")["uid"] == ["math/test/0"]


def test_load_splits_field_mapping_and_dataset_dict(tmp_path):
    gsm = [{"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
            "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nShe sold 48+24 = <<48+24=72>>72.\n#### 72"}]
    folder = str(tmp_path / "gsm")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(gsm * 2),
                          "test": datasets.Dataset.from_list(gsm)}).save_to_disk(folder)
    task = MathTask(folder, train_source=f"{folder}:train", problem_field="question", name="gsm8k")
    train, test = task.load("train"), task.load("test")
    assert len(train) == 2 and len(test) == 1 and train["answer"] == ["72", "72"]
    assert train["uid"] == ["gsm8k/train/0", "gsm8k/train/1"] and test["data_source"] == ["gsm8k"]
    assert task.score("... so <answer>72</answer>", test[0]).reward == 1.0
    with pytest.raises(ValueError, match="has no split 'validation' \\(it has train, test\\)"):
        MathTask(folder, validation_source=folder).load("validation")
    with pytest.raises(ValueError, match="has no train source"):
        MathTask(folder).load("train")
    with pytest.raises(FileNotFoundError, match="source not found"):
        MathTask(str(tmp_path / "missing.jsonl")).load("test")


def test_hub_sources_go_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{**r, "answer": str(r["answer"])} for r in ROWS])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = MathTask("HuggingFaceH4/MATH-500", train_source="org/math:train_small", hub_config="default")
    assert len(task.load("test")) == 3 and len(task.load("train")) == 3
    assert calls == [("HuggingFaceH4/MATH-500", "default", "test"), ("org/math", "default", "train_small")]


@pytest.mark.parametrize("bad,message,line", [
    ({"answer": ...}, "field 'answer' is missing or empty", 5),
    ({"answer": "  "}, "field 'answer' is missing or empty", 5),
    ({"problem": ""}, "field 'problem' is missing or empty", 5),
    ({"unique_id": "a/1"}, "field 'unique_id' value 'a/1' repeats row 0", 5),
    # a value of another type mixes a column's types: `datasets` then reads the file with
    # pandas, which refuses blank lines, so these files have none
    ({"answer": "#### "}, "field 'answer' holds no answer: '#### '", 5),
    ({"answer": [1]}, "field 'answer' must be a non-empty string or a finite number (the gold answer), got list", 3),
    ({"problem": 7}, "field 'problem' must be a non-empty string (the problem), got int", 3),
    ({"unique_id": 2.5}, "field 'unique_id' must be a non-empty string or an integer (an id), got float", 3),
])
def test_bad_row_names_file_row_and_field(tmp_path, bad, message, line):
    rows = [{**r, "answer": str(r["answer"])} for r in ROWS]
    rows[2] = {k: v for k, v in {**rows[2], **bad}.items() if v is not ...}
    lines = ["", *rows[:2], "", rows[2]] if line == 5 else rows  # blank lines: line != row + 1
    path = write_jsonl(tmp_path / "test.jsonl", lines)
    message_ = load_error(MathTask(path, id_field="unique_id"))
    assert f"{path} row 2 (0-based, line {line}): {message}" in message_, message_


def test_bad_row_in_a_saved_folder(tmp_path):
    folder = str(tmp_path / "saved")
    datasets.Dataset.from_list([{"problem": "p", "answer": "1"}, {"problem": "q", "answer": ""}]).save_to_disk(folder)
    assert f"{folder} row 1 (0-based): field 'answer' is missing or empty" in load_error(MathTask(folder))


def test_unmapped_column_and_unreadable_files(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "#### 1"}])
    message = load_error(MathTask(path))
    assert "row 0 (0-based, line 1): field 'problem' is missing (the rows have 'question', 'answer'; " \
           "set problem_field to the right column)" in message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "is empty (no rows)" in load_error(MathTask(str(empty)))
    broken = write_jsonl(tmp_path / "broken.jsonl", [ROWS[0], "{not json"])
    assert "is not JSON lines" in load_error(MathTask(broken)) and "(line 2)" in load_error(MathTask(broken))
    text = tmp_path / "rows.txt"
    text.write_text("x")
    assert "is not a supported file" in load_error(MathTask(str(text)))

"""Fuzzing (hypothesis): verifiers, the reprompt builder and the row validator never crash or
hang on arbitrary input. Inputs found by fuzzing are pinned with ``@example``."""

import json
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from lit_scsdpo.chat import render_prompt, strip_thinking
from lit_scsdpo.tasks import ArithmeticTask, MultipleChoiceTask, Score, ToolUseTask, extract_tagged_answer
from lit_scsdpo.tasks.files import parse_tool_calls
from lit_scsdpo.teacher import Reprompt, build_reprompts, fit_reprompt, self_distillation_mask

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = ["<answer>", "</answer>", "Action:", "Action: a", "Action Input:", "Action Input: {", "[[[[",
             "{", "}", "[", "]", '"', '{"x": ', "\\", "\n", " ", "\t", "\r\n", "-", "+", "0", "9", "A", "B",
             "<think>", "</think>", "\u00a0", "\u2028", "é", "世", "\x00"]
#: Text made of verifier-relevant fragments and arbitrary characters.
pieces = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join)
#: One fragment repeated up to 30,000 times between arbitrary text: catches super-linear regexes.
repeated = st.builds(lambda a, f, n, b: a + f * n + b, st.text(max_size=10), st.sampled_from(FRAGMENTS),
                     st.integers(1, 30_000), st.text(max_size=10))
texts = st.one_of(st.text(), pieces, repeated)

DEEP = 'Action: a\nAction Input: {"x": ' + "[" * 100_000  # RecursionError in json
HUGE_INT = 'Action: a\nAction Input: {"x": ' + "1" * 5000 + "}"  # ValueError: > 4300 digits
NEWLINES = "\n" * 100_000 + "x"  # the old `^\s*Action` took seconds
SPACES = "Action: x" + " " * 30_000 + "y"  # the old `(.+?)\s*$` too
CALLS = json.dumps([{"Action": "getFacts", "Action_Input": '{"limit": 3}'}])


def check(score, gold=None):
    assert isinstance(score, Score) and score.reward in (0.0, 1.0)
    assert isinstance(score.feedback, str) and isinstance(score.format_ok, bool)
    assert score.pred is None or isinstance(score.pred, str)
    if gold is not None and score.reward == 1.0:
        assert score.pred == gold


@FUZZ
@given(text=texts)
@example(text=NEWLINES)
def test_extract_tagged_answer(text):
    got = extract_tagged_answer(text)
    assert got is None or (isinstance(got, str) and got in text)


@FUZZ
@given(text=texts, gold=st.sampled_from(["A", "B", " C "]))
def test_mcq_score(text, gold):
    check(MultipleChoiceTask("mcq", test_file="unused.json").score(text, {"answer": gold}), gold.strip())


@FUZZ
@given(text=texts)
@example(text=DEEP)
@example(text=HUGE_INT)
@example(text=NEWLINES)
@example(text=SPACES)
@example(text='Action: a\nAction Input: {"x": ' + "[" * 900 + "]" * 900 + "}")  # json.dumps recursion
def test_tooluse_score(text):
    actions, inputs, ok = parse_tool_calls(text)
    assert all(isinstance(a, str) and a and a == a.strip() for a in actions)
    assert isinstance(inputs, dict) and isinstance(ok, bool)
    check(ToolUseTask(test_file="unused.json").score(text, {"answer": CALLS}))


@FUZZ
@given(text=texts, gold=st.integers(-200, 10_000))
@example(text="<answer>" + "9" * 5000 + "</answer>", gold=1)  # int() refuses > 4300 digits
def test_arithmetic_score(text, gold):
    check(ArithmeticTask(levels=[0], train_size=0, val_size=1, test_size=0).score(text, {"answer": str(gold)}),
          str(gold))


@pytest.mark.parametrize("text", [NEWLINES, SPACES, DEEP, HUGE_INT, " \n" * 100_000, "Action Input: {" * 20_000])
def test_tooluse_score_is_fast_on_found_inputs(text):
    start = time.perf_counter()
    ToolUseTask(test_file="unused.json").score(text, {"answer": CALLS})
    assert time.perf_counter() - start < 1.0


# ------------------------------------------------------------------ the reprompt builder
rollouts = st.lists(st.tuples(st.one_of(st.text(max_size=30), pieces),  # response
                              st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats()),  # reward, NaN too
                              st.one_of(st.integers(0, 3), st.sampled_from(["q", "r", ""])),  # group id
                              st.text(max_size=20)), max_size=12)  # feedback


@FUZZ
@given(rollouts=rollouts, include_feedback=st.booleans(), system=st.booleans(), prompt=st.text(max_size=30))
def test_build_reprompts(rollouts, include_feedback, system, prompt):
    responses, rewards, groups, feedback = (list(c) for c in zip(*rollouts)) if rollouts else ([],) * 4
    chat = ([{"role": "system", "content": "{s}"}] if system else []) + [{"role": "user", "content": prompt}]
    rps = build_reprompts([chat] * len(rollouts), responses, rewards, groups, feedback,
                          include_feedback=include_feedback)
    assert [rp.active for rp in rps] == self_distillation_mask(
        rewards, groups, [bool(f) for f in feedback], include_feedback=include_feedback)
    for i, rp in enumerate(rps):
        if rp.demo_index is not None:  # another success of the same question, never itself
            j = rp.demo_index
            assert j != i and groups[j] == groups[i] and rewards[j] >= 0.5
            assert rp.demonstration == strip_thinking(responses[j])
        assert rp.messages()[-1]["content"].startswith(prompt)  # braces in texts are not fields


@lru_cache(maxsize=1)
def char_tokenizer():
    from lit_scsdpo.tiny import build_char_tokenizer

    return build_char_tokenizer()


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(prompt=st.text(max_size=40), demo=st.one_of(st.none(), st.text(max_size=300), pieces),
       feedback=st.one_of(st.none(), st.text(max_size=60)), max_tokens=st.integers(0, 300))
def test_fit_reprompt(prompt, demo, feedback, max_tokens):
    tok = char_tokenizer()
    rp = Reprompt(system=[], prompt=prompt, demonstration=demo, feedback=feedback)
    ids, truncated = fit_reprompt(tok, rp, max_tokens)
    event("masked" if ids is None else "truncated" if truncated else "fits")
    assert ids is None or len(ids) <= max_tokens
    if not truncated:
        assert ids == render_prompt(tok, rp.messages())


# ------------------------------------------------------------------ the row validator
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.sampled_from(["A", CALLS]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8)
#: A valid row with some fields replaced, deleted or added: exercises both outcomes.
rows = st.builds(
    lambda base, changes, drop: {k: v for k, v in {**base, **changes}.items() if k not in drop},
    st.fixed_dictionaries({"idx": st.integers(0, 3), "prompt": st.just("Q?"), "system": st.just("None"),
                           "answer": st.sampled_from(["A", CALLS])}),
    st.dictionaries(st.sampled_from(["idx", "prompt", "system", "answer", "kind", "x"]) | st.text(max_size=4),
                    json_values, max_size=3),
    st.sets(st.sampled_from(["idx", "prompt", "system", "answer"]), max_size=2))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(file_rows=st.lists(rows, min_size=1, max_size=4) | st.lists(rows | st.text(max_size=10), max_size=4),
       tool=st.booleans())
@example(file_rows=[], tool=False)
@example(file_rows=[{"idx": 0, "prompt": "Q?", "answer": "A"}], tool=False)
@example(file_rows=[{"idx": 0, "prompt": "Q?", "answer": float("nan")}], tool=False)  # NaN: not JSON for Arrow
@example(file_rows=[{"idx": 0, "prompt": "Q?", "answer": "A", "": 1}], tool=False)
@example(file_rows=[{"idx": 2**70, "prompt": "Q?", "answer": "A"}], tool=False)
def test_row_validator(file_rows, tool):
    """Rows (dicts dumped, strings written raw) either load or raise a ValueError naming the file."""
    import datasets

    with tempfile.TemporaryDirectory() as tmp, \
            mock.patch.object(datasets.config, "HF_DATASETS_CACHE", Path(tmp) / "cache"):
        path = Path(tmp) / "test.json"
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in file_rows))
        task = ToolUseTask(test_file=str(path)) if tool else MultipleChoiceTask("mcq", test_file=str(path))
        try:
            ds = task.load("test")
        except ValueError as exc:
            message = str(exc)
            event(message.split(": ")[2] if " row " in message else message.split(f"{path} ")[1][:60])
            assert message.startswith(f"task {task.name!r}: {path} ") and "\n" not in message, message
        else:
            event("loaded")
            assert len(ds) == len(set(ds["uid"])) >= 1
            for row in ds:
                assert isinstance(row["prompt"], str) and row["prompt"].strip()
                if tool:
                    task.gold(row)
                else:
                    assert isinstance(row["answer"], str) and row["answer"].strip()


@settings(max_examples=300, deadline=2000)
@given(st.lists(st.sampled_from(["<think>", "</think>", "a", " ", "\n", "<", "think>", "\u2003"]), max_size=14))
def test_strip_thinking_equals_the_reference_regex(parts):
    """The linear scan gives the non-greedy regex's result (the regex is quadratic on many
    unclosed tags: 112 KB took 6.7 s)."""
    import re

    from lit_scsdpo.chat import strip_thinking

    text = "".join(parts)
    assert strip_thinking(text) == re.sub(r"<think>.*?</think>\s*", "", text, flags=re.DOTALL)


def test_strip_thinking_is_linear():
    import time

    from lit_scsdpo.chat import strip_thinking

    t0 = time.perf_counter()
    strip_thinking("<think> " * 50_000)
    assert time.perf_counter() - t0 < 1.0

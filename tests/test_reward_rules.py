"""The rewards follow the official SDPO reward code rule for rule (docs/tasks.md).

The one-line ``ORACLE_*`` expressions below are the official rules as the SDPO code writes
them (regexes / ``str.split``); the package computes the same in linear time, and the property
tests check that the two agree on arbitrary text.
"""

import json
import re
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lit_scsdpo.tasks.files import (MultipleChoiceTask, ToolUseTask, official_input_blocks, official_mcq_answer,
                                    official_mcq_format, official_tool_format, parse_tool_calls)

MCQ = MultipleChoiceTask("mcq", test_file="unused.json")
TOOL = ToolUseTask(test_file="unused.json")
FIXED = ToolUseTask(test_file="unused.json", parser="json")
CALLS = json.dumps([{"Action": "getFacts", "Action_Input": '{"limit": 3}'}])


def ORACLE_MCQ(text):  # mcq.extract_xml_answer
    return text.split("<answer>")[-1].split("</answer>")[0].strip()


def ORACLE_MCQ_FORMAT(text):  # mcq.is_correct_format
    return re.search(r"<answer>\s*(A|B|C|D)\s*</answer>$", text) is not None


def ORACLE_ACTIONS(text):  # tooluse.extract_actions
    return re.findall(r"Action:\s*(\w+)", text)


def ORACLE_BLOCKS(text):  # tooluse.extract_action_inputs, before json.loads
    return re.findall(r"Action Input:\s*({.*?})", text, re.DOTALL)


def ORACLE_TOOL_FORMAT(text):  # tooluse.is_correct_format
    return re.compile(r"Action:.*?\nAction Input:.*?", re.DOTALL).search(text) is not None


def mcq(text, gold="B"):
    return MCQ.score(text, {"answer": gold})


def tool(text, calls, task=TOOL):
    return task.score(text, {"answer": json.dumps(calls)})


# ------------------------------------------------------------------ multiple choice
@pytest.mark.parametrize("text,pred,reward", [
    ("<answer>B</answer>", "B", 1),
    ("<answer>A</answer> no wait <answer>B</answer>", "B", 1),  # several tags: the last wins
    ("<answer>B</answer> no wait <answer>A</answer>", "A", 0),
    ("<answer>\n  B \t\n</answer>", "B", 1),  # whitespace and newlines inside the tags
    ("B", "B", 1),  # no tags at all: the whole text, stripped
    ("\n B \n", "B", 1),
    ("The answer is B", "The answer is B", 0),
    ("<answer>B", "B", 1),  # a lone opening tag: everything after it
    ("<answer>B and more", "B and more", 0),
    ("B</answer>", "B", 1),  # a lone closing tag: everything before it
    ("I think B</answer>", "I think B", 0),
    ("<answer>A</answer><answer>B", "B", 1),  # last open tag without a close
    ("</answer>B<answer>", "", 0),  # nothing after the last open tag
    ("<answer>b</answer>", "b", 0),  # lower case: not the letter (no normalisation)
    ("<answer>B: 56 pC</answer>", "B: 56 pC", 0),  # option text instead of the letter
    ("<answer>56 pC</answer>", "56 pC", 0),
    ("<answer>(B)</answer>", "(B)", 0),
    ("<answer>B.</answer>", "B.", 0),
    ("<ANSWER>B</ANSWER>", "<ANSWER>B</ANSWER>", 0),  # tags are case-sensitive
    ("<answer>\u00a0B\u2003</answer>", "B", 1),  # unicode whitespace is stripped too
    ("<answer>Ｂ</answer>", "Ｂ", 0),  # a full-width letter is another character
    ("<answer>B</answer>\n\nλόγος 世界 🙂", "B", 1),
    ("", "", 0),
])
def test_mcq_rule(text, pred, reward):
    score = mcq(text)
    assert (score.pred, score.reward, score.feedback) == (pred, reward, "")
    assert score.pred == ORACLE_MCQ(text) and score.format_ok == ORACLE_MCQ_FORMAT(text)


@pytest.mark.parametrize("text,ok", [
    ("<answer>B</answer>", True), ("x <answer>\nD\n</answer>\n", True),  # `$`: one final newline
    ("<answer>B</answer>\n\n", False), ("<answer>B</answer> ", False), ("<answer>B</answer> done", False),
    ("<answer>E</answer>", False), ("<answer>b</answer>", False), ("B", False),
])
def test_mcq_format_rule(text, ok):
    assert official_mcq_format(text) is ok and mcq(text).format_ok is ok


def test_mcq_gold_is_compared_exactly():
    assert mcq("<answer>C</answer>", gold="C").reward == 1.0
    assert mcq("<answer>C</answer>", gold="c").reward == 0.0


# ------------------------------------------------------------------ tool use
def test_tool_actions_found_anywhere():
    text = "I will call it. Action: getFacts now\nThought: ok Action:\n  getMore"
    assert parse_tool_calls(text)[0] == ["getFacts", "getMore"] == ORACLE_ACTIONS(text)  # \s* crosses lines


def test_tool_action_names_stop_at_non_word_characters():
    text = "Action: get-weather\nAction Input: {}\nAction: [Optional]update\nAction Input: {}"
    assert parse_tool_calls(text)[0] == ["get"]  # `[` is not \w: the second name is not found
    assert parse_tool_calls(text, "json")[0] == ["get-weather", "[Optional]update"]
    assert parse_tool_calls("Action: 検索\nAction Input: {}")[0] == ["検索"]  # \w is unicode


def test_tool_inputs_official_blocks():
    nested = 'Action: a\nAction Input: {"x": 1, "o": {"k": 2}}'
    assert parse_tool_calls(nested) == (["a"], {}, False)  # the block ends at the first "}"
    assert parse_tool_calls(nested, "json") == (["a"], {"x": 1, "o": {"k": 2}}, True)
    brace = 'Action: a\nAction Input: {"q": "a}b"}'
    assert parse_tool_calls(brace)[1] == {} and parse_tool_calls(brace, "json")[1] == {"q": "a}b"}
    # a block that fails to decode runs to the next "}" and swallows the next input
    swallow = 'Action: a\nAction Input: {oops\nAction: b\nAction Input: {"y": 2}'
    assert parse_tool_calls(swallow)[1] == {} and parse_tool_calls(swallow, "json")[1] == {"y": 2}
    # not an object, or not right after the marker: no block
    for text in ['Action Input: ["x"]', 'Action Input: ```json\n{"x": 1}```', "Action Input: 3"]:
        assert parse_tool_calls(text)[1] == {} == parse_tool_calls(text, "json")[1]
    merged = 'Action Input: {"x": 1, "y": 1}\nAction Input: {"x": 2}\nAction Input: {"x": 3, "x": 4}'
    assert parse_tool_calls(merged) == ([], {"x": 4, "y": 1}, True)  # later keys win


def test_tool_reward_multiset_and_merged_inputs():
    calls = [{"Action": "a", "Action_Input": '{"x": 1}'}, {"Action": "a", "Action_Input": '{"x": 2}'}]
    assert tool('Action: a\nAction Input: {"x": 1}\nAction: a\nAction Input: {"x": 2}', calls).reward == 1
    assert tool('Action: a\nAction Input: {"x": 2}\nAction: a\nAction Input: {"x": 1}', calls).reward == 0  # merged x=1
    assert tool('Action: a\nAction: a\nAction Input: {"x": 2}', calls).reward == 1  # only the merged dict counts
    assert tool('Action: a\nAction Input: {"x": 2}', calls).reward == 0  # one call: multiset differs
    assert tool('Action: a\nAction: a\nAction Input: {"x": 2.0}', calls).reward == 1  # Python ==: 2 == 2.0
    assert tool('Action: a Action: a Action Input: {"x": 2}', calls).reward == 1  # one line is enough


def test_tool_pred_feedback_and_format():
    score = tool("Thought: no tool", [{"Action": "a", "Action_Input": '{"x": 1}'}])
    assert score == tool("Thought: no tool", [{"Action": "a", "Action_Input": {"x": 1}}])  # input as object
    assert score.reward == 0 and score.pred == "Actions: [], Inputs: {}" and not score.format_ok
    assert score.feedback == ("Actions mismatch: predicted [], expected ['a']; "
                              "Action inputs mismatch: predicted {}, expected {'x': 1}")
    good = tool('Action: a\nAction Input: {"x": 1}', [{"Action": "a", "Action_Input": '{"x": 1}'}])
    assert (good.reward, good.pred, good.feedback, good.format_ok) == (1, "Actions: ['a'], Inputs: {'x': 1}", "", True)


@pytest.mark.parametrize("text,ok", [
    ("Action: a\nAction Input: {}", True), ("Action:\nAction Input:", True),
    ("x Action: a b c\n\nAction Input: 1", True),
    ("Action: a Action Input: {}", False),  # "Action Input:" must start a line
    ("Action Input: {}\nAction: a", False), ("", False),
])
def test_tool_format_rule(text, ok):
    assert official_tool_format(text) is ok is ORACLE_TOOL_FORMAT(text)


def test_parser_argument():
    with pytest.raises(ValueError, match="parser: expected one of"):
        ToolUseTask(test_file="x.json", parser="lenient")


# ------------------------------------------------------------------ the oracles on arbitrary text
FRAGMENTS = ["<answer>", "</answer>", "Action:", "Action: ", "Action Input:", "Action Input: ", "\nAction Input:",
             "{", "}", '{"x": 1}', '{"x": {"y": 2}}', '"', "[", "]", "A", "B", "D", "b", "a_1", "-", "\n", " ",
             "\t", "\u00a0", "\u2003", "é", "世", "\x00", "$"]
texts = st.one_of(st.text(max_size=60), st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=4)),
                                                  max_size=30).map("".join))
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(text=texts)
@example(text="<answer>B</answer>\n")
@example(text="Action Input: {oops\nAction Input: {}")
def test_equal_to_the_official_expressions(text):
    assert official_mcq_answer(text) == ORACLE_MCQ(text)
    assert official_mcq_format(text) == ORACLE_MCQ_FORMAT(text)
    assert list(official_input_blocks(text)) == ORACLE_BLOCKS(text)
    assert official_tool_format(text) == ORACLE_TOOL_FORMAT(text)
    actions, inputs, _ = parse_tool_calls(text)
    expected = {}
    for block in ORACLE_BLOCKS(text):
        try:
            expected.update(json.loads(block))
        except json.JSONDecodeError:
            pass
    assert actions == ORACLE_ACTIONS(text) and inputs == expected


@PROPS
@given(text=texts, gold=st.sampled_from(["A", "B", "C", "D"]))
def test_no_verifier_raises(text, gold):
    for task in (MCQ, MultipleChoiceTask("mcq", test_file="unused.json", require_tags=True)):
        score = task.score(text, {"answer": gold})
        assert score.reward in (0.0, 1.0) and isinstance(score.format_ok, bool)
    for task in (TOOL, FIXED):
        score = task.score(text, {"answer": CALLS})
        assert score.reward in (0.0, 1.0) and isinstance(score.pred, str) and isinstance(score.feedback, str)


# ------------------------------------------------------------------ bounded time on long outputs
LONG = [
    "<answer>" * 20_000, "</answer>" * 20_000, "x" * 200_000 + "<answer>B</answer>", "<answer> " + " " * 200_000,
    "Action:" * 20_000, "Action: " + " " * 200_000, "Action:\n" * 20_000 + "Action", "Action Input: {" * 20_000,
    "Action Input: " * 20_000, 'Action Input: {"x": 1}\n' * 10_000, "Action Input: {" + "}" * 200_000,
    'Action: a\nAction Input: {"x": ' + "[" * 100_000 + "]" * 100_000 + "}", "{" * 200_000, "世界" * 100_000,
]


@pytest.mark.parametrize("text", LONG, ids=lambda t: repr(t[:16]))
def test_long_outputs_score_in_bounded_time(text):
    assert len(text) >= 100_000
    start = time.perf_counter()
    for task in (MCQ, TOOL, FIXED):
        task.score(text, {"answer": CALLS if isinstance(task, ToolUseTask) else "B"})
    # measured <= 0.06 s; a quadratic scan of 100k characters takes minutes (slack for a loaded machine)
    assert time.perf_counter() - start < 5.0

"""Loading: SciKnowEval through ``datasets.load_dataset`` (a local folder laid out like the hub
dataset, so the hub code path runs offline) and SDPO rows from parquet files."""

import json
import re
from pathlib import Path

import datasets
import pytest

from lit_scsdpo.tasks.files import (SCIKNOWEVAL_SYSTEM_PROMPT, MultipleChoiceTask, SciKnowEvalTask, ToolUseTask)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SUFFIX = " The solution will be evaluated in a mcq environment."  # SDPO appends it to `description`
TAIL = "\nPlease reason step by step."


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")


def hub_row(question, labels="AB", answer="A", domain="Chemistry", kind="mcq-2-choices", level="L3"):
    return {"question": question, "choices": {"text": [f"option {c}" for c in labels], "label": list(labels)},
            "answerKey": answer, "type": kind, "domain": domain, "details": {"level": level, "task": "t"}}


def write_hub(root, rows):
    """``rows`` in the hub layout: ``data/<Domain>/sciknoweval_<domain>_test.jsonl`` (split test)."""
    for domain in {r.get("domain") or "Chemistry" for r in rows}:
        path = Path(root) / "data" / domain / f"sciknoweval_{domain.lower()}_test.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows if (r.get("domain") or "Chemistry") == domain))
    return str(root)


def mixed_rows(n=25):
    """``n`` kept chemistry rows (q0..q{n-1}) among rows the filter drops."""
    rows = []
    for i in range(n):
        rows.append(hub_row(f"q{i}?", labels="ABCD" if i % 2 else "AB", answer="B",
                            kind="mcq-4-choices" if i % 2 else "mcq-2-choices"))
        rows.append(hub_row(f"drop-level{i}", level="L2"))
        rows.append(hub_row(f"drop-type{i}", kind="true_or_false"))
        rows.append(hub_row(f"drop-domain{i}", domain="Physics"))
    return rows


def test_filter_format_and_split(tmp_path):
    task = SciKnowEvalTask("Chemistry", hub_id=write_hub(tmp_path / "hub", mixed_rows()))
    train, val, test = task.load("train"), task.load("validation"), task.load("test")
    assert task.name == "sciknoweval/chemistry" and (len(train), len(val)) == (22, 3)  # ceil(0.1 * 25) = 3
    ids = {split: list(ds["idx"]) for split, ds in (("train", train), ("validation", val), ("test", test))}
    assert ids["validation"] == ids["test"] and sorted(ids["train"] + ids["test"]) == list(range(25))
    expected = datasets.Dataset.from_dict({"i": list(range(25))}).train_test_split(test_size=0.1, seed=42)
    assert ids["train"] == list(expected["train"]["i"]) and ids["test"] == list(expected["test"]["i"])
    row = next(r for r in train if r["idx"] == 1)  # kept rows are numbered in hub order
    assert row["prompt"] == "q1?\n\nA: option A\nB: option B\nC: option C\nD: option D" + TAIL
    assert row["system"] == SCIKNOWEVAL_SYSTEM_PROMPT and row["answer"] == "B"
    assert row["uid"] == "sciknoweval/chemistry/train/1" and row["data_source"] == "sciknoweval/chemistry"
    assert task.messages(row) == [{"role": "system", "content": SCIKNOWEVAL_SYSTEM_PROMPT},
                                  {"role": "user", "content": row["prompt"]}]
    assert task.score("<answer>B</answer>", row).reward == 1.0


def test_filter_arguments(tmp_path):
    hub = write_hub(tmp_path / "hub", mixed_rows(5))
    assert len(SciKnowEvalTask("chemistry", hub_id=hub, levels=["L2", "L3"], test_size=0.2).load("test")) == 2
    assert len(SciKnowEvalTask("physics", hub_id=hub).load("train")) == 4
    with pytest.raises(ValueError, match=r"domain: expected one of \['biology', 'chemistry', 'material', 'physics'\]"):
        SciKnowEvalTask("materials")


@pytest.mark.parametrize("change,field,message", [
    ({"answerKey": "E"}, "answerKey", "'E' is not one of the labels ['A', 'B', 'C', 'D']"),
    ({"answerKey": None}, "answerKey", "None is not one of the labels"),
    ({"question": ""}, "question", "is missing or empty"),
    ({"question": None}, "question", "is missing or empty"),
    ({"choices": {"text": ["x"], "label": ["A", "B"]}}, "choices", "with equal, non-zero lengths"),
    ({"details": {"task": "t"}}, "details.level", "is missing or not a string"),
])
def test_bad_kept_row_names_the_row_and_field(tmp_path, change, field, message):
    rows = [r for r in mixed_rows(3) if r["domain"] == "Chemistry"]
    rows[3] = {**rows[3], **change}  # the second kept row, row 3 of the hub split
    hub = write_hub(tmp_path / "hub", rows)
    with pytest.raises(ValueError) as info:
        SciKnowEvalTask("chemistry", hub_id=hub).load("train")
    assert str(info.value).startswith(f"task 'sciknoweval/chemistry': {hub} row 3 (0-based, split 'test'): "
                                      f"field '{field}' ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dropped_rows_are_not_checked(tmp_path):
    rows = mixed_rows(3) + [{**hub_row("junk", domain="Physics"), "answerKey": "Z", "details": {"task": "t"}},
                            {**hub_row("junk", kind="open-ended-qa"), "choices": None, "details": None},
                            {**hub_row("junk", level="L1"), "answerKey": "Z", "question": None}]
    assert len(SciKnowEvalTask("chemistry", hub_id=write_hub(tmp_path / "hub", rows)).load("test")) == 1


def test_missing_column_no_rows_and_load_failure(tmp_path, monkeypatch):
    rows = [{k: v for k, v in hub_row("q").items() if k != "answerKey"}]
    with pytest.raises(ValueError, match=r"has no column 'answerKey' \(expected SciKnowEval's"):
        SciKnowEvalTask("chemistry", hub_id=write_hub(tmp_path / "a", rows)).load("test")
    with pytest.raises(ValueError, match=r"no row of .* has domain 'Chemistry', type in .* and details.level in"):
        SciKnowEvalTask("chemistry", hub_id=write_hub(tmp_path / "b", [hub_row("q", level="L1")])).load("test")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"load_dataset\('hicai-zju/SciKnowEval', split='test'\) failed: no network"):
        SciKnowEvalTask("biology").load("train")


# ------------------------------------------------------------------ the real files, rebuilt
def as_hub_row(row, domain):
    """The hub row an SDPO row was made from (inverts SDPO's ``format``)."""
    question = row["description"][:-len(SUFFIX)]
    body = row["prompt"][len(question) + 2:-len(TAIL)]
    labels = re.findall(r"(?:^|\n)([A-D]): ", body)
    texts = re.split(r"(?:^|\n)[A-D]: ", body)[1:]
    hub = hub_row(question, labels="".join(labels), answer=row["answer"], domain=domain,
                  kind=f"mcq-{len(labels)}-choices")
    hub["choices"]["text"] = texts
    return hub


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not available")
def test_hub_path_reproduces_the_sdpo_files(tmp_path):
    files = {s: [json.loads(line) for line in open(DATA / "sciknoweval" / "physics" / f"{s}.json")]
             for s in ("train", "test")}
    by_idx = sorted(files["train"] + files["test"], key=lambda r: r["idx"])
    rows = []
    for r in by_idx:
        rows += [as_hub_row(r, "Physics"), hub_row("an L2 row", domain="Physics", level="L2")]
        assert SciKnowEvalTask._sdpo_row(rows[-2], r["idx"])["prompt"] == r["prompt"]  # the inversion is exact
    task = SciKnowEvalTask("physics", hub_id=write_hub(tmp_path / "hub", rows))
    for split, mine in (("train", task.load("train")), ("test", task.load("test"))):
        assert [(r["idx"], r["prompt"], r["system"], r["answer"]) for r in mine] == \
               [(r["idx"], r["prompt"], r["system"], r["answer"]) for r in files[split]]


# ------------------------------------------------------------------ parquet files in the SDPO format
MCQ_ROWS = [{"idx": i, "prompt": f"Q{i}? A: x B: y", "system": "None", "answer": "B", "kind": "mcq"} for i in range(3)]


def parquet(tmp_path, rows, name="test.parquet"):
    path = tmp_path / name
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def test_parquet_files_load(tmp_path):
    task = MultipleChoiceTask("mcq", test_file=parquet(tmp_path, MCQ_ROWS),
                              train_file=parquet(tmp_path, MCQ_ROWS, "t.parquet"))
    assert task.load("train")["uid"] == ["mcq/train/0", "mcq/train/1", "mcq/train/2"]
    calls = json.dumps([{"Action": "a", "Action_Input": "{}"}])
    tools = ToolUseTask(test_file=parquet(tmp_path, [{**r, "answer": calls} for r in MCQ_ROWS], "tool.parquet"))
    assert len(tools.load("validation")) == 3


@pytest.mark.parametrize("change,message", [
    ({"answer": ""}, "row 1 (0-based): field 'answer' is missing or empty"),
    ({"answer": " B"}, "row 1 (0-based): field 'answer' ' B' has surrounding whitespace"),
])
def test_parquet_bad_row(tmp_path, change, message):
    rows = [dict(r) for r in MCQ_ROWS]
    rows[1].update(change)
    path = parquet(tmp_path, rows)
    with pytest.raises(ValueError) as info:
        MultipleChoiceTask("mcq", test_file=path).load("test")
    assert str(info.value).startswith(f"task 'mcq': {path} {message}")


def test_parquet_unreadable_or_empty(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=rf"task 'mcq': {bad} could not be read by the datasets parquet loader"):
        MultipleChoiceTask("mcq", test_file=str(bad)).load("test")
    empty = str(tmp_path / "empty.parquet")
    datasets.Dataset.from_list(MCQ_ROWS).select([]).to_parquet(empty)
    with pytest.raises(ValueError, match=rf"task 'mcq': {empty} is empty \(no rows\)"):
        MultipleChoiceTask("mcq", test_file=empty).load("test")


def test_verl_preprocessed_rows_get_a_hint(tmp_path):
    verl = [{"data_source": "sciknoweval", "prompt": [{"role": "user", "content": "Q?"}],
             "reward_model": {"style": "mcq", "ground_truth": "A"}}]
    with pytest.raises(ValueError, match=r"row 0 \(0-based\): field 'prompt' is a chat \(a verl-preprocessed file\?\)"):
        MultipleChoiceTask("mcq", test_file=parquet(tmp_path, verl)).load("test")

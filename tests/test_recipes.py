"""The paper recipes in configs/paper: one base file plus a model, an algorithm and a task file.

* every combination parses with the real CLI (in this process, ``lit_scsdpo.cli.run`` with
  ``--print_config``: about 0.6 s each) and has the paper's settings (docs/specification.md §1.8, §3.3);
* one combination parses through the installed console script (a subprocess, as a user runs it);
* the flat ``scsdpo_qwen3_8b_sciknoweval.yaml`` equals its composition;
* every task file's data loads from a folder laid out like the SDPO release's ``datasets/``
  (``../shared/data`` when it is present), and the tool-use file without its data stops with one
  line naming the file and where to get it;
* Qwen3 x SC-SDPO x chemistry, shrunk to the shipped tiny model on CPU, runs one optimizer step
  through the console script.
"""

import contextlib
import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lit_scsdpo.cli import run

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
DATA = ROOT.parent / "shared" / "data"

MODELS = {"qwen3_8b": "Qwen/Qwen3-8B", "olmo3_7b": "allenai/Olmo-3-7B-Instruct"}
ALGOS = {  # algo file -> (module class, lr, optimizer steps per rollout batch, SC-SDPO weighting)
    "grpo": ("lit_scsdpo.GRPO", 1e-5, 1, False),
    "grpo_offpolicy": ("lit_scsdpo.GRPO", 1e-6, 4, False),
    "sdpo": ("lit_scsdpo.SDPO", 1e-5, 1, False),
    "scsdpo": ("lit_scsdpo.SDPO", 1e-5, 1, True),
}
SCIKNOWEVAL = {"chemistry": (1890, 210), "physics": (720, 80), "biology": (450, 50), "material": (841, 94)}
TASKS = [*SCIKNOWEVAL, "tooluse"]
BASE_CALLBACKS = ["lit_scsdpo.callbacks.StepProgressBar", "lit_scsdpo.callbacks.RunCheckpoint",
                  "lit_scsdpo.callbacks.MajorityVoteEvaluation", "lit_scsdpo.callbacks.CurriculumLogger"]
DIFFICULTY = "lit_scsdpo.callbacks.DifficultyWeighting"


def recipe(model, algo, task):
    """The four --config files of one recipe, in the documented order."""
    return [str(PAPER / "base.yaml"), str(PAPER / "model" / f"{model}.yaml"),
            str(PAPER / "algo" / f"{algo}.yaml"), str(PAPER / "task" / f"{task}.yaml")]


def config_args(files):
    return [arg for f in files for arg in ("--config", f)]


def parse_in_process(files):
    """``lit-scsdpo fit --config ... --print_config`` in this process: the printed config."""
    out, argv = io.StringIO(), sys.argv
    sys.argv = argv[:1]  # LightningCLI warns when it is given args and sys.argv has some too (pytest's)
    try:
        with contextlib.redirect_stdout(out):
            run(["fit", *config_args(files), "--print_config"])
    except SystemExit as exc:  # --print_config exits 0 after printing
        assert not exc.code, f"{files}: exit status {exc.code}"
    finally:
        sys.argv = argv
    return yaml.safe_load(out.getvalue())


def run_cli(args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("lit-scsdpo")), *args]  # the installed console script
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def parsed():
    return {(m, a, t): parse_in_process(recipe(m, a, t)) for m in MODELS for a in ALGOS for t in TASKS}


def test_the_folder_holds_exactly_the_tested_files():
    """A new model / algo / task file must come with its expectations here."""
    assert sorted(p.stem for p in (PAPER / "model").glob("*.yaml")) == sorted(MODELS)
    assert sorted(p.stem for p in (PAPER / "algo").glob("*.yaml")) == sorted(ALGOS)
    assert sorted(p.stem for p in (PAPER / "task").glob("*.yaml")) == sorted(TASKS)


def test_every_recipe_has_the_paper_settings(parsed):
    for (model, algo, task), cfg in parsed.items():
        where = f"{model} x {algo} x {task}"
        cls, lr, updates, weighted = ALGOS[algo]
        tr, m, d = cfg["trainer"], cfg["model"], cfg["data"]
        a = m["init_args"]
        # trainer: FSDP2 over 4 GPUs, bf16 compute, 5 h, validation every 5 steps
        assert (tr["accelerator"], tr["devices"], tr["strategy"], tr["precision"]) == \
            ("gpu", 4, "fsdp2", "bf16-mixed"), where
        assert (tr["max_time"], tr["check_val_every_n_epoch"], cfg["seed_everything"]) == ("00:05:00:00", 5, 0), where
        # where it logs: <default_root_dir>/<algo>/<task>/version_N
        assert tr["default_root_dir"] == f"lightning_logs/{model}", where
        assert (tr["logger"]["init_args"]["save_dir"], tr["logger"]["init_args"]["name"]) == (algo, task), where
        # callbacks: base.yaml's list survives the later files; SC-SDPO appends its weighting
        cbs = tr["callbacks"]
        assert [c["class_path"] for c in cbs] == BASE_CALLBACKS + ([DIFFICULTY] if weighted else []), where
        assert cbs[1]["init_args"]["every_n_epochs"] == 5, where
        if weighted:
            dw = cbs[-1]["init_args"]
            assert (dw["exponent"], dw["normalization"], dw["scope"], dw["binary"], dw["floor"]) == \
                (0.5, "batch_mean", "all", False, 0.0), where
        # model: class, checkpoint, precision, optimiser (a nested override keeps the other keys)
        assert (m["class_path"], a["model_name_or_path"], a["torch_dtype"]) == (cls, MODELS[model], "bfloat16"), where
        assert (a["gradient_checkpointing"], a["logits_chunk_size"]) == (True, 1024), where
        assert a["optim"] == {"lr": lr, "betas": [0.9, 0.999], "weight_decay": 0.01, "warmup_steps": 10,
                              "grad_clip": 1.0}, where
        assert a["rollout_correction"] == {"mode": "auto", "cap": 2.0}, where
        if cls == "lit_scsdpo.SDPO":
            dist, teacher, reprompt = a["distillation"], a["teacher"], a["reprompt"]
            assert (dist["alpha"], dist["topk"], dist["add_tail"], dist["full_logit_distillation"],
                    dist["is_clip"]) == (0.5, 100, True, True, 2.0), where
            assert (teacher["mode"], teacher["rate"], reprompt["include_feedback"], a["grpo_lambda"]) == \
                ("ema", 0.05, False, 0.0), where
            assert (reprompt["dont_reprompt_on_self_success"], reprompt["max_teacher_prompt_tokens"]) == \
                (True, 10240), where
            assert a["loss_agg_mode"] == "seq-mean-token-mean", where
        else:
            assert (a["loss_agg_mode"], a["grpo"]["eps_low"], a["grpo"]["eps_high"]) == ("token-mean", 0.2, 0.28), where
            assert (a["grpo"]["norm_adv_by_std"], a["kl_coef"]) == (False, 0.0), where
            assert "distillation" not in a and "teacher" not in a, where  # SDPO's arguments do not leak
        # data: B = 32, G = 8, vLLM, lengths, sampling, validation 16 at 0.6 / 0.95, thinking off
        assert (d["questions_per_step"], d["rollouts_per_question"], d["updates_per_batch"]) == (32, 8, updates), where
        assert d["micro_batch_questions"] == 1, where
        assert d["engine"]["class_path"] == "lit_scsdpo.rollout.VLLMEngine", where
        assert d["engine"]["init_args"]["max_model_len"] == 10240, where
        assert d["sampling"] == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 8192}, where
        assert d["evaluation"]["samples"] == 16, where
        assert d["evaluation"]["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8192}, where
        assert (d["max_prompt_tokens"], d["enable_thinking"], d["success_threshold"]) == (2048, False, 0.5), where
        # task: SciKnowEval from the hub, ToolAlpaca (not on the hub in SDPO's format) from data/tooluse/
        t = d["task"]
        if task == "tooluse":
            assert t["class_path"] == "lit_scsdpo.tasks.files.ToolUseTask", where
            assert t["init_args"]["name"] == "tooluse", where
            assert (t["init_args"]["data_dir"], t["init_args"]["test_file"], t["init_args"]["train_file"]) == \
                ("data", None, None), where
        else:
            assert t["class_path"] == "lit_scsdpo.tasks.files.SciKnowEvalTask", where
            i = t["init_args"]
            assert (i["domain"], i["name"], i["hub_id"], i["data_dir"]) == \
                (task, f"sciknoweval/{task}", "hicai-zju/SciKnowEval", None), where
            assert (i["levels"], i["types"], i["test_size"], i["seed"]) == \
                (["L3"], ["mcq-4-choices", "mcq-2-choices"], 0.1, 42), where


def test_algorithms_differ_only_where_they_differ(parsed):
    for model in MODELS:
        for task in TASKS:
            sdpo, scsdpo = parsed[model, "sdpo", task], parsed[model, "scsdpo", task]
            grpo, off = parsed[model, "grpo", task], parsed[model, "grpo_offpolicy", task]
            assert sdpo["model"] == scsdpo["model"]  # SC-SDPO is SDPO plus a callback
            assert sdpo["data"] == scsdpo["data"] == grpo["data"]
            assert {**off["data"], "updates_per_batch": 1} == grpo["data"]
            for cfg in (scsdpo, grpo, off):
                cbs = [c for c in cfg["trainer"]["callbacks"] if c["class_path"] != DIFFICULTY]
                assert cbs == sdpo["trainer"]["callbacks"]
                assert {**cfg["trainer"], "callbacks": None, "logger": None} == \
                    {**sdpo["trainer"], "callbacks": None, "logger": None}


def test_models_and_tasks_change_only_their_keys(parsed):
    ref = parsed["qwen3_8b", "scsdpo", "chemistry"]
    olmo = parsed["olmo3_7b", "scsdpo", "chemistry"]
    assert {**olmo["model"]["init_args"], "model_name_or_path": None} == \
        {**ref["model"]["init_args"], "model_name_or_path": None}
    assert olmo["data"] == ref["data"]
    for task in TASKS:
        other = parsed["qwen3_8b", "scsdpo", task]
        assert {**other["data"], "task": None} == {**ref["data"], "task": None}
        assert other["model"] == ref["model"]


def test_flat_paper_file_equals_its_composition(parsed):
    flat = parse_in_process([str(PAPER / "scsdpo_qwen3_8b_sciknoweval.yaml")])
    composed = copy.deepcopy(parsed["qwen3_8b", "scsdpo", "chemistry"])
    assert flat["trainer"]["logger"]["init_args"]["name"] == "scsdpo_qwen3_8b_chemistry"
    for cfg in (flat, composed):  # they differ only in where they log
        cfg["trainer"] = {**cfg["trainer"], "default_root_dir": None, "logger": None}
    assert flat == composed


def test_docs_name_only_existing_recipe_files():
    """docs/reproducing.md's commands and file names point at files that exist."""
    import re

    text = (ROOT / "docs" / "reproducing.md").read_text(encoding="utf-8")
    named = set(re.findall(r"configs/paper/[\w/.]+\.yaml", text))
    assert named, "no recipe file named in docs/reproducing.md"
    for path in named:
        assert (ROOT / path).is_file(), path
    for kind, names in (("MODEL", MODELS), ("ALGO", ALGOS), ("TASK", TASKS)):
        choices = re.search(rf"^{kind}=\w+ +# (.+)$", text, re.MULTILINE).group(1)
        assert sorted(choices.replace(" ", "").split("|")) == sorted(names), kind


def test_console_script_parses_a_recipe():
    out = run_cli(["fit", *config_args(recipe("olmo3_7b", "scsdpo", "tooluse")), "--print_config"])
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["init_args"]["model_name_or_path"] == "allenai/Olmo-3-7B-Instruct"
    assert cfg["trainer"]["callbacks"][-1]["class_path"] == DIFFICULTY
    assert cfg["data"]["task"]["class_path"] == "lit_scsdpo.tasks.files.ToolUseTask"


def task_of(parsed, task, **override):
    """The task object a recipe builds, with ``override`` as ``--data.task.init_args.*`` would."""
    import importlib

    spec = parsed["qwen3_8b", "sdpo", task]["data"]["task"]
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**{**spec["init_args"], **override})


@pytest.mark.skipif(not DATA.is_dir(), reason="the SDPO data files (../shared/data) are not here")
def test_task_files_load_from_a_data_dir(parsed):
    """With ``--data.task.init_args.data_dir`` (docs/reproducing.md) every task reads the folder
    laid out like the SDPO release's ``datasets/``; every row checks out and the row counts are the
    SDPO release's. The folder here has ToolAlpaca's test split only."""
    for task in TASKS:
        loaded = task_of(parsed, task, data_dir=str(DATA))
        if task == "tooluse":
            assert len(loaded.load("test")) == 68
            assert loaded.files["train"] == str(DATA / "tooluse" / "train.json")
        else:
            assert (len(loaded.load("train")), len(loaded.load("test"))) == SCIKNOWEVAL[task]


def test_missing_data_is_one_line_naming_the_file_and_its_source(parsed, tmp_path, monkeypatch):
    """Run from a folder without data/: the tool-use recipe names the missing file and where
    to get it; a SciKnowEval recipe given a wrong data_dir does the same."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        task_of(parsed, "tooluse").load("train")
    message = str(info.value)
    assert message.startswith("task 'tooluse': file not found: data/tooluse/train.json (") and "\n" not in message
    assert "https://github.com/lasgroup/SDPO" in message and "--data.task.init_args.data_dir" in message
    with pytest.raises(FileNotFoundError) as info:
        task_of(parsed, "physics", data_dir="nowhere").load("train")
    message = str(info.value)
    assert message.startswith("task 'sciknoweval/physics': file not found: nowhere/sciknoweval/physics/train.json (")
    assert "https://github.com/lasgroup/SDPO" in message and "hicai-zju/SciKnowEval" in message and "\n" not in message


@pytest.mark.slow
def test_recipe_runs_one_step_with_the_tiny_model(tmp_path):
    """Qwen3 x SC-SDPO x chemistry as composed, with the shipped tiny model on CPU: one step.
    The SciKnowEval prompts do not fit the tiny model (256 positions, a character tokenizer), so
    the task is the built-in arithmetic; everything else (SDPO settings, the appended
    DifficultyWeighting, the callbacks, bf16 checkpoint read, chunked logits, activation
    checkpointing, grad clip) is the recipe's."""
    import torch

    shrink = ["--model.init_args.model_name_or_path", "asset:tiny-qwen3",
              "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
              "--trainer.precision", "32-true", "--data.engine", "lit_scsdpo.rollout.HFGenerateEngine",
              "--trainer.max_epochs", "1", "--trainer.max_time", "null", "--trainer.default_root_dir", str(tmp_path),
              "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
              "--model.init_args.logits_chunk_size", "16", "--model.init_args.reprompt.max_teacher_prompt_tokens", "256",
              "--data.task", "lit_scsdpo.tasks.ArithmeticTask", "--data.task.init_args.levels", "[0, 1, 2]",
              "--data.task.init_args.train_size", "64", "--data.task.init_args.val_size", "4",
              "--data.questions_per_step", "4", "--data.rollouts_per_question", "4",
              "--data.sampling.max_new_tokens", "12", "--data.evaluation.samples", "4",
              "--data.evaluation.sampling.max_new_tokens", "12", "--data.max_prompt_tokens", "128", "--threads", "1"]
    out = run_cli(["fit", *config_args(recipe("qwen3_8b", "scsdpo", "chemistry")), *shrink], timeout=240)
    assert out.returncode == 0, out.stderr[-5000:]
    run_dir = tmp_path / "scsdpo" / "chemistry" / "version_0"  # <root>/<algo>/<task>/version_N
    assert "[validation] step 1: mean@4" in out.stdout
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    # (enable_progress_bar false drops the progress bar; the rest, DifficultyWeighting last, stays)
    assert [c["class_path"] for c in saved["trainer"]["callbacks"]] == BASE_CALLBACKS[1:] + [DIFFICULTY]
    assert saved["model"]["init_args"]["teacher"]["rate"] == 0.05

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = run_dir.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    scalars = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert len(scalars["train/loss"]) == 1 and torch.isfinite(torch.tensor(scalars["train/loss"])).all()
    # the SC-SDPO weights were applied: mean 1 over the batch (or all 0 when every p-hat is 0 or 1)
    assert scalars["train/weight_mean"][0] == pytest.approx(1.0, abs=1e-4) or scalars["train/weight_mean"][0] == 0
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 1
    assert any(k.startswith("teacher.weights.") for k in state["state_dict"])


SMOLLM2 = ROOT / "configs" / "smollm2" / "base.yaml"


@pytest.mark.parametrize("algo", ["grpo", "sdpo", "scsdpo"])
def test_smollm2_recipe_composes_with_the_paper_algo_files(algo):
    """configs/smollm2/base.yaml (the real-model CPU run of docs/results.md) with each paper
    algo file: the algorithm settings are the paper's, the rest is the CPU setting."""
    cfg = parse_in_process([str(SMOLLM2), str(PAPER / "algo" / f"{algo}.yaml")])
    cls, _, _, weighted = ALGOS[algo]
    a, d, tr = cfg["model"]["init_args"], cfg["data"], cfg["trainer"]
    assert cfg["model"]["class_path"] == cls
    assert a["model_name_or_path"] == "~/.cache/lit_scsdpo/smollm2-135m-instruct"  # scripts/get_smollm2.py
    assert (tr["accelerator"], tr["default_root_dir"], tr["logger"]["init_args"]["save_dir"]) == \
        ("cpu", "lightning_logs/smollm2", algo)
    assert (a["torch_dtype"], a["logits_chunk_size"], a["optim"]["lr"]) == ("float32", "auto", 2e-5)
    assert d["engine"] is None  # the default: HFGenerateEngine
    assert d["task"]["init_args"]["answer_format"] == "last_number"
    assert (d["questions_per_step"], d["rollouts_per_question"]) == (4, 8)
    assert [c["class_path"] for c in tr["callbacks"]] == BASE_CALLBACKS + ([DIFFICULTY] if weighted else [])
    if cls == "lit_scsdpo.SDPO":
        assert (a["distillation"]["alpha"], a["teacher"]["rate"], a["reprompt"]["max_teacher_prompt_tokens"]) == \
            (0.5, 0.05, 10240)

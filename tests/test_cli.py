"""The real CLI as a subprocess: fit with the three tiny configs on a random-init tiny model,
TensorBoard events and a checkpoint (with the teacher) read back, then validate --ckpt_path."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "tiny"


def tiny_config(algo: str) -> list[str]:
    """The embedded default for ``algo``: ``configs/tiny/base.yaml`` then the algorithm's file."""
    return ["--config", str(CONFIGS / "base.yaml"), "--config", str(CONFIGS / f"{algo}.yaml")]

pytestmark = pytest.mark.slow


def run_cli(args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    # the installed console script, as a user runs it (its exit status must be 0)
    cmd = [str(Path(sys.executable).with_name("lit-scsdpo")), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def small_overrides(model_path, log_dir):
    return [
        "--model.init_args.model_name_or_path", str(model_path),
        "--trainer.logger.init_args.save_dir", str(log_dir),
        "--trainer.max_epochs", "3",
        "--trainer.check_val_every_n_epoch", "2",
        "--trainer.log_every_n_steps", "1",  # every scalar every step (configs/tiny: every 5)
        "--data.task", "tests.toy.DigitTask",
        "--data.task.init_args.train_size", "64",
        "--data.task.init_args.val_size", "6",
        "--data.task.init_args.test_size", "6",
        "--data.questions_per_step", "4",
        "--data.rollouts_per_question", "4",
        "--data.micro_batch_questions", "2",
        "--data.sampling.max_new_tokens", "10",
        "--data.evaluation.samples", "2",
        "--data.evaluation.sampling.max_new_tokens", "10",
    ]


def read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    assert events, f"no TensorBoard events under {log_dir}"
    tags = {}
    for ev in events:
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            tags.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return tags


def test_tiny_configs_are_a_base_and_one_small_file_per_algorithm():
    """configs/tiny is composed like configs/paper: base.yaml holds everything the algorithms
    share; each algorithm file names its runs and sets its module, SC-SDPO's is SDPO's plus the
    weighting callback (appended to base.yaml's list)."""
    base = yaml.safe_load((CONFIGS / "base.yaml").read_text())
    algos = {a: yaml.safe_load((CONFIGS / f"{a}.yaml").read_text()) for a in ("grpo", "sdpo", "scsdpo")}
    for name, cfg in algos.items():
        assert set(cfg) == {"trainer", "model"}, name
        assert cfg["trainer"]["logger"] == {"init_args": {"name": name}}, name
        assert set(cfg["model"]["init_args"]) <= {"distillation", "teacher", "reprompt", "grpo", "loss_agg_mode"}, name
    assert set(algos["scsdpo"]["trainer"]) == {"logger", "callbacks+"}
    assert [c["class_path"] for c in algos["scsdpo"]["trainer"]["callbacks+"]] == \
        ["lit_scsdpo.callbacks.DifficultyWeighting"]
    assert algos["sdpo"]["model"] == algos["scsdpo"]["model"] and algos["grpo"]["model"]["class_path"] == "lit_scsdpo.GRPO"
    assert "DifficultyWeighting" not in str(base["trainer"]["callbacks"])
    assert base["model"]["init_args"]["optim"]["lr"] == 5e-5 and base["data"]["rollouts_per_question"] == 8


def test_print_config():
    out = run_cli(["fit", *tiny_config("scsdpo"), "--print_config"], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["class_path"] == "lit_scsdpo.SDPO"
    assert cfg["model"]["init_args"]["teacher"]["rate"] == 0.05
    assert cfg["trainer"]["reload_dataloaders_every_n_epochs"] == 1


@pytest.mark.parametrize("algo", ["grpo", "sdpo", "scsdpo"])
def test_fit_then_validate(algo, tiny_model_path, tmp_path):
    t0 = time.time()
    out = run_cli(["fit", *tiny_config(algo), *small_overrides(tiny_model_path, tmp_path)])
    fit_seconds = time.time() - t0
    assert out.returncode == 0, out.stderr[-5000:]
    assert fit_seconds < 120, f"fit took {fit_seconds:.0f}s"
    scalars = read_scalars(tmp_path)
    for tag in ["train/loss", "rollout/reward_mean", "rollout/pass_rate_mean", "rollout/frac_p0",
                "rollout/frac_p1", "train/weight_mean", "train/weight_min", "train/weight_max",
                "rollout/response_length", "train/entropy", "train/grad_norm", "train/lr",
                "rollout/gen_tokens_per_s", "train/tokens_per_s", "time/generate", "time/student",
                "time/optimizer", "val/reward"]:
        assert tag in scalars, f"{tag} not logged; have {sorted(scalars)}"
    assert len(scalars["train/loss"]) == 3  # one optimizer step per epoch
    assert all(v == v for v in scalars["train/loss"])  # no NaN
    if algo != "grpo":
        assert "train/reprompt_fraction" in scalars and "time/teacher" in scalars
        assert max(scalars["train/reprompt_fraction"]) > 0
    w_min, w_max = scalars["train/weight_min"], scalars["train/weight_max"]
    if algo == "scsdpo":  # pass-rate weights: not all 1 (mean 1 over the batch, or all 0)
        assert any(lo < 1 - 1e-6 or hi > 1 + 1e-6 for lo, hi in zip(w_min, w_max))
        assert all(abs(m - 1) < 1e-4 or m == 0 for m in scalars["train/weight_mean"])
    else:
        assert all(w == 1.0 for w in w_min + w_max)

    ckpts = sorted(tmp_path.rglob("last.ckpt"))
    assert ckpts, "no checkpoint written"
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)
    keys = state["state_dict"].keys()
    assert any(k.startswith("policy.") for k in keys)
    if algo != "grpo":
        assert any(k.startswith("teacher.weights.") for k in keys), "the EMA teacher is not in the checkpoint"
    assert state["RolloutDataModule"]["cursor"] > 0  # the question sampler resumes

    out = run_cli(["validate", *tiny_config(algo), *small_overrides(tiny_model_path, tmp_path),
                   "--ckpt_path", str(ckpts[0])])
    assert out.returncode == 0, out.stderr[-5000:]
    assert "val/reward" in out.stdout
    # the MajorityVoteEvaluation table, one row per data source (DigitTask keeps arithmetic/L*)
    assert "Evaluation per data source" in out.stdout
    for text in ["mean@2", "maj@2", "pass@2", "format_rate", "arithmetic/L0", "arithmetic/L1", "all"]:
        assert text in out.stdout, text


def test_fit_ddp_two_cpu_processes(tiny_model_path, tmp_path):
    """`--trainer.strategy ddp --trainer.devices 2` on CPU (gloo): rollouts per rank, global
    SC-SDPO weights and loss normalisers, rank-0 logging; no collective is called on one rank
    only (a hang would time out here)."""
    args = ["fit", *tiny_config("scsdpo"), *small_overrides(tiny_model_path, tmp_path),
            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.devices", "2", "--trainer.strategy", "ddp"]
    out = run_cli(args, timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    assert "[validation] step 2:" in out.stdout
    assert sorted(tmp_path.rglob("last.ckpt")) and sorted(tmp_path.rglob("curriculum.csv"))
    scalars = read_scalars(tmp_path)
    assert len(scalars["train/loss"]) == 2 and "curriculum/frac_mixed" in scalars


def test_paper_config_parses():
    out = run_cli(["fit", "--config", str(ROOT / "configs" / "paper" / "scsdpo_qwen3_8b_sciknoweval.yaml"),
                   "--print_config"], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = yaml.safe_load(out.stdout)
    m = cfg["model"]["init_args"]
    assert (m["optim"]["lr"], m["teacher"]["rate"], m["distillation"]["topk"], m["distillation"]["alpha"]) == \
        (1e-5, 0.05, 100, 0.5)
    assert (cfg["data"]["questions_per_step"], cfg["data"]["rollouts_per_question"]) == (32, 8)
    assert cfg["data"]["evaluation"]["sampling"] == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 8192}


def test_paper_recipe_runs_sharded_on_two_cpu_processes_then_resumes_on_one(tmp_path):
    """The paper config as written (fsdp2, bf16-mixed, grad_clip 1.0, chunked logits, activation
    checkpointing, bf16 checkpoint read), shrunk to the tiny asset and CPU: before, its
    ``strategy: fsdp`` died at the first optimizer step on GPUs (Lightning's FSDP precision plugin
    refuses norm clipping) and was refused on CPU. Then: its sharded last.ckpt resumes on one
    process (consolidated by the CLI), and exports to a HF folder."""
    from transformers import AutoModelForCausalLM

    paper = ROOT / "configs" / "paper" / "scsdpo_qwen3_8b_sciknoweval.yaml"
    shrink = ["--trainer.accelerator", "cpu", "--trainer.max_time", "null",
              "--trainer.check_val_every_n_epoch", "100", "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.model_name_or_path", "asset:tiny-qwen3", "--model.init_args.logits_chunk_size", "16",
              "--model.init_args.reprompt.max_teacher_prompt_tokens", "256",
              "--data.task", "lit_scsdpo.tasks.ArithmeticTask", "--data.task.init_args.levels", "[0, 1, 2]",
              "--data.task.init_args.train_size", "64", "--data.task.init_args.val_size", "4",
              "--data.questions_per_step", "4", "--data.rollouts_per_question", "4",
              "--data.sampling.max_new_tokens", "12", "--data.evaluation.sampling.max_new_tokens", "12",
              "--data.max_prompt_tokens", "128", "--threads", "1",
              "--data.engine", "lit_scsdpo.rollout.HFGenerateEngine"]  # vLLM: tests/test_vllm.py
    out = run_cli(["fit", "--config", str(paper), *shrink, "--trainer.devices", "2", "--trainer.max_epochs", "2"],
                  timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    [folder] = sorted(tmp_path.rglob("last.ckpt"))
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2  # one shard per rank
    scalars = read_scalars(tmp_path)
    assert len(scalars["train/loss"]) == 2 and all(torch.isfinite(torch.tensor(scalars["train/grad_norm"])))
    # export the sharded checkpoint as a HF model
    from lit_scsdpo.checkpoints import load_checkpoint

    full = load_checkpoint(folder)
    assert full["global_step"] == 2
    out = run_cli(["export", "--ckpt_path", str(folder), "--out", str(tmp_path / "hf"), "--teacher"])
    assert out.returncode == 0, out.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    for k, v in model.state_dict().items():
        assert torch.equal(v, full["state_dict"]["policy." + k]), k
    assert (tmp_path / "hf" / "teacher" / "config.json").is_file()
    # the same run continues on one process from the sharded folder
    out = run_cli(["fit", "--config", str(paper), *shrink, "--trainer.devices", "1", "--trainer.strategy", "auto",
                   "--trainer.max_epochs", "3", "--ckpt_path", str(folder)], timeout=300)
    assert out.returncode == 0, out.stderr[-5000:]
    assert "consolidating" in out.stdout
    assert len(read_scalars(tmp_path)["train/loss"]) == 3  # one more step
    assert [p.name for p in folder.parents[2].iterdir()] == ["version_0"]  # in the same log folder
    assert torch.load(folder, map_location="cpu", weights_only=False)["global_step"] == 3  # now one file


@pytest.mark.parametrize("cls", ["lit_scsdpo.SDPO", "lit_scsdpo.GRPO"])
def test_help_lists_the_base_options_and_the_groups_with_their_docstrings(cls):
    """The base options are declared once (``PolicyOptimization``) and reach the subclasses as
    ``**kwargs``: the CLI still lists every one, with its docstring, next to the groups."""
    out = run_cli(["fit", "--model.help", cls], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    text = " ".join(out.stdout.split())
    for option, doc in [("--model.model_name_or_path", "a local path or hub id"), ("--model.optim.lr", "peak learning rate"),
                        ("--model.max_nonfinite_steps", "stop the run"), ("--model.rollout_correction.cap", "truncation"),
                        ("--model.logits_chunk_size", "chunks of this many"), ("--model.grpo.eps_high", "clip-higher")]:
        assert option in text and doc in text, option
    sdpo_only = ("--model.distillation.alpha", "--model.teacher.rate", "--model.reprompt.max_teacher_prompt_tokens")
    assert all((o in text) == (cls == "lit_scsdpo.SDPO") for o in sdpo_only)

"""A new user's first hour (issue "first hour"): a resume cannot silently change the run, every
mistake is one line before the weights load, nothing already written changes after a failed
launch (checksums of the run folder), TensorBoard has loss and reward at every step, greedy
decoding works. The real CLI as a subprocess; a copy of the tiny model with garbage weights
proves that a launch was refused before it read them."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lit_scsdpo import launch
from lit_scsdpo.entry import join_negative_values
from lit_scsdpo.errors import condense_parser_message, one_line

from .test_cli import CONFIGS, read_scalars, run_cli, tiny_config

SMALL = [
    "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.num_sanity_val_steps", "0",
    "--data.task.init_args.train_size", "32", "--data.task.init_args.val_size", "4",
    "--data.questions_per_step", "4", "--data.rollouts_per_question", "2", "--data.micro_batch_questions", "2",
    "--data.sampling.max_new_tokens", "8", "--data.evaluation.samples", "2", "--data.evaluation.sampling.max_new_tokens", "8",
    "--trainer.enable_progress_bar", "false",
]


# ------------------------------------------------------------------ pure parts
def test_resume_differences_refuse_what_changes_the_run_and_apply_the_rest():
    recorded = {"model": {"class_path": "lit_scsdpo.GRPO", "init_args": {"optim": {"lr": 5e-5}, "grpo": {"eps_high": 0.28}}},
                "trainer": {"max_epochs": 2, "callbacks": [{"class_path": "lit_scsdpo.callbacks.RunCheckpoint",
                                                            "init_args": {"every_n_epochs": 25}}]},
                "data": {"rollouts_per_question": 8, "evaluation": {"samples": 8}}, "seed_everything": 0}
    same = json.loads(json.dumps(recorded))
    assert launch.resume_differences(recorded, same) == ([], [])
    given = json.loads(json.dumps(recorded))
    given["model"]["init_args"]["optim"]["lr"] = 1e-3
    given["trainer"]["max_epochs"] = 3
    given["trainer"]["callbacks"][0]["init_args"]["every_n_epochs"] = 5
    given["trainer"]["callbacks"].append({"class_path": "lit_scsdpo.callbacks.DifficultyWeighting"})
    given["data"]["evaluation"]["samples"] = 16
    given["ckpt_path"] = "ignored"
    refused, applied = launch.resume_differences(recorded, given)
    assert refused == ["model.init_args.optim.lr: 5e-05 -> 0.001",
                       "trainer.callbacks[DifficultyWeighting]: '<unset>' -> 'present'"]
    assert applied == ["data.evaluation.samples: 8 -> 16", "trainer.callbacks[RunCheckpoint].every_n_epochs: 25 -> 5",
                       "trainer.max_epochs: 2 -> 3"]
    assert launch.resume_differences({"a": 1}, {"a": 1.0}) == ([], [])  # 1 == 1.0: yaml spells floats either way


def test_argv_and_messages():
    assert join_negative_values(["--model.init_args.optim.lr", "-1e-5", "--x", "-3", "-h"]) == \
        ["--model.init_args.optim.lr=-1e-5", "--x=-3", "-h"]
    assert join_negative_values(["--a=1", "-2"]) == ["--a=1", "-2"]  # not a value of --a=1
    msg = ('Parser key "model":\n  Does not validate against any of the Union subtypes\nSubtypes: [...]\nErrors:\n'
           '  - Problem with given class_path \'lit_scsdpo.SDPO\':\n    Validation failed: No action for key "alpah" '
           'to check\n  - Expected a <class \'NoneType\'>\nGiven value type: <class \'Namespace\'>')
    assert condense_parser_message(msg).startswith("unknown option 'alpah' under model")
    try:
        try:
            raise ValueError("model.alpha must be in [0, 1], got 2")
        except ValueError:
            raise RuntimeError("wrapper") from None
    except RuntimeError as exc:
        assert one_line(exc) == "RuntimeError: wrapper"  # not a parser's wrapper: the outer one


def test_greedy_decoding_repeats_one_response(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from lit_scsdpo.rollout import HFGenerateEngine, SamplingConfig

    engine = HFGenerateEngine()
    engine.update_weights(AutoModelForCausalLM.from_pretrained(tiny_model_path))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=6)
    three = engine.generate([[1, 2, 3], [4, 5]], 3, greedy)
    one = engine.generate([[1, 2, 3], [4, 5]], 1, greedy)
    assert three.prompt_index == [0, 0, 0, 1, 1, 1]
    assert three.response_ids == [one.response_ids[0]] * 3 + [one.response_ids[1]] * 3
    assert three.logprobs[:3] == [one.logprobs[0]] * 3


# ------------------------------------------------------------------ the real CLI
def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def _error_line(out) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip() and ln != "Seed set to 0"]
    errors = [ln for ln in lines if "error:" in ln]
    assert out.returncode != 0 and len(errors) == 1 and len(lines) <= 3, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    return errors[0]


def test_first_hour_launches(tmp_path):
    logs = tmp_path / "logs"
    base = ["fit", *tiny_config("grpo"), *SMALL, "--trainer.logger.init_args.save_dir", str(logs)]
    out = run_cli(base)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = logs / "grpo" / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # loss, reward and grad norm at every optimizer step although log_every_n_steps is 5 (defect 6)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ("train/loss", "rollout/reward_mean", "train/grad_norm", "train/lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2], tag
    assert torch.load(ckpt, weights_only=True)["lit_scsdpo"]["run_config"]["model"]["class_path"] == "lit_scsdpo.GRPO"

    poisoned = tmp_path / "poisoned"
    from lit_scsdpo.assets import resolve_model_path

    shutil.copytree(resolve_model_path("asset:tiny-qwen3"), poisoned)
    (poisoned / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "empty.json").write_text("")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    fresh = ["fit", *tiny_config("sdpo"), *SMALL, "--trainer.logger.init_args.save_dir", str(logs),
             "--model.init_args.model_name_or_path", str(poisoned)]
    mcq = ["--data.task", "lit_scsdpo.tasks.files.MultipleChoiceTask", "--data.task.init_args.name", "mcq",
           "--data.task.init_args.test_file", str(tmp_path / "empty.json"),
           "--data.task.init_args.train_file", str(tmp_path / "empty.json")]
    bad = {
        "resume, another algorithm": ([*base[:4], str(CONFIGS / "sdpo.yaml"), *base[5:], "--ckpt_path", str(ckpt)],
                                      "model.class_path: 'lit_scsdpo.GRPO' -> 'lit_scsdpo.SDPO'"),
        "resume, new lr": ([*base, "--ckpt_path", str(ckpt), "--model.init_args.optim.lr", "1e-3"],
                           "model.init_args.optim.lr: 5e-05 -> 0.001"),
        "resume, G=1": ([*base, "--ckpt_path", str(ckpt), "--data.rollouts_per_question", "1"],
                        "data.rollouts_per_question: 2 -> 1"),
        "truncated checkpoint": ([*base, "--ckpt_path", str(truncated)], f"{truncated}': not a readable"),
        "missing checkpoint": ([*base, "--ckpt_path", str(tmp_path / "nope.ckpt")], "no such file"),
        "B=0": ([*fresh, "--data.questions_per_step", "0"], "data.questions_per_step must be >= 1"),
        "SDPO G=1": ([*fresh, "--data.rollouts_per_question", "1"], "data.rollouts_per_question must be >= 2"),
        "empty task file": ([*fresh[:3], "--trainer.max_epochs", "1", "--trainer.logger.init_args.save_dir", str(logs),
                             "--model.init_args.model_name_or_path", str(poisoned), *mcq], "is empty (no rows)"),
        "no vLLM": ([*fresh, "--data.engine", "lit_scsdpo.rollout.VLLMEngine"], "vllm is not installed"),
        "GPU on CPU": ([*fresh, "--trainer.accelerator", "gpu"], "no CUDA GPU is visible"),
        "temperature 0": ([*fresh, "--data.sampling.temperature", "0"], "data.sampling.temperature=0"),
        "val temperature -1": ([*fresh, "--data.evaluation.sampling.temperature", "-1"], "data.evaluation.sampling.temperature"),
        "negative lr": ([*fresh, "--model.init_args.optim.lr", "-1e-5"], "model.optim.lr must be > 0"),
        "typo": ([*fresh, "--model.init_args.alpah", "0.5"], "Option 'alpah' is not accepted"),
    }
    if torch.cuda.is_available():
        del bad["GPU on CPU"]
    before = _digest(logs)
    for name, (argv, expected) in bad.items():
        line = _error_line(run_cli(argv))
        assert expected in line, (name, line)
        assert "garbage" not in line and "header" not in line, (name, line)  # refused before the weights load
        assert _digest(logs) == before, f"{name} changed the run folder"
        assert sorted(p.name for p in logs.iterdir()) == ["grpo"], name  # no empty version_N elsewhere

    # a safe change is applied and said; config.yaml records it only once the resume trained
    out = run_cli([*base, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resume: applied trainer.max_epochs: 2 -> 3" in out.stdout
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 3
    assert sorted(p.name for p in (logs / "grpo").iterdir()) == ["version_0"]
    assert len(read_scalars(run_dir)["train/loss"]) >= 3  # steps 1, 2 and the resumed 3

    # a new run from the weights, with another algorithm: its own folder
    out = run_cli([*base[:4], str(CONFIGS / "sdpo.yaml"), *base[5:], "--weights_from", str(ckpt)])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "a new run from the policy weights" in out.stdout
    assert (logs / "sdpo" / "version_0" / "checkpoints" / "last.ckpt").exists()

    # validate says which model configuration it uses
    out = run_cli(["validate", *tiny_config("sdpo"), *SMALL, "--ckpt_path", str(ckpt),
                   "--trainer.logger.init_args.save_dir", str(tmp_path / "val")])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "the model configuration is the checkpoint's (lit_scsdpo.GRPO" in out.stdout
    assert "logs in" in out.stdout and "dirpath has changed" not in out.stderr


def test_fast_help():
    import subprocess
    import sys
    import time

    t0 = time.time()
    out = subprocess.run([sys.executable, "-m", "lit_scsdpo.entry", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "export" in out.stdout and "consolidate" in out.stdout
    assert "torch" not in subprocess.run([sys.executable, "-c", "import sys, lit_scsdpo.entry; "
                                          "print(' '.join(m for m in sys.modules if m.startswith('torch')))"],
                                         capture_output=True, text=True).stdout
    assert time.time() - t0 < 60  # generous: the point is no torch import (checked above)


pytestmark = pytest.mark.slow

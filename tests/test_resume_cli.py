"""The real CLI killed with SIGKILL in the middle of a run and resumed with --ckpt_path: the
resumed run logs the same per-step losses and rewards as the uninterrupted one, in the same
log folder, with no duplicated curriculum rows (issue 11, defect 1)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .test_cli import ROOT, small_overrides, tiny_config

pytestmark = pytest.mark.slow

OVERLAY = """
trainer:
  max_epochs: 10
  check_val_every_n_epoch: 4
  num_sanity_val_steps: 0
  enable_progress_bar: false
  callbacks:
    - class_path: lit_scsdpo.callbacks.RunCheckpoint
      init_args:
        every_n_epochs: 2
    - class_path: lit_scsdpo.callbacks.CurriculumLogger
    - class_path: lit_scsdpo.callbacks.DifficultyWeighting
    - class_path: lit_scsdpo.callbacks.MajorityVoteEvaluation
"""


def command(model_path, log_dir, overlay, *extra):
    exe = str(Path(sys.executable).with_name("lit-scsdpo"))
    args = ["fit", *tiny_config("scsdpo"), "--config", str(overlay),
            *small_overrides(model_path, log_dir), "--trainer.max_epochs", "10", *extra]
    return [exe, *args]


def scalars_by_step(log_dir, tag):
    """{step: value}, the last value written for each step (files in write order)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for ev in sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out.update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def test_sigkill_then_resume_is_exact(tiny_model_path, tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(OVERLAY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    a, b = tmp_path / "a", tmp_path / "b"
    out = subprocess.run(command(tiny_model_path, a, overlay), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]

    proc = subprocess.Popen(command(tiny_model_path, b, overlay), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = sorted(b.rglob("last.ckpt"))
        if found:
            ckpt = found[0]
            break
        time.sleep(0.02)
    time.sleep(0.3)  # somewhere in the steps after the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert killed_at < 10

    out = subprocess.run(command(tiny_model_path, b, overlay, "--ckpt_path", str(ckpt)), cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    assert [p.name for p in (b / "scsdpo").iterdir()] == ["version_0"]  # logs continue in the same folder
    for tag in ["train/loss", "rollout/reward_mean", "train/grad_norm"]:
        want, got = scalars_by_step(a, tag), scalars_by_step(b, tag)
        assert sorted(want) == list(range(1, 11)) and got == want, tag
    rows = list(csv.DictReader(open(next(b.rglob("curriculum.csv")))))
    assert [int(r["epoch"]) for r in rows] == [e for e in range(10) for _ in range(4)]  # no duplicated rows
    # the per-question validation rows: the same as the uninterrupted run's, none twice
    want, got = (open(next(d.rglob("val_per_question.csv"))).read().splitlines() for d in (a, b))
    assert got == want and {line.split(",")[0] for line in want[1:]} == {"2", "4", "6", "8", "10"}

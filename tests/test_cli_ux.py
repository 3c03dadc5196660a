"""The command line as a user meets it: options that cannot work are refused at parse time,
`--trainer.enable_progress_bar false` and `--trainer.default_root_dir` work with the shipped
configs, one checkpoint file per save, TensorBoard steps that match the printed ones, no
warning noise, and `test` prints the per-source table (real CLI, subprocesses)."""

import os
import time

import pytest

from .test_cli import read_scalars, run_cli, small_overrides, tiny_config

pytestmark = pytest.mark.slow

# warnings a user cannot act on, silenced by the CLI (see lit_scsdpo.cli._silence_warnings)
NOISE = ["LeafSpec", "module(s) in eval mode", "litlogger", "has `__len__` defined", "smaller than the logging interval",
         "dirpath has changed", "Loading weights", "Generating train split"]


@pytest.mark.parametrize("args", [["--optimizer", "SGD"], ["--lr_scheduler.class_path", "torch.optim.lr_scheduler.StepLR"]])
def test_optimizer_options_are_refused_at_parse_time(args):
    t0 = time.time()
    out = run_cli(["fit", *tiny_config("scsdpo"), *args], timeout=120)
    seconds = time.time() - t0
    assert out.returncode != 0
    option = args[0].split(".")[0]
    assert f"{option} is not an option" in out.stderr and "model.init_args.optim" in out.stderr, out.stderr[-3000:]
    assert "Epoch" not in out.stdout and "NoneType" not in out.stderr  # refused before any training
    assert seconds < 60, f"took {seconds:.0f}s"
    if option == "--optimizer":  # LightningCLI's automatic --optimizer / --lr_scheduler are not offered
        help_text = run_cli(["fit", "--help"], timeout=120).stdout
        assert "--optimizer" not in help_text and "--lr_scheduler" not in help_text


def test_fit_without_progress_bar_under_default_root_dir(tiny_model_path, tmp_path):
    """The shipped config with `--trainer.enable_progress_bar false` (it lists a progress bar)
    and `--trainer.default_root_dir` (its logger's save_dir is relative): logs and
    checkpoints go under the root; one checkpoint file, last.ckpt; with two
    micro-batches per step the val/* TensorBoard steps are the printed optimizer steps, the
    baseline at step 0."""
    overrides = small_overrides(tiny_model_path, "unused")
    i = overrides.index("--trainer.logger.init_args.save_dir")
    del overrides[i:i + 2]  # the config's own save_dir: lightning_logs
    root = tmp_path / "root"
    out = run_cli(["fit", *tiny_config("scsdpo"), *overrides,
                   "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                   "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root)])
    assert out.returncode == 0, out.stderr[-5000:]
    run_dir = root / "lightning_logs" / "scsdpo" / "version_0"
    assert f"logs in {run_dir}" in out.stdout
    assert sorted(run_dir.glob("events.out.tfevents.*")) and (run_dir / "curriculum.csv").exists()

    # one file's worth of bytes per save, resumable from last.ckpt (ModelCheckpoint(save_last="link")
    # makes it a link to epoch=..-step=...ckpt; a callback that writes last.ckpt alone passes too)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    files = [p for p in ckpt_dir.iterdir() if not p.is_symlink()]
    assert last.exists() and len(files) == 1, sorted(os.listdir(ckpt_dir))
    assert last.resolve() == files[0].resolve()

    assert "[validation] before training:" in out.stdout
    printed = [int(line.split("step ")[1].split(":")[0]) for line in out.stdout.splitlines()
               if line.startswith("[validation] step ")]
    assert printed == [1, 2]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(sorted(run_dir.glob("events.out.tfevents.*"))[0]), size_guidance={"scalars": 0})
    acc.Reload()
    for tag in ["val/all/mean@2", "val/arithmetic/L0/maj@2", "val/reward"]:
        assert [e.step for e in acc.Scalars(tag)] == [0, 1, 2], tag
    assert len(read_scalars(run_dir)["train/loss"]) == 2

    for noise in NOISE:
        assert noise not in out.stderr, f"warning noise: {noise}"


def test_test_subcommand_prints_the_table(tiny_model_path, tmp_path):
    out = run_cli(["test", *tiny_config("scsdpo"), *small_overrides(tiny_model_path, tmp_path)])
    assert out.returncode == 0, out.stderr[-5000:]
    assert "Evaluation per data source" in out.stdout
    for text in ["mean@2", "maj@2", "pass@2", "format_rate", "arithmetic/L0", "arithmetic/L1", "test/all/mean@2"]:
        assert text in out.stdout, text
    assert "best_" not in out.stdout  # best-so-far is for validation during training only

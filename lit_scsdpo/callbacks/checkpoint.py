"""Checkpoints for long RL runs: every N steps, atomically, and on preemption.

A paper-scale run is days of GPU time, and a cluster stops jobs with SIGTERM (SIGKILL 30-90 s
later). :class:`RunCheckpoint` is Lightning's ``ModelCheckpoint`` with the behaviour such runs
need:

* ``last.ckpt`` is written at the end of every ``every_n_epochs``-th rollout batch (one epoch =
  one rollout batch), independent of validation, and at the end of training: always at an
  epoch boundary, never in the middle of one, so a resume continues exactly where the run was.
  The file is written to a temporary name and renamed, so a kill during the write leaves the
  previous checkpoint intact. One file per save. It is streamed to disk
  (:class:`StreamingCheckpointIO`): Lightning's own atomic save serialises the whole checkpoint
  into memory first, +2 GB of RAM at 135M parameters, ~130 GB at 8B without sharding.
* SIGTERM and SIGINT (Ctrl+C) request a stop (``lit_scsdpo.interrupt``). Generation stops at the
  next token, and training at the next micro-batch, on every rank together; the partial step is
  abandoned. Nothing of it has touched the weights, optimizer, scheduler or teacher, so the
  checkpoint written is the state at the end of the last completed step: the live weights with
  the loop, sampler and RNG states recorded at that step's end. If the signal arrives after a
  step's update (during its validation), the validation is skipped and the step is saved.
  The process then exits with status 128 + signal (143 for SIGTERM, 130 for SIGINT). A second
  SIGINT stops at once.
* Any other failure while the weights are still those of the last completed step (a crash in
  generation, scoring or the loss; :class:`~lit_scsdpo.module.TrainingDiverged`) also saves
  that state before the error propagates.

The checkpoint holds the policy, the EMA teacher, the optimizer and scheduler, the
DataModule's sampler (question order, cursor, sampling-stream index and seed), the callbacks'
state (pass-rate history, best metrics), the loop counters and every global RNG state.
Resume with ``--ckpt_path <dir>/last.ckpt``.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import signal
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from .. import interrupt

_SIGNALS = ("SIGTERM", "SIGINT")


def rng_states() -> dict[str, Any]:
    """Every global RNG state (torch CPU and CUDA, numpy, python)."""
    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain values only, so that torch.load(weights_only=True) reads them
    state = {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                       gauss), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict[str, Any]) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StreamingCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into a temporary file beside the target, then ``os.replace``:
    atomic like Lightning's ``TorchCheckpointIO``, which first serialises the whole checkpoint
    into an in-memory buffer (the checkpoint's size again in RAM). Remote paths keep
    Lightning's implementation."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every N rollout batches, atomically, and on SIGTERM / SIGINT.

    Args:
        dirpath: where ``last.ckpt`` goes (default: ``<log dir>/checkpoints``, as Lightning).
        every_n_epochs: save every this many rollout batches (= optimizer steps on-policy).
            Saving costs about one write of weights + teacher + AdamW state (~4× the weights).
        handle_signals: stop cleanly on SIGTERM / SIGINT and save the last completed step.
        save_on_failure: on any other exception, save the last completed step if the failing
            step had not updated the weights yet.
    """

    def __init__(self, dirpath: Optional[str] = None, every_n_epochs: int = 10, handle_signals: bool = True,
                 save_on_failure: bool = True) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"RunCheckpoint.every_n_epochs must be >= 1, got {every_n_epochs}")
        super().__init__(dirpath=dirpath, save_last=True, save_top_k=0, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True)
        self.handle_signals, self.save_on_failure = handle_signals, save_on_failure
        self._snapshot: Optional[dict[str, Any]] = None  # small state at the end of the last completed step
        self._patch: Optional[dict[str, Any]] = None  # set while saving a snapshot checkpoint
        self._saved_epoch: Optional[int] = None
        self._previous_handlers: dict[int, Any] = {}
        self._rng_to_restore: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ signals
    def _install(self, trainer: pl.Trainer) -> None:
        # after Lightning's own SIGTERM handler (registered at fit start), which would stop the
        # run in the middle of an epoch with exit status 0
        if not self.handle_signals or self._previous_handlers:
            return
        for name in _SIGNALS:
            signum = getattr(signal, name)
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._make_handler(trainer))
            except ValueError:  # not the main thread: signals cannot be handled here
                return

    def _make_handler(self, trainer: pl.Trainer):
        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and interrupt.stop_requested() is not None:
                raise KeyboardInterrupt  # a second Ctrl+C: stop now
            first = interrupt.stop_requested() is None
            interrupt.request_stop(signum)
            if first:
                print(f"\n[lit-scsdpo] received {signal.Signals(signum).name}: stopping at the next boundary and "
                      f"saving the last completed step", flush=True)
                launcher = trainer.strategy.launcher
                if launcher is not None and hasattr(launcher, "kill"):
                    launcher.kill(signum)  # the other local ranks, as Lightning does
        return handler

    def _uninstall(self) -> None:
        for signum, previous in self._previous_handlers.items():
            try:
                signal.signal(signum, previous)
            except (ValueError, TypeError):
                pass
        self._previous_handlers = {}

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            interrupt.clear()
        strategy = trainer.strategy
        if type(getattr(strategy, "_checkpoint_io", None)) in (TorchCheckpointIO, type(None)) and \
                hasattr(strategy, "checkpoint_io"):
            strategy.checkpoint_io = StreamingCheckpointIO()  # the default only; a user's plugin stays

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install(trainer)
        if self._rng_to_restore is not None:  # after the sanity validation, which draws samples
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._uninstall()
        interrupt.clear()  # handled (the Preempted exit is on its way); a later run in this process starts clean

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Never save in the middle of an epoch (validation runs inside it)."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot = {
            "loops": copy.deepcopy({"fit_loop": trainer.fit_loop.state_dict(),
                                    "validate_loop": trainer.validate_loop.state_dict(),
                                    "test_loop": trainer.test_loop.state_dict(),
                                    "predict_loop": trainer.predict_loop.state_dict()}),
            "datamodule": copy.deepcopy(trainer.datamodule.state_dict()) if trainer.datamodule is not None else None,
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "rng": rng_states(),
        }
        stop = interrupt.stop_requested()
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        due = (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if not trainer.sanity_checking and (due or stop is not None or last_epoch or trainer.should_stop):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._saved_epoch = trainer.current_epoch
        if stop is not None:
            rank_zero_info(f"[lit-scsdpo] saved step {trainer.global_step} to {self.last_model_path}; "
                           f"resume with --ckpt_path {self.last_model_path}")
            raise interrupt.Preempted(stop)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._snapshot is not None and self._saved_epoch != self._snapshot["epoch"]:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._saved_epoch = self._snapshot["epoch"]

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        try:
            self._save_on_exception(trainer, exception)
        finally:  # Lightning calls no teardown hook on this path
            self._uninstall()
            interrupt.clear()

    def _save_on_exception(self, trainer: pl.Trainer, exception: BaseException) -> None:
        preempted = isinstance(exception, interrupt.Preempted)
        if not (preempted or self.save_on_failure) or trainer.state.fn != "fit":
            return
        snap = self._snapshot
        if snap is None:
            rank_zero_warn(f"{type(exception).__name__} before the first step of this run completed: nothing new "
                           f"to save" + (f" (the checkpoint it resumed from stands)" if trainer.ckpt_path else ""))
            return
        if self._saved_epoch == snap["epoch"]:
            return  # the last completed step is saved already
        if trainer.global_step != snap["global_step"]:
            rank_zero_warn(f"{type(exception).__name__} after the update of step {trainer.global_step}: the state "
                           f"is not that of a step boundary and is not saved; resume from {self.last_model_path}")
            return
        self._patch = snap
        try:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        finally:
            self._patch = None
        self._saved_epoch = snap["epoch"]
        rank_zero_info(f"[lit-scsdpo] {type(exception).__name__}: saved the last completed step "
                       f"({snap['global_step']}) to {self.last_model_path}")

    # ------------------------------------------------------------------ what a checkpoint holds
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        patch = self._patch
        checkpoint["rng_states"] = patch["rng"] if patch else rng_states()
        if patch:  # the live weights are the last completed step's; so must the counters be
            checkpoint["loops"] = patch["loops"]
            checkpoint["epoch"], checkpoint["global_step"] = patch["epoch"], patch["global_step"]
            if patch["datamodule"] is not None:
                checkpoint[type(trainer.datamodule).__qualname__] = patch["datamodule"]

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("rng_states")

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        """Write to a temporary name, then rename: a kill mid-write leaves the old file whole."""
        tmp = filepath + ".tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            if os.path.isdir(tmp) or os.path.isdir(filepath):  # sharded checkpoints are folders
                old = filepath + ".old"
                if os.path.exists(filepath):
                    os.replace(filepath, old)
                os.replace(tmp, filepath)
                if os.path.isdir(old):
                    shutil.rmtree(old, ignore_errors=True)
                elif os.path.exists(old):
                    os.remove(old)
            else:
                os.replace(tmp, filepath)
        trainer.strategy.barrier("RunCheckpoint.rename")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

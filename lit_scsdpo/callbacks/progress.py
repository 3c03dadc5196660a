"""A progress bar over optimizer steps.

One training epoch here is one rollout batch and (on-policy) one optimizer step, so
Lightning's bars, which count the batches of one epoch, show ``1/1`` per epoch with no ETA.
``StepProgressBar`` keeps one training bar for the whole run: optimizer steps done of the
run's total (``trainer.max_steps`` when set, else ``trainer.max_epochs`` ×
``data.updates_per_batch``), elapsed time, ETA and seconds per step (validation time
included, so the ETA is that of the run), the phase the loop is in (``rollout``: generating
and scoring the next batch; ``train``: forward/backward and the update; ``validation``),
and the metrics logged with ``prog_bar=True`` (``rollout/reward_mean``, ``train/loss``, the
validation headlines).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomBarColumn, RichProgressBarTheme
from rich.progress import ProgressColumn, TextColumn
from rich.text import Text

PHASES = ("rollout", "train", "validation", "done")


def total_steps(trainer: pl.Trainer) -> Optional[int]:
    """Optimizer steps in the run: ``max_steps`` when set, ``max_epochs`` × the optimizer
    steps per epoch (``data.updates_per_batch``, 1 on-policy), the smaller if both; ``None``
    if neither bounds the run (e.g. only ``max_time``)."""
    per_epoch = max(1, int(getattr(trainer.datamodule, "updates_per_batch", 1) or 1))
    bounds = []
    if trainer.max_steps is not None and trainer.max_steps >= 0:
        bounds.append(int(trainer.max_steps))
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        bounds.append(int(trainer.max_epochs) * per_epoch)
    return min(bounds) if bounds else None


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


class _CountColumn(ProgressColumn):
    def __init__(self, bar: StepProgressBar, style: Any) -> None:
        self.bar, self.style = bar, style
        super().__init__()

    def render(self, task: Any) -> Text:
        total = "--" if task.total is None or task.total == float("inf") else int(task.total)
        unit = " steps" if task.id == self.bar.train_progress_bar_id else ""
        return Text(f"{int(task.completed)}/{total}{unit}", style=self.style)


class _TimeColumn(ProgressColumn):
    def __init__(self, bar: StepProgressBar, style: Any) -> None:
        self.bar, self.style = bar, style
        super().__init__()

    def render(self, task: Any) -> Text:
        if task.id == self.bar.train_progress_bar_id:
            return Text(self.bar.timing_text(), style=self.style)
        elapsed = task.finished_time if task.finished else task.elapsed
        return Text(_hms(elapsed or 0.0), style=self.style)


class StepProgressBar(RichProgressBar):
    """A Rich progress bar whose training bar counts optimizer steps over the whole run.

    Args:
        refresh_rate: redraws per second (the bar redraws in a background thread, so the
            elapsed time moves during a long rollout); 0 disables the display.
        leave: accepted for compatibility with ``RichProgressBar`` (the training bar lasts
            the whole run anyway).
        theme: Lightning's ``RichProgressBarTheme``.
        console_kwargs: arguments of the ``rich.console.Console``.
    """

    def __init__(self, refresh_rate: int = 4, leave: bool = False,
                 theme: RichProgressBarTheme = RichProgressBarTheme(),
                 console_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave, theme=theme, console_kwargs=console_kwargs)
        self.phase = "rollout"
        self.phases_seen: list[str] = []  # the sequence of phases shown (for tests and debugging)
        self._t0: Optional[float] = None
        self._step0 = 0
        self._total: Optional[int] = None

    # ------------------------------------------------------------------ display
    @property
    def sanity_check_description(self) -> str:
        return "validation (before training)"

    @property
    def validation_description(self) -> str:
        return "validation"

    def configure_columns(self, trainer: pl.Trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(bar_width=24, complete_style=self.theme.progress_bar,
                            finished_style=self.theme.progress_bar_finished, pulse_style=self.theme.progress_bar_pulse),
            _CountColumn(self, self.theme.batch_progress),
            _TimeColumn(self, self.theme.time),
        ]

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the log version: printed with the log directory instead
        return metrics

    def timing_text(self) -> str:
        """``elapsed eta <remaining> <seconds>s/step`` of the training bar (called by the
        display thread)."""
        if self._t0 is None:
            return ""
        elapsed = time.monotonic() - self._t0
        step = self._current_step()
        done = step - self._step0
        if done <= 0:
            return f"{_hms(elapsed)} eta -:--:--"
        per_step = elapsed / done
        eta = "" if self._total is None else f" eta {_hms(per_step * max(0, self._total - step))}"
        return f"{_hms(elapsed)}{eta} {per_step:.1f}s/step"

    def _current_step(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def _bar_total(self) -> float:
        return float("inf") if self._total is None else float(self._total)  # inf: a pulsing bar

    def _description(self) -> str:
        return f"{self.phase:<10}"

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        if not self.phases_seen or self.phases_seen[-1] != phase:
            self.phases_seen.append(phase)
        self._show()

    def _show(self, hard: bool = False) -> None:
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is None:
            return
        self.progress.update(self.train_progress_bar_id, completed=self._current_step(), total=self._bar_total(),
                             description=self._description(), visible=True)
        self.refresh(hard=hard)

    def _ensure_train_bar(self, trainer: pl.Trainer) -> None:
        if self.is_disabled:
            return
        self._init_progress(trainer)
        self._total = total_steps(trainer)
        if self.progress is not None and self.train_progress_bar_id is None:
            self.train_progress_bar_id = self.progress.add_task(self._description(), total=self._bar_total(),
                                                                completed=trainer.global_step)

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0, self._step0 = time.monotonic(), trainer.global_step
        self.phases_seen = []
        self._ensure_train_bar(trainer)
        self._set_phase("rollout")

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_sanity_check_start(trainer, pl_module)
        self._set_phase("validation")

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_sanity_check_end(trainer, pl_module)
        self._t0 = time.monotonic()  # the ETA leaves the baseline validation out
        self._set_phase("rollout")  # the first batch is drawn next

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._step0 = trainer.global_step  # restored from a checkpoint by now
        self._ensure_train_bar(trainer)
        self._show()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (not Lightning's: it would reset the bar to this epoch's batches)
        self._ensure_train_bar(trainer)
        self._set_phase("train")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._update_metrics(trainer, pl_module)
        if batch_idx + 1 >= trainer.num_training_batches and self._validation_due(trainer):
            self._set_phase("validation")  # the evaluation samples are drawn next
        else:
            self._show()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_start(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._set_phase("validation")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update_metrics(trainer, pl_module)
        last = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
        done = last or trainer.should_stop or (self._total is not None and trainer.global_step >= self._total)
        self._set_phase("done" if done else "rollout")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._update_metrics(trainer, pl_module)
        self.phase = "done"
        self._show(hard=True)

    @staticmethod
    def _validation_due(trainer: pl.Trainer) -> bool:
        try:
            return bool(trainer.fit_loop.epoch_loop._should_check_val_epoch())
        except Exception:  # noqa: BLE001 - a private Lightning method; only the label depends on it
            every = trainer.check_val_every_n_epoch
            return bool(trainer.enable_validation) and (every is None or (trainer.current_epoch + 1) % every == 0)

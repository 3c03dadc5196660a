"""Watching the sweet spot move: per-epoch curriculum logging to TensorBoard.

Every training epoch (one rollout batch), after the step: histograms of the pass rates p̂
and of the normalised question weights, the shares of questions at p̂ = 0, 0 < p̂ < 1 and
p̂ = 1, the effective sample size of the weights, the mean weight per p̂ bin, and a text
table of a few completions. The per-question pass-rate history (epoch × question) is
appended to ``curriculum.csv`` in the log directory and drawn as heatmap images: mean p̂
per data source × epoch, and p̂ per question × epoch, so one sees questions move from hard
(p̂ = 0) through the sweet spot to solved (p̂ = 1).
"""

from __future__ import annotations

import csv
import html
import os
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

#: viridis-like anchors (dark blue → green → yellow) for the heatmaps; missing cells are grey
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32)
_MISSING = np.array([40, 40, 40], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map an ``[H, W]`` array of values in [0, 1] (NaN = missing) to ``[H, W, 3]`` uint8 RGB."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    rgb[np.isnan(values)] = _MISSING
    return rgb.astype(np.uint8)


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's ESS ``(Σw)² / Σw²`` (B for uniform weights, 1 if one question has all the weight)."""
    w = weights.double()
    denom = (w * w).sum()
    return float((w.sum() ** 2 / denom).item()) if denom > 0 else 0.0


class CurriculumLogger(pl.Callback):
    """Logs the curriculum (pass rates, weights, examples) every training epoch.

    Args:
        num_examples: completions shown in the text table per epoch.
        pass_rate_bins: number of equal-width p̂ bins for the mean weight per bin
            (default 8).
        heatmap_every_n_epochs: redraw the heatmap images every n epochs (cheap; default 10).
        max_heatmap_questions: most recent questions drawn in the per-question heatmap.
        filename: the per-question history file in the logger's directory.
    """

    def __init__(
        self,
        num_examples: int = 4,
        pass_rate_bins: int = 8,
        heatmap_every_n_epochs: int = 10,
        max_heatmap_questions: int = 256,
        filename: str = "curriculum.csv",
    ) -> None:
        if pass_rate_bins < 1 or heatmap_every_n_epochs < 1 or num_examples < 0:
            raise ValueError("pass_rate_bins and heatmap_every_n_epochs must be >= 1, num_examples >= 0")
        self.num_examples = num_examples
        self.pass_rate_bins = pass_rate_bins
        self.heatmap_every_n_epochs = heatmap_every_n_epochs
        self.max_heatmap_questions = max_heatmap_questions
        self.filename = filename
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _writer(trainer: pl.Trainer) -> Optional[Any]:
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                return lg.experiment
        return None

    def path(self, trainer: pl.Trainer) -> str:
        log_dir = trainer.log_dir or trainer.default_root_dir
        return os.path.join(log_dir, self.filename)

    def epoch_stats(self, p_hat: torch.Tensor, weights: torch.Tensor) -> dict[str, float]:
        """Scalars of one epoch (pure: used by tests)."""
        stats = {
            "curriculum/frac_p0": (p_hat == 0).float().mean().item(),
            "curriculum/frac_p1": (p_hat == 1).float().mean().item(),
            "curriculum/frac_mixed": ((p_hat > 0) & (p_hat < 1)).float().mean().item(),
            "curriculum/weight_ess": effective_sample_size(weights),
            "curriculum/weight_ess_fraction": effective_sample_size(weights) / max(1, weights.numel()),
        }
        edges = torch.linspace(0, 1, self.pass_rate_bins + 1)
        for b in range(self.pass_rate_bins):
            lo, hi = edges[b].item(), edges[b + 1].item()
            sel = (p_hat >= lo) & ((p_hat < hi) if b < self.pass_rate_bins - 1 else (p_hat <= hi))
            if sel.any():
                stats[f"curriculum/weight_by_p/{lo:.3f}-{hi:.3f}"] = weights[sel].mean().item()
        return stats

    # ------------------------------------------------------------------ hook
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        r = getattr(trainer.datamodule, "current", None)
        if r is None:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        p_hat = (r.rewards >= 0.5).float().mean(1)
        weights = r.question_weights.detach().float().cpu()
        rows = [
            {"epoch": epoch, "step": step, "uid": str(row.get("uid", q)),
             "data_source": str(row.get("data_source", "")), "p_hat": float(p_hat[q]), "weight": float(weights[q])}
            for q, row in enumerate(r.rows)
        ]
        self.history.extend(rows)
        path = self.path(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self._append_csv(path, rows)
        writer = self._writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        for tag, value in self.epoch_stats(p_hat, weights).items():
            writer.add_scalar(tag, value, step)
        writer.add_histogram("curriculum/pass_rate", p_hat.numpy(), step, bins=np.linspace(0, 1, r.group_size + 2))
        writer.add_histogram("curriculum/weight", weights.numpy(), step)
        writer.add_text("curriculum/examples", self._examples_table(r), step)
        if epoch % self.heatmap_every_n_epochs == 0 or trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            by_source, by_question = self.heatmaps()
            writer.add_image("curriculum/pass_rate_by_source", colormap(by_source), step, dataformats="HWC")
            writer.add_image("curriculum/pass_rate_by_question", colormap(by_question), step, dataformats="HWC")
        writer.flush()

    def _append_csv(self, path: str, rows: list[dict[str, Any]]) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)

    def _examples_table(self, r: Any) -> str:
        """A markdown table (TensorBoard renders it) of the first rollouts of a few questions."""
        lines = ["| question | response | reward | pred |", "|---|---|---|---|"]
        G = r.group_size
        for q in range(min(self.num_examples, r.num_questions)):
            prompt = r.messages[q][-1]["content"]
            for i in (q * G, q * G + 1):
                if i < len(r.responses):
                    cells = [prompt, r.responses[i], f"{r.scores[i].reward:g}", str(r.scores[i].pred)]
                    lines.append("| " + " | ".join(html.escape(c).replace("|", "\\|").replace("\n", " ")
                                                   for c in cells) + " |")
        return "\n".join(lines)

    def heatmaps(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean p̂ per data source × epoch, p̂ per question × epoch)``, NaN where unseen.

        Rows of the per-question map are the most recently seen questions, ordered by mean p̂
        over their history (hard at the top), at most ``max_heatmap_questions``."""
        epochs = sorted({h["epoch"] for h in self.history})
        col = {e: j for j, e in enumerate(epochs)}
        sources = sorted({h["data_source"] for h in self.history})
        sums = np.zeros((len(sources), len(epochs)))
        counts = np.zeros_like(sums)
        src_row = {s: i for i, s in enumerate(sources)}
        for h in self.history:
            sums[src_row[h["data_source"]], col[h["epoch"]]] += h["p_hat"]
            counts[src_row[h["data_source"]], col[h["epoch"]]] += 1
        with np.errstate(invalid="ignore"):
            by_source = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        recent: dict[str, None] = {}
        for h in reversed(self.history):
            recent.setdefault(h["uid"], None)
            if len(recent) >= self.max_heatmap_questions:
                break
        by_question = np.full((len(recent), len(epochs)), np.nan)
        row = {u: i for i, u in enumerate(recent)}
        for h in self.history:
            if h["uid"] in row:
                by_question[row[h["uid"]], col[h["epoch"]]] = h["p_hat"]
        order = np.argsort(np.nanmean(by_question, axis=1), kind="stable") if len(recent) else []
        return by_source, by_question[order] if len(recent) else by_question

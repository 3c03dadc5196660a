"""Watching the sweet spot move: per-epoch curriculum logging to TensorBoard.

Every training epoch (one rollout batch), after the step: histograms of the pass rates p̂
and of the normalised question weights, the shares of questions at p̂ = 0, 0 < p̂ < 1 and
p̂ = 1, the effective sample size of the weights, the mean weight per p̂ bin, and a text
table of a few completions. The per-question pass-rate history (epoch × question) is
appended to ``curriculum.csv`` in the log directory and drawn as heatmap images: mean p̂
per data source × training step, and p̂ per question × training step, with labelled axes and
a colour bar (text needs Pillow, which tensorboard installs), so one sees questions move
from hard (p̂ = 0) through the sweet spot to solved (p̂ = 1).
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

from ..data.scoring import pass_rate_shares

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


def _ticks(n: int, most: int) -> list[int]:
    """At most ``most`` indices in ``range(n)``, evenly spread, first and last included."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def render_heatmap(values: np.ndarray, x_labels: list[str], y_labels: list[str], x_title: str = "training step",
                   y_title: str = "", colorbar_title: str = "pass rate") -> np.ndarray:
    """An ``[H, W]`` array of values in [0, 1] (NaN = missing, grey) drawn as an RGB image
    with axes: x (columns, ``x_labels``) and y (rows, ``y_labels``) tick marks and labels,
    axis titles, and a colour bar for 0..1.

    Text needs Pillow (a dependency of tensorboard); without it the axes, ticks and colour
    bar are drawn unlabelled. Returns ``[height, width, 3]`` uint8."""
    values = np.asarray(values, dtype=np.float64)
    H, W = values.shape if values.ndim == 2 else (0, 0)
    if H == 0 or W == 0:
        return np.full((8, 8, 3), 255, np.uint8)
    cw = int(np.clip(480 // W, 2, 24))
    ch = int(np.clip(320 // H, 1, 24))
    hw, hh = W * cw, H * ch
    try:
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.load_default()
        measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

        def text_size(t: str) -> tuple[int, int]:
            box = measure.textbbox((0, 0), t, font=font)
            return box[2] - box[0], box[3]
    except Exception:  # noqa: BLE001 - no Pillow (or an unusable font): unlabelled axes
        Image = None  # type: ignore[assignment]

        def text_size(t: str) -> tuple[int, int]:
            return 0, 0

    y_rows = _ticks(H, max(2, hh // 14))
    x_cols = _ticks(W, max(2, min(8, hw // 48)))
    label_w = max([text_size(y_labels[i])[0] for i in y_rows] + [0])
    line_h = max(text_size("0123456789")[1], 1) if Image is not None else 0
    tick = 4
    left = 6 + (line_h + 6 if y_title and Image is not None else 0) + label_w + 3 + tick
    top = 8 + (line_h + 4 if colorbar_title and Image is not None else 0)
    bottom = tick + (line_h + 3) * 2 + 6
    cbar_w, gap = 12, 16
    right = gap + cbar_w + tick + 3 + (text_size("0.5")[0] if Image is not None else 0) + 8
    height = max(top + hh + bottom, top + text_size(y_title)[0] + 8 if y_title else 0, 64)
    width = left + hw + right
    if Image is not None and colorbar_title:
        width = max(width, left + hw + gap + text_size(colorbar_title)[0] + 8)
    img = np.full((height, width, 3), 255, np.uint8)
    img[top:top + hh, left:left + hw] = np.repeat(np.repeat(colormap(values), ch, axis=0), cw, axis=1)
    black = np.array([0, 0, 0], np.uint8)

    def frame(y0: int, x0: int, h: int, w: int) -> None:
        img[y0 - 1, x0 - 1:x0 + w + 1] = black
        img[y0 + h, x0 - 1:x0 + w + 1] = black
        img[y0 - 1:y0 + h + 1, x0 - 1] = black
        img[y0 - 1:y0 + h + 1, x0 + w] = black

    frame(top, left, hh, hw)
    for i in y_rows:  # y ticks at row centres, left of the frame
        y = top + i * ch + ch // 2
        img[y, left - 1 - tick:left - 1] = black
    for j in x_cols:  # x ticks at column centres, below the frame
        x = left + j * cw + cw // 2
        img[top + hh + 1:top + hh + 1 + tick, x] = black
    cx = left + hw + gap  # colour bar: 1 at the top, 0 at the bottom
    ramp = colormap(np.linspace(1.0, 0.0, hh)[:, None])
    img[top:top + hh, cx:cx + cbar_w] = np.repeat(ramp, cbar_w, axis=1)
    frame(top, cx, hh, cbar_w)
    cbar_ticks = {1.0: top, 0.5: top + (hh - 1) // 2, 0.0: top + hh - 1}
    for y in cbar_ticks.values():
        img[y, cx + cbar_w + 1:cx + cbar_w + 1 + tick] = black
    if Image is None:
        return img

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    for i in y_rows:
        t = y_labels[i]
        w, h = text_size(t)
        draw.text((left - 1 - tick - 3 - w, top + i * ch + ch // 2 - h // 2 - 1), t, fill=(0, 0, 0), font=font)
    last_right = -1
    for j in x_cols:
        t = x_labels[j]
        w, _ = text_size(t)
        x = int(np.clip(left + j * cw + cw // 2 - w // 2, 0, width - w))
        if x > last_right + 4:  # no overlapping labels
            draw.text((x, top + hh + 1 + tick + 2), t, fill=(0, 0, 0), font=font)
            last_right = x + w
    if x_title:
        w, _ = text_size(x_title)
        draw.text((left + max(0, (hw - w) // 2), top + hh + 1 + tick + line_h + 6), x_title, fill=(0, 0, 0), font=font)
    for v, y in cbar_ticks.items():
        t = f"{v:g}"
        draw.text((cx + cbar_w + 1 + tick + 3, y - line_h // 2 - 1), t, fill=(0, 0, 0), font=font)
    if colorbar_title:  # above the colour bar
        draw.text((cx, top - line_h - 5), colorbar_title, fill=(0, 0, 0), font=font)
    if y_title:  # rotated, left of the labels
        w, h = text_size(y_title)
        label = Image.new("RGB", (w + 2, h + 2), (255, 255, 255))
        ImageDraw.Draw(label).text((1, 0), y_title, fill=(0, 0, 0), font=font)
        label = label.transpose(Image.Transpose.ROTATE_90 if hasattr(Image, "Transpose") else Image.ROTATE_90)
        pil.paste(label, (4, top + max(0, (hh - label.height) // 2)))
    return np.asarray(pil, dtype=np.uint8).copy()


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
            **{f"curriculum/{k}": v for k, v in pass_rate_shares(p_hat).items()},
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
        p_hat = r.pass_rates  # success = data.success_threshold
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
            by_source, by_question = self.heatmap_images()
            writer.add_image("curriculum/pass_rate_by_source", by_source, step, dataformats="HWC")
            writer.add_image("curriculum/pass_rate_by_question", by_question, step, dataformats="HWC")
        writer.flush()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """On resume, rewrite the CSV from the restored history: rows a killed run appended after
        its last checkpoint would otherwise appear twice."""
        if not trainer.ckpt_path:
            return
        path = self.path(trainer)  # on every rank (a collective under DDP)
        if trainer.is_global_zero and os.path.exists(path):
            os.remove(path)
            if self.history:
                self._append_csv(path, self.history)

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
        by_source, by_question, _, _ = self._heatmap_tables()
        return by_source, by_question

    def heatmap_images(self) -> tuple[np.ndarray, np.ndarray]:
        """The two heatmaps as RGB images with axes (x: training step; y: data source, or
        question ranked hardest first) and a colour bar for p̂ (``[H, W, 3]`` uint8)."""
        by_source, by_question, steps, sources = self._heatmap_tables()
        x_labels = [str(s) for s in steps]
        return (render_heatmap(by_source, x_labels, [s or "(none)" for s in sources], y_title="data source",
                               colorbar_title="mean pass rate"),
                render_heatmap(by_question, x_labels, [str(i + 1) for i in range(len(by_question))],
                               y_title="question (hardest first)", colorbar_title="pass rate"))

    def _heatmap_tables(self) -> tuple[np.ndarray, np.ndarray, list[int], list[str]]:
        epochs = sorted({h["epoch"] for h in self.history})
        col = {e: j for j, e in enumerate(epochs)}
        steps = [0] * len(epochs)  # the global step after each epoch's update: the x axis
        for h in self.history:
            steps[col[h["epoch"]]] = max(steps[col[h["epoch"]]], int(h.get("step", 0)))
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
        if len(recent):
            by_question = by_question[np.argsort(np.nanmean(by_question, axis=1), kind="stable")]
        return by_source, by_question, steps, sources

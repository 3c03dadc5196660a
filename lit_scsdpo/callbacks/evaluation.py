"""mean@k / maj@k / pass@k evaluation per data source (docs/specification.md §4.2).

The evaluation samples are drawn once per validation (or test) run by the DataModule's
``val_dataloader`` / ``test_dataloader`` with the evaluation sampling settings
(``data.evaluation.samples`` = k, default 16; ``data.evaluation.sampling``: temperature 0.6, top-p 0.95, as
in the papers), and scored by the task's verifier. This callback turns them into
torchmetrics (distributed-safe, per data source and ``all``), logs ``val/<source>/mean@k``
(``test/<source>/...`` under ``lit-scsdpo test``), ``maj@k`` (verl's bootstrap, the paper's
number), ``maj@k_vote`` (one plain vote), ``pass@k``, ``format_rate`` and
``response_length``, keeps the best value of each so far during validation
(``val/<source>/best_<metric>``), and prints a table per data source after
``lit-scsdpo validate`` / ``test``. While training it prints one line per validation
(``[validation] step N``: N is also the TensorBoard step of every ``val/*`` curve), and the
score before training when the sanity check runs the whole validation set
(``trainer.num_sanity_val_steps: -1``, as in the tiny configs), which it also logs at
TensorBoard step 0. Each validation's per-question results (successes out of k) are appended
to ``val_per_question.csv`` in the log directory, for analyses by question (e.g. by the
initial model's pass rate: benchmarks/weighting_study.py).
"""

from __future__ import annotations

import csv
import os
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..metrics import MajorityAtK, MeanAtK, PassAtK


class MajorityVoteEvaluation(pl.Callback):
    """Evaluation metrics on the validation (and test) rollouts.

    Args:
        k: samples per question used by the metrics (default: all drawn, ``data.evaluation.samples``).
        n_bootstrap: resamples of verl's bootstrap maj@k (1000 in verl).
        seed: seed of the bootstrap (42 in verl).
        print_table: print the per-source table after ``validate`` / ``test``.
        per_question_file: the CSV in the log directory that each validation appends its
            per-question rows to (``step, question, data_source, successes, k``; under DDP,
            rank 0's questions); None: off. Written only when the trainer has a logger.
    """

    def __init__(self, k: Optional[int] = None, n_bootstrap: int = 1000, seed: int = 42,
                 print_table: bool = True, per_question_file: Optional[str] = "val_per_question.csv") -> None:
        if k is not None and k < 1:
            raise ValueError(f"MajorityVoteEvaluation.k must be >= 1, got {k}")
        self.k, self.n_bootstrap, self.seed, self.print_table = k, n_bootstrap, seed, print_table
        self.per_question_file = per_question_file
        self._rows_written = 0  # per-question rows in the file (saved in checkpoints)
        self._truncate_to: Optional[int] = None  # after a resume: the rows the checkpoint had seen
        self.best: dict[str, float] = {}
        self.last: dict[str, dict[str, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "per_question_rows": self._rows_written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))
        # rows a killed run appended after its last checkpoint would appear twice: cut them
        self._rows_written = self._truncate_to = int(state.get("per_question_rows", 0))

    def compute(self, rollouts: Any, sources: list[str], device: torch.device) -> dict[str, dict[str, float]]:
        """``{source: {metric: value}}`` for one set of scored rollouts (synced over ranks)."""
        n = rollouts.group_size
        k = self.k or n
        if k > n:
            raise ValueError(f"MajorityVoteEvaluation.k={k} but only data.evaluation.samples={n} samples were drawn")
        Q = rollouts.num_questions
        q_sources = [str(row.get("data_source", "all")) for row in rollouts.rows]
        scores = rollouts.rewards.view(Q, n)
        preds = [[rollouts.scores[q * n + j].pred for j in range(n)] for q in range(Q)]
        fmt = torch.tensor([float(s.format_ok) for s in rollouts.scores]).view(Q, n)
        length = torch.tensor([float(len(r)) for r in rollouts.response_ids]).view(Q, n)
        metrics = {
            f"mean@{k}": (MeanAtK(sources, k=k), scores, None),
            f"maj@{k}": (MajorityAtK(sources, k=k, mode="bootstrap", n_bootstrap=self.n_bootstrap, seed=self.seed),
                         scores, preds),
            f"maj@{k}_vote": (MajorityAtK(sources, k=k, mode="plain"), scores, preds),
            f"pass@{k}": (PassAtK(sources, k=k), scores, None),
            "format_rate": (MeanAtK(sources, k=k), fmt, None),
            "response_length": (MeanAtK(sources, k=k), length, None),
        }
        out: dict[str, dict[str, float]] = {}
        for name, (metric, values, p) in metrics.items():
            metric = metric.to(device)
            if Q:
                metric.update(q_sources, values, p) if p is not None else metric.update(q_sources, values)
            for source, value in metric.compute().items():
                out.setdefault(source, {})[name] = float(value)
        return out

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_end(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.last:
            return
        if trainer.sanity_checking:  # num_sanity_val_steps=-1: the score before training
            step = trainer.global_step  # > 0 when resuming from a checkpoint
            when = "before training" if step == 0 else f"step {step} (resumed)"
            pl_module.print(f"[validation] {when}: {self._headline(self.last)}")
            self._log_baseline(trainer, step)
            self.last = {}
        elif self.print_table and trainer.state.fn == "validate":
            self._print(self.last)
        elif trainer.state.fn == "fit" and "all" in self.last:  # one line per validation while training
            pl_module.print(f"[validation] step {trainer.global_step}: {self._headline(self.last, self.best)}")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.last and self.print_table:
            self._print(self.last)

    def _epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        dm = trainer.datamodule
        rollouts = getattr(dm, "validation", None)  # the test loader draws its samples there too
        if rollouts is None:
            return
        val_set = getattr(dm, "val_set", None)
        sources = sorted({str(s) for s in val_set["data_source"]}) \
            if val_set is not None and "data_source" in val_set.column_names else ["all"]
        if "all" in sources:
            sources.remove("all")
        self.last = self.compute(rollouts, sources, pl_module.device)
        if prefix == "val" and self.per_question_file and trainer.loggers:  # (no logger: no files)
            self._append_per_question(trainer, rollouts)
        if trainer.sanity_checking:  # Lightning writes nothing to the loggers here: see _log_baseline
            return
        if trainer.state.fn == "fit":
            # Lightning logs epoch-end metrics at its count of training *batches* (micro-batches
            # here); a logged "step" replaces it, so that the TensorBoard step of every val/*
            # curve (the module's too) is the optimizer step printed as "[validation] step N".
            pl_module.log("step", float(trainer.global_step), on_epoch=True, sync_dist=True)
        for source, values in self.last.items():
            for name, value in values.items():
                key = f"{prefix}/{source}/{name}"
                headline = source == "all" and name.startswith(("mean@", "maj@")) and not name.endswith("_vote")
                # equal on all ranks already (the metrics are synced)
                pl_module.log(key, value, on_epoch=True, sync_dist=True, prog_bar=headline and prefix == "val")
                if prefix != "val" or name == "response_length" or value != value:
                    continue  # best-so-far: validation only
                best_key = f"val/{source}/best_{name}"
                self.best[best_key] = max(self.best.get(best_key, value), value)
                pl_module.log(best_key, self.best[best_key], on_epoch=True, sync_dist=True)

    def _per_question_path(self, trainer: pl.Trainer) -> str:
        return os.path.join(trainer.log_dir or trainer.default_root_dir, self.per_question_file)

    def _append_per_question(self, trainer: pl.Trainer, rollouts: Any) -> None:
        path = self._per_question_path(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if not trainer.is_global_zero:
            return
        n = rollouts.group_size
        k = self.k or n
        successes = (rollouts.rewards.view(-1, n)[:, :k] >= rollouts.success_threshold).sum(1).tolist()
        rows = [(trainer.global_step, str(row.get("uid", row.get("question", q))), str(row.get("data_source", "")),
                 int(c), k) for q, (row, c) in enumerate(zip(rollouts.rows, successes))]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if self._truncate_to is not None and os.path.exists(path):
            with open(path, newline="") as f:
                kept = list(csv.reader(f))[: 1 + self._truncate_to]
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows(kept)
        self._truncate_to = None
        self._rows_written += len(rows)
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "question", "data_source", "successes", "k"])
            w.writerows(rows)

    def _log_baseline(self, trainer: pl.Trainer, step: int) -> None:
        """The validation before training (sanity check) at TensorBoard step ``step``: 0, or
        the step a resumed run starts from (Lightning discards what is logged while sanity
        checking), with the module's own ``val/*`` epoch metrics."""
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and "/best_" not in k}
        metrics.update({f"val/{source}/{name}": value
                        for source, values in self.last.items() for name, value in values.items()})
        if trainer.is_global_zero:
            for lg in trainer.loggers:
                lg.log_metrics(metrics, step=step)
                lg.save()

    @staticmethod
    def _headline(table: dict[str, dict[str, float]], best: Optional[dict[str, float]] = None) -> str:
        row = table.get("all", {})
        parts = []
        for n, v in row.items():
            if n.startswith(("mean@", "maj@")) and not n.endswith("_vote"):
                b = (best or {}).get(f"val/all/best_{n}")
                parts.append(f"{n} {100 * v:.1f}%" + (f" (best {100 * b:.1f}%)" if b is not None else ""))
        return ", ".join(parts)

    @rank_zero_only
    def _print(self, table: dict[str, dict[str, float]]) -> None:
        from rich.console import Console
        from rich.table import Table

        columns = list(next(iter(table.values())))
        t = Table(title="Evaluation per data source (values in %; response_length in tokens)")
        t.add_column("data source")
        for c in columns:
            t.add_column(c, justify="right")
        for source in sorted(table, key=lambda s: (s == "all", s)):
            row = table[source]
            t.add_row(source, *[f"{row[c]:.1f}" if c == "response_length" else f"{100 * row[c]:.1f}"
                                for c in columns])
        Console(width=160).print(t)

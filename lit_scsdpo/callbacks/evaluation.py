"""mean@k / maj@k / pass@k evaluation per data source (paper-spec §4.2).

The evaluation samples are drawn once per validation run by the DataModule's
``val_dataloader`` with the evaluation sampling settings (``data.val_samples`` = k, default
16; ``data.val_sampling``: temperature 0.6, top-p 0.95, as in the papers), and scored by the
task's verifier. This callback turns them into torchmetrics (distributed-safe, per data
source and ``all``), logs ``val/<source>/mean@k``, ``maj@k`` (verl's bootstrap, the paper's
number), ``maj@k_vote`` (one plain vote), ``pass@k``, ``format_rate`` and
``response_length``, keeps the best value of each so far (``val/<source>/best_<metric>``),
and prints a table per data source after ``lit-scsdpo validate`` / ``test``. While training it
prints one line per validation, and the score before training when the sanity check runs the
whole validation set (``trainer.num_sanity_val_steps: -1``, as in the tiny configs).
"""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..metrics import MajorityAtK, MeanAtK, PassAtK


class MajorityVoteEvaluation(pl.Callback):
    """Evaluation metrics on the validation rollouts.

    Args:
        k: samples per question used by the metrics (default: all drawn, ``data.val_samples``).
        n_bootstrap: resamples of verl's bootstrap maj@k (1000 in verl).
        seed: seed of the bootstrap (42 in verl).
        print_table: print the per-source table after ``validate`` / ``test``.
    """

    def __init__(self, k: Optional[int] = None, n_bootstrap: int = 1000, seed: int = 42,
                 print_table: bool = True) -> None:
        if k is not None and k < 1:
            raise ValueError(f"MajorityVoteEvaluation.k must be >= 1, got {k}")
        self.k, self.n_bootstrap, self.seed, self.print_table = k, n_bootstrap, seed, print_table
        self.best: dict[str, float] = {}
        self.last: dict[str, dict[str, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))

    def compute(self, rollouts: Any, sources: list[str], device: torch.device) -> dict[str, dict[str, float]]:
        """``{source: {metric: value}}`` for one set of scored rollouts (synced over ranks)."""
        n = rollouts.group_size
        k = self.k or n
        if k > n:
            raise ValueError(f"MajorityVoteEvaluation.k={k} but only data.val_samples={n} samples were drawn")
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

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = trainer.datamodule
        rollouts = getattr(dm, "validation", None)
        if rollouts is None:
            return
        sources = sorted({str(s) for s in dm.val_set["data_source"]}) if "data_source" in dm.val_set.column_names \
            else ["all"]
        if "all" in sources:
            sources.remove("all")
        self.last = self.compute(rollouts, sources, pl_module.device)
        if trainer.sanity_checking:  # num_sanity_val_steps=-1: the score before training, printed only
            pl_module.print(f"[validation] before training: {self._headline(self.last)}")
            self.last = {}
            return
        for source, values in self.last.items():
            for name, value in values.items():
                key = f"val/{source}/{name}"
                headline = source == "all" and name.startswith(("mean@", "maj@")) and not name.endswith("_vote")
                pl_module.log(key, value, on_epoch=True, sync_dist=True, prog_bar=headline)  # equal on all ranks already
                if name == "response_length" or value != value:
                    continue
                best_key = f"val/{source}/best_{name}"
                self.best[best_key] = max(self.best.get(best_key, value), value)
                pl_module.log(best_key, self.best[best_key], on_epoch=True, sync_dist=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.last:
            return
        if self.print_table and trainer.state.fn in ("validate", "test"):
            self._print(self.last)
        elif trainer.state.fn == "fit" and "all" in self.last:  # one line per validation while training
            pl_module.print(f"[validation] step {trainer.global_step}: {self._headline(self.last, self.best)}")

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

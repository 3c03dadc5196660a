"""SC-SDPO = SDPO + this callback: pass-rate weights for each question of the epoch's rollouts.

At the start of every training epoch (after the DataModule has drawn and scored the fresh
rollouts) it turns each question's pass rate into a normalised weight with the loss core
(``losses.difficulty_weights``; the normalisation is global over data-parallel ranks) and
stores them on the rollouts. The SDPO loss multiplies every per-token loss of a question's
rollouts by its weight before aggregation. Without this callback every weight is 1 (SDPO).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from .. import losses as L
from ..distributed import distributed_reduce


class DifficultyWeighting(pl.Callback):
    """Per-question weights ``w_q ∝ (p̂_q(1−p̂_q))^exponent``, batch-mean normalised (SC-SDPO).

    Args:
        exponent: 0.5 = SC-SDPO (paper); 1.0 = reward variance; 0 = uniform (SDPO).
        binary: use ``1[0 < p̂ < 1]`` instead (DAPO-style filter).
        floor: lower bound on the raw weights (default 0: no floor, docs/specification.md A5).
        normalization: ``batch_mean`` (default, ⚠ docs/specification.md A1) | ``none`` | ``sum`` | ``max``.
        scope: normalise over ``all`` questions of the global batch (default) or only the
            ``active`` ones, i.e. those with at least one success (the questions SDPO can
            distil when feedback is off).

    Success (for p̂) is the DataModule's ``data.success_threshold``: one definition for the
    logged pass rates, SDPO's demonstrations and these weights.
    """

    def __init__(
        self,
        exponent: float = 0.5,
        binary: bool = False,
        floor: float = 0.0,
        normalization: L.WeightNormalization = "batch_mean",
        scope: L.WeightScope = "all",
    ) -> None:
        # validate early, with the loss core's own checks
        L.raw_difficulty_weights(torch.tensor([0.5]), exponent, binary, floor)
        L.normalize_weights(torch.ones(1), normalization, scope, torch.ones(1, dtype=torch.bool))
        self.exponent, self.binary, self.floor = exponent, binary, floor
        self.normalization, self.scope = normalization, scope

    def weights(self, rewards: torch.Tensor, success_threshold: float = 0.5) -> torch.Tensor:
        """Normalised weights for ``[B_local, G]`` rewards (global over ranks)."""
        active = (rewards >= success_threshold).any(dim=1)
        return L.difficulty_weights(
            rewards, success_threshold, self.exponent, self.binary, self.floor,
            self.normalization, self.scope, active, reduce=distributed_reduce(),
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rollouts = getattr(trainer.datamodule, "current", None)
        if rollouts is None:
            raise RuntimeError("DifficultyWeighting needs a RolloutDataModule with fresh rollouts")
        rollouts.question_weights = self.weights(rollouts.rewards, rollouts.success_threshold)

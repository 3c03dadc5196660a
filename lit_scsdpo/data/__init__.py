"""The data room, one file per concern:

* :mod:`~lit_scsdpo.data.batch`: the batch types (:class:`Rollouts`, :class:`RolloutBatch`,
  :class:`StepInfo`) and :func:`collate_rollouts`;
* :mod:`~lit_scsdpo.data.sampler`: the question order and the seed of every draw, with its
  checkpointed state;
* :mod:`~lit_scsdpo.data.scoring`: the fault-proof verifier call and the rollout statistics;
* :mod:`~lit_scsdpo.data.planning`: optimizer steps and micro-batches of whole groups;
* :mod:`~lit_scsdpo.data.datamodule`: :class:`RolloutDataModule`, which wires them to the
  rollout engine and the task.
"""

from .batch import Rollouts, RolloutBatch, StepInfo, collate_rollouts, step_info
from .datamodule import EvaluationConfig, RolloutDataModule, check_group_size
from .planning import MicroBatchPlan, PlannedBatches, plan_micro_batches
from .sampler import QuestionSampler, stream_seed
from .scoring import SafeScorer, pass_rate_shares, rollout_stats

__all__ = ["Rollouts", "RolloutBatch", "StepInfo", "collate_rollouts", "step_info", "RolloutDataModule",
           "EvaluationConfig", "check_group_size", "MicroBatchPlan", "PlannedBatches", "plan_micro_batches",
           "QuestionSampler", "stream_seed", "SafeScorer", "pass_rate_shares", "rollout_stats"]

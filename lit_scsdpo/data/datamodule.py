"""The DataModule that wires the data room: :class:`RolloutDataModule`.

Every training epoch (``reload_dataloaders_every_n_epochs=1``) it takes ``questions_per_step``
questions from the :class:`~lit_scsdpo.data.sampler.QuestionSampler`, has the rollout engine
draw ``rollouts_per_question`` responses each with the *current* policy, scores them
(:mod:`lit_scsdpo.data.scoring`), records each question's pass rate, and yields the
micro-batches of :mod:`lit_scsdpo.data.planning`, which always hold whole groups
(:mod:`lit_scsdpo.data.batch`). It knows nothing about the training algorithm; the
per-question weights start at 1 and may be set by a callback (SC-SDPO's
``DifficultyWeighting``) before the epoch runs.

The DataModule takes the policy and its tokenizer from the LightningModule it trains
(attributes ``policy`` and ``tokenizer``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from .. import interrupt
from ..chat import render_prompt
from ..rollout import HFGenerateEngine, RolloutEngine, SamplingConfig
from ..tasks.base import Task
from .batch import Rollouts, StepInfo, collate_rollouts, step_info
from .planning import MicroBatchPlan, PlannedBatches, plan_micro_batches
from .sampler import QuestionSampler
from .scoring import SafeScorer, rollout_stats

log = logging.getLogger(__name__)


@dataclass
class EvaluationConfig:
    """How validation and test draw their responses (the papers' protocol: 16 samples per
    question at temperature 0.6, top-p 0.95; docs/evaluation.md).

    Attributes:
        samples: responses per question (paper: 16): the k of mean@k, maj@k and pass@k.
        sampling: how they are sampled (paper: temperature 0.6, top-p 0.95, 8192 new tokens);
            temperature 0 is greedy decoding (one response per question, repeated).
        questions: a cap on the questions of the split (None: all of them).
    """

    samples: int = 16
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=8192))
    questions: Optional[int] = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"data.evaluation.samples must be >= 1, got {self.samples}")
        if self.questions is not None and self.questions < 1:
            raise ValueError(f"data.evaluation.questions must be >= 1 or null (the whole split), got {self.questions}")
        self.sampling.check("data.evaluation.sampling")


def check_group_size(algorithm: str, required: int, G: int) -> None:
    """``data.rollouts_per_question`` large enough for the loss to learn anything."""
    if G < required:
        raise ValueError(f"data.rollouts_per_question must be >= {required} for {algorithm} (got {G}): with one "
                         f"rollout per question there is no group baseline and no sibling demonstration, so the "
                         f"loss is 0 at every step")


class RolloutDataModule(pl.LightningDataModule):
    """Samples questions, generates and scores on-policy rollouts, yields whole groups.

    Args:
        task: the task (dataset + verifier), e.g. ``lit_scsdpo.tasks.ArithmeticTask``.
        engine: the rollout engine (default: transformers ``generate``).
        questions_per_step: B, questions per rollout batch (paper: 32).
        rollouts_per_question: G, responses per question (paper: 8).
        updates_per_batch: optimizer steps per rollout batch (paper: 1 = on-policy; the
            off-policy GRPO baseline used 4). B must be divisible by it.
        micro_batch_questions: questions (G rows each) per forward/backward micro-batch.
        sampling: training sampling (paper: temperature 1.0, top-p 1.0, 8192 new tokens).
        evaluation: how validation and test draw their responses (:class:`EvaluationConfig`:
            16 per question at temperature 0.6, top-p 0.95, as the papers).
        max_prompt_tokens: prompts longer than this are dropped when the data is loaded, and
            counted (paper: 2048); every rank drops the same rows, so ranks stay in step.
        enable_thinking: chat-template kwarg, identical for student and teacher (paper: False).
        seed: seed of the question order and of the sampling streams. Each rollout batch is
            drawn with its own seed, derived from this one, the global seed
            (``seed_everything``), the batch index and the rank, so a resumed run draws exactly
            what the uninterrupted one did.
        success_threshold: a reward ``>=`` this counts as a success; the one definition of
            success used for p̂, SDPO's demonstrations and SC-SDPO's weights (paper YAML: 0.5).
        score_timeout: seconds a verifier may take per response before it scores 0 and is
            counted (``rollout/score_timeouts``); None: no limit.
    """

    def __init__(
        self,
        task: Task,
        engine: Optional[RolloutEngine] = None,
        questions_per_step: int = 32,
        rollouts_per_question: int = 8,
        updates_per_batch: int = 1,
        micro_batch_questions: int = 4,
        sampling: SamplingConfig = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8192),
        evaluation: EvaluationConfig = EvaluationConfig(),
        max_prompt_tokens: int = 2048,
        enable_thinking: bool = False,
        seed: int = 0,
        success_threshold: float = 0.5,
        score_timeout: Optional[float] = 10.0,
    ) -> None:
        super().__init__()
        for name, value in [("questions_per_step", questions_per_step), ("rollouts_per_question", rollouts_per_question),
                            ("updates_per_batch", updates_per_batch), ("micro_batch_questions", micro_batch_questions),
                            ("max_prompt_tokens", max_prompt_tokens)]:
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        if score_timeout is not None and score_timeout <= 0:
            raise ValueError(f"data.score_timeout must be > 0 seconds or null, got {score_timeout}")
        if questions_per_step % updates_per_batch:
            raise ValueError(
                f"data.questions_per_step ({questions_per_step}) must be divisible by "
                f"data.updates_per_batch ({updates_per_batch})"
            )
        self.task = task
        self.engine = engine if engine is not None else HFGenerateEngine()
        self.questions_per_step = questions_per_step
        self.rollouts_per_question = rollouts_per_question
        self.updates_per_batch = updates_per_batch
        self.micro_batch_questions = micro_batch_questions
        self.sampling = sampling
        self.evaluation = evaluation
        self.max_prompt_tokens = max_prompt_tokens
        self.enable_thinking = enable_thinking
        self.seed = seed
        self.success_threshold = float(success_threshold)
        self.score_timeout = score_timeout
        self.scorer = SafeScorer(task, score_timeout)
        self.train_set = None
        self.val_set = None
        self.current: Optional[Rollouts] = None  # this epoch's training rollouts
        self.validation: Optional[Rollouts] = None
        self.sampler = QuestionSampler(questions_per_step, seed)  # its state is saved in checkpoints
        self._consumed = False  # a training micro-batch of `current` has been collated
        self.dropped_long_prompts: dict[str, int] = {}
        self._loaded: dict[str, Any] = {}  # splits read by check_before_weights, for setup

    # ------------------------------------------------------------------ datasets & state
    def check_before_weights(self, stage: str, required_group_size: int = 1, algorithm: str = "the module") -> None:
        """Everything that can be checked before the policy's weights load (the CLI calls it
        first): the engine is importable, the sampling settings can work, the group is large
        enough for the algorithm, and every split ``stage`` needs is read and validated row by
        row (kept, so :meth:`setup` does not read it again)."""
        if stage == "fit":
            check_group_size(algorithm, required_group_size, self.rollouts_per_question)
            if self.sampling.temperature == 0:
                raise ValueError("data.sampling.temperature=0 (greedy) makes the G training rollouts of a question "
                                 "identical: no group baseline, no sibling demonstration, nothing to learn; use > 0 "
                                 "(paper: 1.0). Greedy decoding is supported for evaluation (data.evaluation.sampling)")
        for split in {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}.get(stage, ()):
            ds = self._loaded.get(split)
            if ds is None:
                ds = self._loaded[split] = self.task.load(split)
            if split == "train" and len(ds) == 0:
                raise ValueError(f"task {self.task.name!r}: the train split is empty")
        check = getattr(self.engine, "check_available", None)
        if callable(check):
            check()

    def _load(self, split: str) -> Any:
        ds = self._loaded.pop(split, None)
        return self.task.load(split) if ds is None else ds

    def setup(self, stage: Optional[str] = None) -> None:
        self._require_fresh_rollouts()
        self.sampler.set_base_seed()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self._fitting(self._load("train"), "train")
            if len(self.train_set) == 0:
                raise ValueError(f"task {self.task.name!r}: the train split is empty")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self._fitting(self._load("validation"), "validation")
        if stage == "test" and self.val_set is None:
            self.val_set = self._fitting(self._load("test"), "test")

    def _require_fresh_rollouts(self) -> None:
        """Training on stale rollouts must be impossible: the rollouts are drawn in
        ``train_dataloader()``, which Lightning calls every epoch only with
        ``reload_dataloaders_every_n_epochs=1``. A plain ``pl.Trainer`` leaves it at 0; set it
        here. Any other value would reuse rollouts and p̂ for several epochs: refuse."""
        trainer = self.trainer
        n = getattr(trainer, "reload_dataloaders_every_n_epochs", 1)
        if n == 0:
            trainer.reload_dataloaders_every_n_epochs = 1
            log.info("RolloutDataModule: set trainer.reload_dataloaders_every_n_epochs=1 (fresh rollouts each epoch)")
        elif n != 1:
            raise ValueError(f"RolloutDataModule draws fresh on-policy rollouts every epoch: "
                             f"trainer.reload_dataloaders_every_n_epochs must be 1, got {n}")

    def _fitting(self, ds: Any, split: str) -> Any:
        """Drop the rows whose rendered prompt exceeds ``max_prompt_tokens`` (identically on every
        rank, so ranks keep the same number of questions and micro-batches), and say how many."""
        if self.trainer is None or len(ds) == 0:
            return ds
        tokenizer = self._policy_and_tokenizer()[1]
        keep = [i for i in range(len(ds))
                if len(render_prompt(tokenizer, self.task.messages(ds[i]), self.enable_thinking)) <= self.max_prompt_tokens]
        dropped = len(ds) - len(keep)
        self.dropped_long_prompts[split] = dropped
        if dropped:
            log.warning("task %r, %s split: dropped %d of %d questions whose prompt is longer than "
                        "data.max_prompt_tokens=%d", self.task.name, split, dropped, len(ds), self.max_prompt_tokens)
            ds = ds.select(keep)
        return ds

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def generation_seed(self, kind: str, index: int) -> int:
        """The seed of one draw on this rank (:meth:`QuestionSampler.generation_seed`)."""
        return self.sampler.generation_seed(kind, index, self._world()[0])

    # ------------------------------------------------------------------ rollouts
    def _policy_and_tokenizer(self) -> tuple[torch.nn.Module, Any]:
        module = self.trainer.lightning_module
        return module.policy, module.tokenizer

    def rollout(self, rows: list[dict[str, Any]], n: int, sampling: SamplingConfig,
                seed: Optional[int] = None) -> Rollouts:
        """Generate ``n`` responses per row with the current policy, and score them.

        Raises :class:`~lit_scsdpo.interrupt.Preempted` (on every rank together) when a stop
        signal arrived during the draw: the partial rollouts are abandoned."""
        policy, tokenizer = self._policy_and_tokenizer()
        counters = {"score_errors": 0, "score_timeouts": 0, "empty_responses": 0}
        messages = [self.task.messages(row) for row in rows]
        prompt_ids = [render_prompt(tokenizer, m, self.enable_thinking) for m in messages]
        for row, ids in zip(rows, prompt_ids):
            if len(ids) > self.max_prompt_tokens:  # setup() drops these; a task changed under us
                raise ValueError(f"task {self.task.name!r}: row uid={row.get('uid')} has a {len(ids)}-token prompt "
                                 f"> data.max_prompt_tokens={self.max_prompt_tokens}")
        interrupt.check_global(self._device())
        self.engine.update_weights(policy)
        # the trainer's compute precision (bf16 autocast under bf16-mixed), as in training
        precision = getattr(self.trainer, "precision_plugin", None)
        with precision.forward_context() if precision is not None else contextlib.nullcontext():
            gens = self.engine.generate(prompt_ids, n, sampling, seed=seed)
        interrupt.check_global(self._device())  # a signal during the draw: abandon it on every rank
        t0 = time.perf_counter()
        responses = tokenizer.batch_decode(gens.response_ids, skip_special_tokens=True)
        scores = []
        for i, text in enumerate(responses):
            if interrupt.stop_requested() is not None:
                break  # abandoned below, on every rank
            row = rows[gens.prompt_index[i]]
            if not text.strip():
                counters["empty_responses"] += 1
            scores.append(self.scorer(text, row, counters))
        interrupt.check_global(self._device())
        score_seconds = time.perf_counter() - t0
        out = Rollouts(list(rows), messages, prompt_ids, gens.response_ids, gens.logprobs, responses, scores, n,
                       success_threshold=self.success_threshold,
                       separate_sampler=bool(getattr(self.engine, "separate_weights", False)))
        out.stats = {
            **rollout_stats(out.rewards, out.pass_rates, scores, [len(r) for r in gens.response_ids], gens.finished,
                            self.success_threshold),
            "gen_tokens_per_s": gens.num_tokens / max(gens.seconds, 1e-9),
            "time_generate": gens.seconds,
            "time_score": score_seconds,
            **{k: float(v) for k, v in counters.items()},
        }
        return out

    def _device(self) -> Optional[torch.device]:
        try:
            return self.trainer.strategy.root_device
        except Exception:  # noqa: BLE001 - no trainer
            return None

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        self._require_fresh_rollouts()
        if self.current is not None and not self._consumed:
            # Lightning asks twice before the first epoch after a resume: one draw per trained batch
            return self._loader(self.current, steps=self.updates_per_batch)
        rank, world = self._world()
        rows = [self.train_set[i] for i in self.sampler.next_questions(len(self.train_set), rank, world)]
        seed = self.generation_seed("train", self.sampler.draws)
        self.current = self.rollout(rows, self.rollouts_per_question, self.sampling, seed)
        self._consumed = False
        self.sampler.draws += 1
        return self._loader(self.current, steps=self.updates_per_batch)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None or len(self.val_set) == 0:
            return DataLoader([])
        cap = self.evaluation.questions
        n = len(self.val_set) if cap is None else min(cap, len(self.val_set))
        rank, world = self._world()
        rows = [self.val_set[i] for i in range(rank, n, world)]
        trainer = self.trainer
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        stage = "test" if fn == "test" else "validation"
        seed = self.generation_seed(stage, getattr(trainer, "global_step", 0))
        self.validation = None
        try:
            self.validation = self.rollout(rows, self.evaluation.samples, self.evaluation.sampling, seed)
        except interrupt.Preempted:
            if fn != "fit" or trainer.sanity_checking:
                raise
            # mid-run validation cut by a signal: skip it; the step it follows is complete and
            # is saved at the end of this epoch (callbacks.checkpoint), then the run stops
            log.warning("validation at step %d abandoned: stop requested", trainer.global_step)
            return DataLoader([])
        return self._loader(self.validation, steps=1, sampling=self.evaluation.sampling)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, rollouts: Rollouts, steps: int, sampling: Optional[SamplingConfig] = None) -> DataLoader:
        """``steps`` optimizer steps of micro-batches of ``micro_batch_questions`` whole groups
        (:func:`~lit_scsdpo.data.planning.plan_micro_batches`), collated lazily; each step's
        :class:`StepInfo` is built once, with its first micro-batch, and shared by the rest."""
        plan = plan_micro_batches(rollouts.num_questions, steps, self.micro_batch_questions)
        draw = self.sampler.draws
        temperature = (sampling or self.sampling).temperature
        tokenizer = self._policy_and_tokenizer()[1]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        training = rollouts is self.current
        steps_built: dict[int, StepInfo] = {}

        def collate(item: MicroBatchPlan):
            if training:
                self._consumed = True
            step = steps_built.get(item.update_index)
            if step is None or item.micro_index == 0:
                step = steps_built[item.update_index] = step_info(
                    rollouts, item.step_questions, item.num_micro, item.update_index, item.num_updates,
                    step_id=draw * item.num_updates + item.update_index)
            return collate_rollouts(rollouts, item.questions, step, item.step_questions, item.micro_index, pad,
                                    temperature or 1.0, self.enable_thinking)

        return DataLoader(PlannedBatches(plan, collate), batch_size=None)

"""On-policy rollout data: :class:`RolloutDataModule` and the :class:`RolloutBatch` it yields.

Every training epoch (``reload_dataloaders_every_n_epochs=1``) the DataModule samples
``questions_per_step`` prompts (without replacement across epochs), has the rollout engine
draw ``rollouts_per_question`` responses each with the *current* policy, scores them with the
task's verifier, records each question's pass rate, and yields micro-batches that always hold
whole groups. It knows nothing about the training algorithm; the per-question weights start
at 1 and may be set by a callback (SC-SDPO's ``DifficultyWeighting``) before the epoch runs.

The DataModule takes the policy and its tokenizer from the LightningModule it trains
(attributes ``policy`` and ``tokenizer``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from . import interrupt
from .chat import render_prompt
from .layout import pack_prompt_response
from .rollout import HFGenerateEngine, RolloutEngine, SamplingConfig
from .tasks.base import Score, Task

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """What every micro-batch knows about its whole optimizer step on this rank, so that the
    loss can use step-level (then global) normalisers (see ``losses.global_normalizer``)."""

    rewards: torch.Tensor  # [n_step] rewards of all sequences of the step
    group_ids: torch.Tensor  # [n_step] question index of each sequence
    has_feedback: torch.Tensor  # [n_step] bool: non-empty environment feedback
    response_lengths: torch.Tensor  # [n_step] response token counts
    question_weights: torch.Tensor  # [n_step] the weight of each sequence's question
    num_micro_batches: int = 1
    messages: list = field(default_factory=list)  # [n_step] chat of each sequence's question
    responses: list = field(default_factory=list)  # [n_step] decoded responses
    feedback: list = field(default_factory=list)  # [n_step] feedback text ("" if none)
    update_index: int = 0  # which optimizer step of its rollout batch this is
    num_updates: int = 1  # optimizer steps per rollout batch (data.updates_per_batch)
    step_id: int = 0  # unique per optimizer step within the run (caches keyed on it)


def _tensors_to(obj: Any, device: Any) -> Any:
    moved = {f.name: (v.to(device) if isinstance(v, torch.Tensor) else _tensors_to(v, device) if isinstance(v, StepInfo)
                      else v) for f in dataclasses.fields(obj) for v in [getattr(obj, f.name)]}
    return dataclasses.replace(obj, **moved)


@dataclass
class RolloutBatch:
    """A micro-batch of scored rollouts, whole groups only (``n = questions × G`` rows).

    Token layout: ``input_ids = [left-padded prompt | right-padded response]`` with the
    prompt part ``prompt_width`` wide, so response position ``t`` sits at column
    ``prompt_width + t`` for every row.
    """

    input_ids: torch.Tensor  # [n, P + T]
    attention_mask: torch.Tensor  # [n, P + T]
    position_ids: torch.Tensor  # [n, P + T] from the attention-mask cumsum
    response_ids: torch.Tensor  # [n, T] (pad after the end)
    response_mask: torch.Tensor  # [n, T] float 0/1
    sampler_logprobs: torch.Tensor  # [n, T] the engine's per-token log-probs
    rewards: torch.Tensor  # [n]
    pass_rates: torch.Tensor  # [n] pass rate of each row's question
    question_weights: torch.Tensor  # [n] weight of each row's question (1 = plain)
    group_ids: torch.Tensor  # [n] question index within the epoch's rollouts
    prompt_width: int
    group_size: int
    temperature: float
    enable_thinking: bool
    uids: list[str]
    messages: list[list[dict[str, str]]]
    responses: list[str]  # decoded, special tokens skipped
    preds: list[Optional[str]]
    feedback: list[str]
    step: StepInfo
    micro_index: int = 0  # position of this micro-batch within its optimizer step
    step_offset: int = 0  # index of this micro-batch's first row among its step's rows
    success_threshold: float = 0.5  # reward counted as a success (data.success_threshold)
    stats: dict[str, float] = field(default_factory=dict)  # rollout-phase metrics
    separate_sampler: bool = False  # sampler log-probs come from another copy of the weights (vLLM)

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: Any) -> "RolloutBatch":
        """The batch with its tensors (and its step's) on ``device``; lists and strings are
        shared, not copied (Lightning's generic mover deep-copies dataclasses: ~9 ms a step)."""
        return _tensors_to(self, device)

    @property
    def last_in_step(self) -> bool:
        return self.micro_index == self.step.num_micro_batches - 1

    @property
    def last_in_rollout_batch(self) -> bool:
        """The last micro-batch of the last optimizer step on this rollout batch."""
        return self.last_in_step and self.step.update_index == self.step.num_updates - 1


@dataclass
class Rollouts:
    """All scored rollouts of one epoch on this rank, question-major (G rows per question)."""

    rows: list[dict[str, Any]]  # the dataset rows of the questions
    messages: list[list[dict[str, str]]]  # per question
    prompt_ids: list[list[int]]  # per question
    response_ids: list[list[int]]  # per rollout
    logprobs: list[list[float]]  # per rollout
    responses: list[str]  # per rollout
    scores: list[Score]  # per rollout
    group_size: int
    question_weights: torch.Tensor = None  # [B] set by a callback; ones by default
    stats: dict[str, float] = field(default_factory=dict)
    success_threshold: float = 0.5  # the one definition of success (data.success_threshold)
    separate_sampler: bool = False  # sampled by an engine with its own copy of the weights (vLLM)

    def __post_init__(self) -> None:
        if self.question_weights is None:
            self.question_weights = torch.ones(self.num_questions)

    @property
    def num_questions(self) -> int:
        return len(self.prompt_ids)

    @property
    def rewards(self) -> torch.Tensor:
        """``[B, G]`` rewards."""
        return torch.tensor([s.reward for s in self.scores], dtype=torch.float32).view(
            self.num_questions, self.group_size
        )

    @property
    def pass_rates(self) -> torch.Tensor:
        """``[B]`` each question's pass rate p̂: the share of its G rewards ``>= success_threshold``."""
        return (self.rewards >= self.success_threshold).float().mean(1)


class _ScoreTimeout(BaseException):
    """A BaseException: verifiers (sympy, math-verify, reasoning-gym) catch ``Exception``, and
    would otherwise swallow the timeout and return a wrong answer instead of being cut."""


def _raise_timeout(signum, frame):  # SIGALRM handler
    raise _ScoreTimeout()


class SafeScorer:
    """Runs a task's verifier so that a bug in it cannot kill or stall a long run.

    An exception, a NaN reward or a verifier that runs past ``timeout`` seconds scores 0 with
    no prediction, and is counted (``score_errors``, ``score_timeouts``); the traceback is
    logged once per kind of fault (exception type and the line that raised it), not once per
    response. The time-out uses ``SIGALRM`` and so applies in the main thread of a POSIX
    process (where training runs); elsewhere verifiers run without one.
    """

    def __init__(self, task: Task, timeout: Optional[float] = 10.0) -> None:
        self.task, self.timeout = task, timeout
        self._seen: set[str] = set()

    def _log_once(self, kind: str, message: str) -> None:
        if kind not in self._seen:
            self._seen.add(kind)
            log.warning("%s (further faults of this kind are counted in rollout/score_errors, not logged)", message)

    def _call(self, completion: str, row: dict[str, Any]) -> Score:
        use_alarm = (self.timeout is not None and hasattr(signal, "setitimer")
                     and threading.current_thread() is threading.main_thread())
        if not use_alarm:
            return self.task.score(completion, row)
        previous = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return self.task.score(completion, row)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def __call__(self, completion: str, row: dict[str, Any], counters: dict[str, int]) -> Score:
        try:
            score = self._call(completion, row)
        except _ScoreTimeout:
            counters["score_timeouts"] = counters.get("score_timeouts", 0) + 1
            self._log_once("timeout", f"verifier of task {self.task.name!r} took more than {self.timeout} s "
                                      f"(row uid={row.get('uid')}); scored 0")
            return Score(reward=0.0, pred=None, feedback="", format_ok=False)
        except Exception as exc:  # noqa: BLE001 - any verifier bug
            counters["score_errors"] = counters.get("score_errors", 0) + 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._log_once(f"{type(exc).__name__}@{where.filename}:{where.lineno}",
                           f"verifier of task {self.task.name!r} raised on row uid={row.get('uid')}; scored 0:\n"
                           + "".join(traceback.format_exception(exc)))
            return Score(reward=0.0, pred=None, feedback="", format_ok=False)
        reward = float(score.reward)
        if reward != reward:  # NaN reward
            counters["score_errors"] = counters.get("score_errors", 0) + 1
            self._log_once("nan", f"verifier of task {self.task.name!r} returned a NaN reward "
                                  f"(row uid={row.get('uid')}); scored 0")
            return Score(reward=0.0, pred=score.pred, feedback=score.feedback, format_ok=score.format_ok)
        return score


def _stream_seed(*parts: Any) -> int:
    """A 63-bit seed from any values (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


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
        val_samples: responses per validation question (paper: 16).
        val_sampling: validation sampling (paper: temperature 0.6, top-p 0.95).
        val_questions: cap on validation questions (None: the whole split).
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
        val_samples: int = 16,
        val_sampling: SamplingConfig = SamplingConfig(temperature=0.6, top_p=0.95, max_new_tokens=8192),
        val_questions: Optional[int] = None,
        max_prompt_tokens: int = 2048,
        enable_thinking: bool = False,
        seed: int = 0,
        success_threshold: float = 0.5,
        score_timeout: Optional[float] = 10.0,
    ) -> None:
        super().__init__()
        for name, value in [("questions_per_step", questions_per_step), ("rollouts_per_question", rollouts_per_question),
                            ("updates_per_batch", updates_per_batch), ("micro_batch_questions", micro_batch_questions),
                            ("val_samples", val_samples), ("max_prompt_tokens", max_prompt_tokens)]:
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
        self.val_samples = val_samples
        self.val_sampling = val_sampling
        self.val_questions = val_questions
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
        # sampler state (saved in checkpoints)
        self._cycle = 0
        self._cursor = 0
        self._order: Optional[list[int]] = None
        self._draws = 0  # training rollout batches drawn so far (the sampling stream index)
        self._consumed = False  # a training micro-batch of `current` has been collated
        self._base_seed: Optional[int] = None
        self.dropped_long_prompts: dict[str, int] = {}
        self._loaded: dict[str, Any] = {}  # splits read by check_before_weights, for setup

    # ------------------------------------------------------------------ datasets & state
    def check_before_weights(self, stage: str, required_group_size: int = 1, algorithm: str = "the module") -> None:
        """Everything that can be checked before the policy's weights load (the CLI calls it
        first): the engine is importable, the sampling settings can work, the group is large
        enough for the algorithm, and every split ``stage`` needs is read and validated row by
        row (kept, so :meth:`setup` does not read it again)."""
        if stage == "fit":
            from .module import check_group_size

            check_group_size(algorithm, required_group_size, self.rollouts_per_question)
            if self.sampling.temperature == 0:
                raise ValueError("data.sampling.temperature=0 (greedy) makes the G training rollouts of a question "
                                 "identical: no group baseline, no sibling demonstration, nothing to learn; use > 0 "
                                 "(paper: 1.0). Greedy decoding is supported for evaluation (data.val_sampling)")
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
        if self._base_seed is None:  # the global seed of seed_everything (restored on resume)
            self._base_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
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
        return {"cycle": self._cycle, "cursor": self._cursor, "draws": self._draws, "base_seed": self._base_seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cycle, self._cursor, self._order = int(state["cycle"]), int(state["cursor"]), None
        self._draws = int(state.get("draws", 0))
        if state.get("base_seed") is not None:
            self._base_seed = int(state["base_seed"])

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def generation_seed(self, kind: str, index: int) -> int:
        """The seed of one draw: ``kind`` ("train" / "validation" / "test"), its index (the
        rollout batch, or the optimizer step for evaluation), the rank, and the run's seeds."""
        rank = self._world()[0]
        return _stream_seed(self._base_seed, self.seed, kind, int(index), rank)

    def _next_questions(self) -> list[int]:
        """The next B/world questions of this rank, without replacement across epochs; a new
        permutation (seeded by ``seed`` and the cycle) starts when the data is used up."""
        rank, world = self._world()
        if self.questions_per_step % world:
            raise ValueError(f"data.questions_per_step ({self.questions_per_step}) must be divisible by the "
                             f"world size {world}")
        n = len(self.train_set)
        out: list[int] = []
        while len(out) < self.questions_per_step:
            if self._order is None:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._cycle)
                self._order = torch.randperm(n, generator=g).tolist()
            if self._cursor >= n:
                self._cycle, self._cursor, self._order = self._cycle + 1, 0, None
                continue
            take = min(self.questions_per_step - len(out), n - self._cursor)
            out.extend(self._order[self._cursor : self._cursor + take])
            self._cursor += take
        per_rank = self.questions_per_step // world
        return out[rank * per_rank : (rank + 1) * per_rank]

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
        rewards = out.rewards
        p_hat = out.pass_rates
        lengths = torch.tensor([len(r) for r in gens.response_ids], dtype=torch.float32)
        out.stats = {
            "reward_mean": rewards.mean().item(),
            "pass_rate_mean": p_hat.mean().item(),
            "frac_p0": (p_hat == 0).float().mean().item(),
            "frac_p1": (p_hat == 1).float().mean().item(),
            "frac_mixed": ((p_hat > 0) & (p_hat < 1)).float().mean().item(),
            "success_group_fraction": (p_hat > 0).float().mean().item(),  # SDPO's metric names
            "success_sample_fraction": (rewards >= self.success_threshold).float().mean().item(),
            "format_rate": sum(s.format_ok for s in scores) / len(scores),
            "response_length": lengths.mean().item(),
            "truncated_fraction": 1.0 - sum(gens.finished) / len(gens.finished),
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
        rows = [self.train_set[i] for i in self._next_questions()]
        seed = self.generation_seed("train", self._draws)
        self.current = self.rollout(rows, self.rollouts_per_question, self.sampling, seed)
        self._consumed = False
        self._draws += 1
        return self._loader(self.current, steps=self.updates_per_batch)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None or len(self.val_set) == 0:
            return DataLoader([])
        n = len(self.val_set) if self.val_questions is None else min(self.val_questions, len(self.val_set))
        rank, world = self._world()
        rows = [self.val_set[i] for i in range(rank, n, world)]
        trainer = self.trainer
        fn = getattr(getattr(trainer, "state", None), "fn", None)
        stage = "test" if fn == "test" else "validation"
        seed = self.generation_seed(stage, getattr(trainer, "global_step", 0))
        self.validation = None
        try:
            self.validation = self.rollout(rows, self.val_samples, self.val_sampling, seed)
        except interrupt.Preempted:
            if fn != "fit" or trainer.sanity_checking:
                raise
            # mid-run validation cut by a signal: skip it; the step it follows is complete and
            # is saved at the end of this epoch (callbacks.checkpoint), then the run stops
            log.warning("validation at step %d abandoned: stop requested", trainer.global_step)
            return DataLoader([])
        return self._loader(self.validation, steps=1, sampling=self.val_sampling)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def _loader(self, rollouts: Rollouts, steps: int, sampling: Optional[SamplingConfig] = None) -> DataLoader:
        """Plan micro-batches of whole groups: ``steps`` optimizer steps, each split into
        micro-batches of ``micro_batch_questions`` questions; collated lazily, so weights set
        by a callback at epoch start are used."""
        B = rollouts.num_questions
        per_step = -(-B // steps)
        plan = []
        starts = list(range(0, B, per_step))
        for u, s in enumerate(starts):
            step_q = list(range(s, min(s + per_step, B)))
            chunks = [step_q[i : i + self.micro_batch_questions] for i in range(0, len(step_q), self.micro_batch_questions)]
            plan.extend((step_q, mi, len(chunks), chunk, u) for mi, chunk in enumerate(chunks))
        draw = self._draws
        temperature = (sampling or self.sampling).temperature
        tokenizer = self._policy_and_tokenizer()[1]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        training = rollouts is self.current

        def collate(item):
            step_q, micro_index, n_micro, questions, u = item
            if training:
                self._consumed = True
            return collate_rollouts(rollouts, questions, step_q, micro_index, n_micro, pad,
                                    temperature or 1.0, self.enable_thinking, update_index=u,
                                    num_updates=len(starts), step_id=draw * len(starts) + u)

        return DataLoader(_Plan(plan, collate), batch_size=None)


class _Plan(torch.utils.data.IterableDataset):
    """This rank's micro-batches, in order. Iterable (with a length), so that Lightning does not
    re-shard it with a DistributedSampler: each rank already holds its own questions, and every
    rank must see all of its micro-batches (a re-shard gave ranks different micro-batch counts
    and mismatched collectives)."""

    def __init__(self, items: list, collate: Any) -> None:
        self.items, self.collate = items, collate

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return (self.collate(item) for item in self.items)


def collate_rollouts(
    r: Rollouts,
    questions: list[int],
    step_questions: list[int],
    micro_index: int,
    num_micro: int,
    pad_id: int,
    temperature: float,
    enable_thinking: bool,
    update_index: int = 0,
    num_updates: int = 1,
    step_id: int = 0,
) -> RolloutBatch:
    """Tensors for the rollouts of ``questions`` (all G rows of each), which are a contiguous
    run of ``step_questions`` (the questions of their optimizer step)."""
    G = r.group_size
    seqs = [q * G + j for q in questions for j in range(G)]
    prompts = [r.prompt_ids[i // G] for i in seqs]
    responses = [r.response_ids[i] for i in seqs]
    T = max(1, max(len(x) for x in responses))
    n = len(seqs)
    response_ids = torch.full((n, T), pad_id, dtype=torch.long)
    response_mask = torch.zeros((n, T))
    logprobs = torch.zeros((n, T))
    for k, (y, i) in enumerate(zip(responses, seqs)):
        if y:
            response_ids[k, : len(y)] = torch.tensor(y)
            response_mask[k, : len(y)] = 1
            logprobs[k, : len(y)] = torch.tensor(r.logprobs[i])
    input_ids, attention, positions, P = pack_prompt_response(prompts, response_ids, response_mask, pad_id)
    rewards_all = r.rewards.view(-1)
    p_hat = r.pass_rates
    step_seqs = [q * G + j for q in step_questions for j in range(G)]
    step = StepInfo(
        rewards=rewards_all[step_seqs],
        group_ids=torch.tensor([i // G for i in step_seqs]),
        has_feedback=torch.tensor([bool(r.scores[i].feedback) for i in step_seqs]),
        response_lengths=torch.tensor([len(r.response_ids[i]) for i in step_seqs]),
        question_weights=r.question_weights[[i // G for i in step_seqs]].float(),
        num_micro_batches=num_micro,
        messages=[r.messages[i // G] for i in step_seqs],
        responses=[r.responses[i] for i in step_seqs],
        feedback=[r.scores[i].feedback or "" for i in step_seqs],
        update_index=update_index,
        num_updates=num_updates,
        step_id=step_id,
    )
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=positions,
        response_ids=response_ids,
        response_mask=response_mask,
        sampler_logprobs=logprobs,
        rewards=rewards_all[seqs],
        pass_rates=p_hat[[i // G for i in seqs]],
        question_weights=r.question_weights[[i // G for i in seqs]].float(),
        group_ids=torch.tensor([i // G for i in seqs]),
        prompt_width=P,
        group_size=G,
        temperature=temperature,
        enable_thinking=enable_thinking,
        uids=[str(r.rows[i // G].get("uid", i // G)) for i in seqs],
        messages=[r.messages[i // G] for i in seqs],
        responses=[r.responses[i] for i in seqs],
        preds=[r.scores[i].pred for i in seqs],
        feedback=[r.scores[i].feedback or "" for i in seqs],
        step=step,
        micro_index=micro_index,
        step_offset=step_questions.index(questions[0]) * G if questions else 0,
        success_threshold=r.success_threshold,
        stats=dict(r.stats),
        separate_sampler=r.separate_sampler,
    )

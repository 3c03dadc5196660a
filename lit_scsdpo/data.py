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

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

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
    stats: dict[str, float] = field(default_factory=dict)  # rollout-phase metrics

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]

    @property
    def last_in_step(self) -> bool:
        return self.micro_index == self.step.num_micro_batches - 1


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


def _score_safely(task: Task, completion: str, row: dict[str, Any], counters: dict[str, int]) -> Score:
    """A crashing verifier must not kill a long run: score 0, count it, log it."""
    try:
        score = task.score(completion, row)
    except Exception as exc:  # noqa: BLE001 - any verifier bug
        counters["score_errors"] += 1
        log.warning("verifier crashed on row uid=%s: %r", row.get("uid"), exc)
        return Score(reward=0.0, pred=None, feedback="", format_ok=False)
    reward = float(score.reward)
    if reward != reward:  # NaN reward
        counters["score_errors"] += 1
        log.warning("verifier returned NaN reward for uid=%s", row.get("uid"))
        return Score(reward=0.0, pred=score.pred, feedback=score.feedback, format_ok=score.format_ok)
    return score


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
        max_prompt_tokens: prompts longer than this are skipped and counted (paper: 2048).
        enable_thinking: chat-template kwarg, identical for student and teacher (paper: False).
        seed: seed of the question order.
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
    ) -> None:
        super().__init__()
        for name, value in [("questions_per_step", questions_per_step), ("rollouts_per_question", rollouts_per_question),
                            ("updates_per_batch", updates_per_batch), ("micro_batch_questions", micro_batch_questions),
                            ("val_samples", val_samples), ("max_prompt_tokens", max_prompt_tokens)]:
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
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
        self.train_set = None
        self.val_set = None
        self.current: Optional[Rollouts] = None  # this epoch's training rollouts
        self.validation: Optional[Rollouts] = None
        # sampler state (saved in checkpoints)
        self._cycle = 0
        self._cursor = 0
        self._order: Optional[list[int]] = None

    # ------------------------------------------------------------------ datasets & state
    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.task.load("train")
            if len(self.train_set) == 0:
                raise ValueError(f"task {self.task.name!r}: the train split is empty")
        if stage in (None, "fit", "validate") and self.val_set is None:
            self.val_set = self.task.load("validation")
        if stage == "test" and self.val_set is None:
            self.val_set = self.task.load("test")

    def state_dict(self) -> dict[str, Any]:
        return {"cycle": self._cycle, "cursor": self._cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._cycle, self._cursor, self._order = int(state["cycle"]), int(state["cursor"]), None

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _next_questions(self) -> list[int]:
        """The next B/world questions of this rank, without replacement across epochs; a new
        permutation (seeded by ``seed`` and the cycle) starts when the data is used up."""
        rank, world = self._world()
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
        if self.questions_per_step % world:
            raise ValueError(f"data.questions_per_step must be divisible by the world size {world}")
        per_rank = self.questions_per_step // world
        return out[rank * per_rank : (rank + 1) * per_rank]

    # ------------------------------------------------------------------ rollouts
    def _policy_and_tokenizer(self) -> tuple[torch.nn.Module, Any]:
        module = self.trainer.lightning_module
        return module.policy, module.tokenizer

    def rollout(self, rows: list[dict[str, Any]], n: int, sampling: SamplingConfig) -> Rollouts:
        """Generate ``n`` responses per row with the current policy, and score them."""
        policy, tokenizer = self._policy_and_tokenizer()
        counters = {"score_errors": 0, "empty_responses": 0, "skipped_long_prompts": 0}
        kept, messages, prompt_ids = [], [], []
        for row in rows:
            msgs = self.task.messages(row)
            ids = render_prompt(tokenizer, msgs, self.enable_thinking)
            if len(ids) > self.max_prompt_tokens:
                counters["skipped_long_prompts"] += 1
                log.warning("skipping uid=%s: prompt has %d tokens > max_prompt_tokens=%d",
                            row.get("uid"), len(ids), self.max_prompt_tokens)
                continue
            kept.append(row)
            messages.append(msgs)
            prompt_ids.append(ids)
        if not kept:
            raise ValueError("every sampled prompt is longer than data.max_prompt_tokens")
        self.engine.update_weights(policy)
        gens = self.engine.generate(prompt_ids, n, sampling)
        t0 = time.perf_counter()
        responses = tokenizer.batch_decode(gens.response_ids, skip_special_tokens=True)
        scores = []
        for i, text in enumerate(responses):
            row = kept[gens.prompt_index[i]]
            if not text.strip():
                counters["empty_responses"] += 1
            scores.append(_score_safely(self.task, text, row, counters))
        score_seconds = time.perf_counter() - t0
        out = Rollouts(kept, messages, prompt_ids, gens.response_ids, gens.logprobs, responses, scores, n)
        rewards = out.rewards
        p_hat = (rewards >= 0.5).float().mean(1)
        lengths = torch.tensor([len(r) for r in gens.response_ids], dtype=torch.float32)
        out.stats = {
            "reward_mean": rewards.mean().item(),
            "pass_rate_mean": p_hat.mean().item(),
            "frac_p0": (p_hat == 0).float().mean().item(),
            "frac_p1": (p_hat == 1).float().mean().item(),
            "frac_mixed": ((p_hat > 0) & (p_hat < 1)).float().mean().item(),
            "success_group_fraction": (p_hat > 0).float().mean().item(),  # SDPO's metric names
            "success_sample_fraction": (rewards >= 0.5).float().mean().item(),
            "format_rate": sum(s.format_ok for s in scores) / len(scores),
            "response_length": lengths.mean().item(),
            "truncated_fraction": 1.0 - sum(gens.finished) / len(gens.finished),
            "gen_tokens_per_s": gens.num_tokens / max(gens.seconds, 1e-9),
            "time_generate": gens.seconds,
            "time_score": score_seconds,
            **{k: float(v) for k, v in counters.items()},
        }
        return out

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        rows = [self.train_set[i] for i in self._next_questions()]
        self.current = self.rollout(rows, self.rollouts_per_question, self.sampling)
        return self._loader(self.current, steps=self.updates_per_batch)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None or len(self.val_set) == 0:
            return DataLoader([])
        n = len(self.val_set) if self.val_questions is None else min(self.val_questions, len(self.val_set))
        rank, world = self._world()
        rows = [self.val_set[i] for i in range(rank, n, world)]
        self.validation = self.rollout(rows, self.val_samples, self.val_sampling)
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
        for s in range(0, B, per_step):
            step_q = list(range(s, min(s + per_step, B)))
            chunks = [step_q[i : i + self.micro_batch_questions] for i in range(0, len(step_q), self.micro_batch_questions)]
            plan.extend((step_q, mi, len(chunks), chunk) for mi, chunk in enumerate(chunks))
        temperature = (sampling or self.sampling).temperature
        tokenizer = self._policy_and_tokenizer()[1]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def collate(item):
            step_q, micro_index, n_micro, questions = item
            return collate_rollouts(rollouts, questions, step_q, micro_index, n_micro, pad,
                                    temperature or 1.0, self.enable_thinking)

        return DataLoader(plan, batch_size=None, shuffle=False, collate_fn=collate)


def collate_rollouts(
    r: Rollouts,
    questions: list[int],
    step_questions: list[int],
    micro_index: int,
    num_micro: int,
    pad_id: int,
    temperature: float,
    enable_thinking: bool,
) -> RolloutBatch:
    """Tensors for the rollouts of ``questions`` (all G rows of each)."""
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
    p_hat = (r.rewards >= 0.5).float().mean(1)
    step_seqs = [q * G + j for q in step_questions for j in range(G)]
    step = StepInfo(
        rewards=rewards_all[step_seqs],
        group_ids=torch.tensor([i // G for i in step_seqs]),
        has_feedback=torch.tensor([bool(r.scores[i].feedback) for i in step_seqs]),
        response_lengths=torch.tensor([len(r.response_ids[i]) for i in step_seqs]),
        question_weights=r.question_weights[[i // G for i in step_seqs]].float(),
        num_micro_batches=num_micro,
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
        stats=dict(r.stats),
    )

"""The policy-optimisation LightningModules: :class:`PolicyOptimization`, :class:`GRPO`, :class:`SDPO`.

The base class owns the policy (any ``AutoModelForCausalLM`` path), its tokenizer, manual
optimisation (AdamW, linear warmup then constant LR, grad-norm clipping, gradient
accumulation over the micro-batches of one optimizer step), the student forward pass and
step logging. A new algorithm is a subclass that overrides one method,
``compute_loss(batch) -> (loss, metrics)``; see docs/extending.md.

Kept from the paper's setting: on-policy updates (one optimizer step per rollout batch by
default), seq-mean-token-mean aggregation over all B·G sequences for SDPO, token-mean for
GRPO, EMA self-teacher updated once per optimizer step, IS ratio (≡1 on-policy).
Rollout TIS against a separate sampler (paper-spec §1.4(2), ``rollout_correction``) is on by
default when the engine is vLLM and off with the HF engine, which samples with the trained
weights (the weight would be ≡ 1). Dropped: the entropy bonus (0 in the paper).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from . import interrupt
from . import losses as L
from . import sharding
from .assets import resolve_model_path
from .data import RolloutBatch
from .forward import PackedRows, SharedPrefixRows, response_logits, run_with_hidden, supports_shared_prefix
from .teacher import RepromptTemplates, Rows, SelfTeacher, TeacherMode, build_reprompts, fit_reprompt

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
#: ``logits_chunk_size: auto`` chunks at this size when the vocabulary has at least AUTO_CHUNK_VOCAB entries
AUTO_CHUNK, AUTO_CHUNK_VOCAB = 512, 32768
ChunkSize = Union[int, Literal["auto"], None]
#: ``gradient_checkpointing: auto`` turns activation checkpointing on from this many parameters
AUTO_CHECKPOINTING_PARAMETERS = 50_000_000
Checkpointing = Union[bool, Literal["auto"]]


class TrainingDiverged(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


def load_policy(model_name_or_path: str, torch_dtype: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and causal LM, with a one-line error naming the argument when the path is wrong
    (instead of transformers' long traceback about hub repo ids)."""
    path = resolve_model_path(model_name_or_path)
    local_looking = path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if not os.path.exists(os.path.expanduser(path)) and local_looking:
        raise FileNotFoundError(f"model.model_name_or_path={model_name_or_path!r}: no such local folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, torch_dtype))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "the local folder" if os.path.exists(path) else "it as a hub id (no local folder of that name)"
        raise OSError(f"model.model_name_or_path={model_name_or_path!r}: could not load {where}: {first}") from None
    return tokenizer, policy


def enable_checkpointing(model: torch.nn.Module) -> None:
    """transformers' activation checkpointing of each decoder layer, non-reentrant: the shared
    prefix's keys reach the recomputed layers by closure, not as inputs (lit_scsdpo/forward.py)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_logits_are_head(model: torch.nn.Module) -> None:
    """``logits_chunk_size`` computes logits as ``lm_head(final hidden state)``. Refuse models
    whose forward does more (logit soft-capping, scaling): checked numerically on 4 tokens."""
    ids = torch.arange(1, 5, device=next(model.parameters()).device)[None]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = run_with_hidden(model, input_ids=ids, use_cache=False, logits_to_keep=1)[0]
        head = model.get_output_embeddings()(hidden).float()
    if not torch.allclose(full, head, rtol=1e-3, atol=1e-3 * max(1.0, full.abs().max().item())):
        raise ValueError(f"model.logits_chunk_size: {type(model).__name__}'s logits are not lm_head(hidden state) "
                         f"(e.g. logit soft-capping or scaling); set logits_chunk_size: null for this model")


def _auto_chunk_size(model: torch.nn.Module) -> Optional[int]:
    """``logits_chunk_size: auto``: chunk large vocabularies when the logits are ``lm_head(h)``."""
    if model.get_output_embeddings().weight.shape[0] < AUTO_CHUNK_VOCAB:
        return None
    try:
        check_logits_are_head(model)
    except ValueError as exc:
        log.info("model.logits_chunk_size auto: off (%s)", exc)
        return None
    return AUTO_CHUNK


@dataclass
class OptimConfig:
    """Optimiser settings (paper-spec §1.8, science / tool use).

    Attributes:
        lr: peak learning rate (paper: 1e-5, constant after warmup).
        betas: AdamW betas (paper: (0.9, 0.999)).
        weight_decay: AdamW weight decay (paper: 0.01).
        warmup_steps: linear warmup optimizer steps (paper: 10).
        grad_clip: max global grad norm (paper: 1.0); 0 disables clipping.
    """

    lr: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0


ROLLOUT_CORRECTION_MODES = ("auto", "token", "off")


@dataclass
class RolloutCorrection:
    """Truncated importance sampling (TIS) for the sampler/trainer mismatch (paper-spec §1.4(2)):
    each token's loss × ``min(π_old_train(y_t) / π_sampler(y_t), cap)``, detached.

    Attributes:
        mode: ``auto`` (default): on when the rollouts come from an engine with its own copy of
            the weights and kernels (vLLM), off for the HF engine, which samples with the trained
            weights (the weight would be ≡ 1); ``token``: always on; ``off``.
        cap: the truncation ρ (paper: 2).
    """

    mode: str = "auto"
    cap: float = 2.0


# hyper-parameters saved in checkpoints: readable by torch.load(weights_only=True), Lightning's default
torch.serialization.add_safe_globals([OptimConfig, RepromptTemplates, RolloutCorrection])


@dataclass
class StudentOutput:
    logp: Tensor  # [n, T] log-prob of the sampled tokens at the training temperature
    entropy: Tensor  # [n, T] (detached)
    logits: Optional[Tensor] = None  # [n, T, V] at the response positions (unchunked mode)
    hidden: Optional[Tensor] = None  # [n, T, H] final hidden states there (chunked mode)


def _chunked_token_stats(hidden: Tensor, head: torch.nn.Module, targets: Tensor, temperature: float,
                         chunk_size: int) -> tuple[Tensor, Tensor]:
    """Sampled-token log-probs (with grad) and entropies (no grad) from hidden states, over
    chunks of positions with recomputation, so the ``[T, V]`` logits never exist at once."""
    n, T, H = hidden.shape
    h, y = hidden.reshape(-1, H), targets.reshape(-1)

    def stats(h_c: Tensor, y_c: Tensor) -> tuple[Tensor, Tensor]:
        logp_all = torch.log_softmax(head(h_c).float() / temperature, dim=-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return logp_all.gather(-1, y_c[:, None]).squeeze(-1), ent.detach()

    logps, ents = [], []
    for start in range(0, h.shape[0], chunk_size):
        h_c, y_c = h[start : start + chunk_size], y[start : start + chunk_size]
        lp, ent = checkpoint(stats, h_c, y_c, use_reentrant=False) if torch.is_grad_enabled() else stats(h_c, y_c)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps).view(n, T), torch.cat(ents).view(n, T)


class PolicyOptimization(pl.LightningModule):
    """Base module: policy, tokenizer, optimisation loop, logging. Subclasses define the loss.

    Args:
        model_name_or_path: a local path or hub id of a causal LM (``AutoModelForCausalLM``),
            or ``asset:<name>`` for a model shipped in ``lit_scsdpo/assets``.
        optim: optimiser settings.
        loss_agg_mode: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum``
            (see ``losses.aggregate_loss``).
        torch_dtype: the dtype the checkpoint is read in. Training (fit) always keeps fp32
            master weights, gradients, AdamW state and an fp32 EMA teacher: the weights are
            upcast after sharding, which is lossless for a bf16 checkpoint (Qwen3, OLMo-3), and
            ``bfloat16`` halves the host memory while loading. Compute precision is
            ``trainer.precision`` (``bf16-mixed`` on GPUs). validate/test keep this dtype.
        gradient_checkpointing: activation checkpointing of each decoder layer (the model's
            own, on the same layer class that sharding wraps): the backward recomputes each
            layer's forward, so the student keeps one ``[tokens, hidden]`` input per layer
            instead of all its activations. ``auto`` (default): on from 50M parameters
            (SmolLM2-135M, B=4 × G=4 × 128 tokens: ~2.8 → ~0.15 GiB of student activations,
            for one more student forward; docs/performance.md), off below (the tiny default's
            activations are a few MB).
            The shared-prefix student stays exact and shared under it (lit_scsdpo/forward.py).
        logits_chunk_size: compute the LM head, log-softmax and the distillation loss over
            chunks of this many response positions (recomputed in backward), so no ``[T, V]``
            logit matrix is materialised (long responses × large vocabularies). None: off.
            ``auto`` (default): 512 when the vocabulary has ≥ 32,768 entries (SmolLM2 49,152,
            Qwen3 151,936) and the model's logits are ``lm_head(h)``, else off.
        rollout_correction: truncated importance sampling against the sampler's log-probs
            (:class:`RolloutCorrection`; on by default when the engine is vLLM).
        max_nonfinite_steps: stop the run (after saving the last good state) when this many
            consecutive optimizer steps had a non-finite loss or gradient; each such step is
            skipped (no update) and counted.

    The optimizer step is skipped, on every rank together, when the step's gradient is
    non-finite or exactly zero (nothing to learn: every row masked, every question weight 0,
    every group's advantage 0): no AdamW moment or weight-decay update, no LR-schedule advance,
    no EMA (paper-spec §3.3(4)). Skips are counted in ``train/skipped_steps``.

    The student runs each question's prompt once for its G rollouts and the responses on its
    KV cache (``share_student_prefix``, on; exact, tests/test_forward.py); the LM head runs at
    the response positions only. The full set of step scalars is logged on the steps the
    logger writes (``trainer.log_every_n_steps``), loss and reward at every step.
    """

    #: the smallest group size G the loss can learn from (group baselines / sibling demonstrations)
    min_group_size: int = 1
    #: the run's configuration as the CLI parsed it, recorded in every checkpoint so that a resume
    #: can be compared with it (``lit_scsdpo.launch``); None outside the CLI
    run_config: Optional[dict[str, Any]] = None

    @classmethod
    def required_group_size(cls, init_args: dict[str, Any]) -> int:
        """The smallest ``data.rollouts_per_question`` this module with ``init_args`` can learn
        from; checked before the weights load (the CLI) and again in :meth:`setup`."""
        return cls.min_group_size
    #: run each question's prompt once for its G rollouts (set False for one packed forward per row)
    share_student_prefix: bool = True

    def __init__(
        self,
        model_name_or_path: str,
        optim: OptimConfig = OptimConfig(),
        loss_agg_mode: L.AggregationMode = "seq-mean-token-mean",
        torch_dtype: str = "float32",
        gradient_checkpointing: Checkpointing = "auto",
        logits_chunk_size: ChunkSize = "auto",
        max_nonfinite_steps: int = 3,
        rollout_correction: RolloutCorrection = RolloutCorrection(),
    ) -> None:
        super().__init__()
        # every argument is checked before the weights load
        if gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(f"model.gradient_checkpointing must be true, false or auto, got {gradient_checkpointing!r}")
        if loss_agg_mode not in L.AGGREGATION_MODES:
            raise ValueError(f"model.loss_agg_mode must be one of {L.AGGREGATION_MODES}, got {loss_agg_mode!r}")
        if torch_dtype not in DTYPES:
            raise ValueError(f"model.torch_dtype must be one of {DTYPES}, got {torch_dtype!r}")
        if logits_chunk_size not in (None, "auto") and (not isinstance(logits_chunk_size, int) or logits_chunk_size < 1):
            raise ValueError(f"model.logits_chunk_size must be >= 1, auto or null, got {logits_chunk_size!r}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        _check_optim(optim)
        if rollout_correction.mode not in ROLLOUT_CORRECTION_MODES or not rollout_correction.cap > 0:
            raise ValueError(f"model.rollout_correction: mode must be one of {ROLLOUT_CORRECTION_MODES} and cap > 0, "
                             f"got {rollout_correction}")
        self.save_hyperparameters()
        self.rollout_correction = rollout_correction
        self.automatic_optimization = False
        self.optim = optim
        self.loss_agg_mode = loss_agg_mode
        self.tokenizer, self.policy = load_policy(model_name_or_path, torch_dtype)
        if gradient_checkpointing == "auto":
            gradient_checkpointing = sum(p.numel() for p in self.policy.parameters()) >= AUTO_CHECKPOINTING_PARAMETERS
        if gradient_checkpointing:
            enable_checkpointing(self.policy)
        if logits_chunk_size == "auto":
            logits_chunk_size = _auto_chunk_size(self.policy)
        elif logits_chunk_size is not None:
            check_logits_are_head(self.policy)
        self.logits_chunk_size: Optional[int] = logits_chunk_size
        self.max_nonfinite_steps = max_nonfinite_steps
        self._step_time: dict[str, float] = {}
        self._counters = {"nonfinite_loss": 0, "nonfinite_grad": 0, "skipped_steps": 0}
        self._consecutive_nonfinite = 0
        self._updated_in_batch = False  # an optimizer step happened on the current rollout batch
        self._step_nonfinite = False  # a micro-batch of the current step had a non-finite loss (any rank)
        self._step_metrics: dict[str, list[float]] = {}
        self._step_tokens, self._step_t0 = 0, time.perf_counter()

    # ------------------------------------------------------------------ extension point
    def compute_loss(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        """This micro-batch's contribution to the step loss, and metrics to log. Override."""
        raise NotImplementedError

    # ------------------------------------------------------------------ helpers for losses
    def student_rows(self, batch: RolloutBatch) -> Rows:
        """The micro-batch's rows for the student forward: the G rollouts of a question share
        its prompt's forward (:class:`SharedPrefixRows`, with gradients through the shared
        prefix) when ``share_student_prefix`` is on and the policy supports it, unsharded
        (FSDP2 keeps one forward per backward); else the packed rows as collated."""
        if self.share_student_prefix and not sharding.is_sharded(self.policy) and supports_shared_prefix(self.policy):
            rows = SharedPrefixRows.from_packed(batch.input_ids, batch.attention_mask, batch.prompt_width,
                                                batch.group_ids.to(batch.input_ids.device), batch.response_ids,
                                                batch.response_mask)
            if rows is not None:
                return rows
        return PackedRows(batch.input_ids, batch.attention_mask, batch.position_ids, batch.prompt_width,
                          batch.response_ids.shape[1])

    def student_forward(self, batch: RolloutBatch) -> StudentOutput:
        t0 = time.perf_counter()
        rows = self.student_rows(batch)
        if self.logits_chunk_size is not None:
            hidden = rows.forward(self.policy, "hidden")
            logp, entropy = _chunked_token_stats(hidden, self.policy.get_output_embeddings(), batch.response_ids,
                                                 batch.temperature, self.logits_chunk_size)
            self._add_time("student", time.perf_counter() - t0)
            return StudentOutput(logp=logp, entropy=entropy, hidden=hidden)
        logits = rows.forward(self.policy, "logits").float() / batch.temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, batch.response_ids[..., None]).squeeze(-1)
        with torch.no_grad():
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        self._add_time("student", time.perf_counter() - t0)
        return StudentOutput(logp=logp, entropy=entropy, logits=logits)

    def old_logp(self, batch: RolloutBatch, student: StudentOutput) -> Tensor:
        """The behaviour policy's log-probs for importance ratios: on-policy the current ones,
        detached (ratio ≡ 1, as verl); with several updates per rollout batch the log-probs
        the rollouts were sampled with, i.e. before this batch's first update."""
        on_policy = batch.step.num_updates == 1
        return student.logp.detach() if on_policy else batch.sampler_logprobs.to(student.logp)

    def rollout_is_weights(self, batch: RolloutBatch, student: StudentOutput) -> tuple[Optional[Tensor], dict[str, float]]:
        """The per-token TIS weight ``[n, T]`` (None when off) and its diagnostics: the mean
        weight, the largest untruncated ratio and the share of truncated tokens."""
        c = self.rollout_correction
        if c.mode == "off" or (c.mode == "auto" and not batch.separate_sampler):
            return None, {}
        old = self.old_logp(batch, student)
        sampler = batch.sampler_logprobs.to(old)
        raw = L.importance_ratio(old, sampler, clip=float("inf"))  # untruncated, for the diagnostics
        weights = raw.clamp(max=c.cap)
        m = batch.response_mask.to(old)
        tokens = m > 0
        return weights, {"rollout_is_mean": _masked_mean(weights, m),
                         "rollout_is_max": raw[tokens].max().item() if tokens.any() else 1.0,
                         "rollout_is_clipped": _masked_mean((raw > c.cap).float(), m)}

    def reduce(self, tensor: Tensor, op: L.ReduceOp) -> Tensor:
        """Global reduction over data-parallel ranks (identity on one process)."""
        return L.distributed_reduce()(tensor, op)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any: skip decisions are made globally, so
        no rank waits in a collective (backward, all-reduce) that another rank skipped."""
        return bool(self.reduce(torch.tensor([float(flag)], device=self.device), "max").item() > 0)

    def normalizer(self, lengths: Tensor) -> Tensor:
        """Global normaliser for ``loss_agg_mode`` from the per-sequence loss-mask token counts
        of this rank's whole optimizer step (``losses.global_normalizer``)."""
        return L.global_normalizer(lengths, self.loss_agg_mode, reduce=self.reduce).to(self.device)

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def _add_time(self, phase: str, seconds: float) -> None:
        self._step_time[phase] = self._step_time.get(phase, 0.0) + seconds

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        _check_strategy(self.trainer.strategy)
        dm = getattr(self.trainer, "datamodule", None)
        G = getattr(dm, "rollouts_per_question", None)
        if stage == "fit" and G is not None:
            check_group_size(type(self).__name__, self.min_group_size, G)
        if stage == "fit":
            # loss and reward reach the logger at every optimizer step, the full scalar set every
            # trainer.log_every_n_steps steps: Lightning's own gate counts micro-batches and would
            # write loss and reward only at its multiples (a 2-step run had no curve at all)
            trainer = self.trainer
            every = getattr(trainer, "lit_scsdpo_full_scalars_every", None) or trainer.log_every_n_steps
            trainer.lit_scsdpo_full_scalars_every = self._full_scalars_every = max(1, int(every))
            trainer.log_every_n_steps = 1

    def sharded_models(self) -> list[torch.nn.Module]:
        """The models :meth:`configure_model` shards: the policy; subclasses add the models they
        hold (the SDPO teacher, the GRPO reference), sharded the same way."""
        return [self.policy]

    def configure_model(self) -> None:
        """Under :class:`~lit_scsdpo.sharding.FSDP2Strategy` (``--trainer.strategy fsdp2``): FSDP2
        on each decoder layer and the root of every model in :meth:`sharded_models`, with the
        trainer's mixed precision as the compute dtype. When fitting: fp32 master weights."""
        mesh = self._device_mesh  # set by Lightning's ModelParallelStrategy, else None
        if mesh is not None and not sharding.is_sharded(self.policy):
            names = mesh.mesh_dim_names or ()
            if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
                raise ValueError(f"trainer.strategy: tensor parallelism (size {mesh['tensor_parallel'].size()}) is "
                                 f"not supported; shard with --trainer.strategy fsdp2 (all ranks data parallel)")
            dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
            param_dtype = sharding.PRECISION_PARAM_DTYPES.get(str(self.trainer.precision))
            for model in self.sharded_models():
                sharding.shard_model(model, dp_mesh, param_dtype)
        if self.trainer.state.fn == "fit":
            self.float()  # after sharding: each rank upcasts only its shard

    def on_fit_start(self) -> None:
        precision = str(self.trainer.precision)
        dtypes = {p.dtype for p in self.policy.parameters()}
        if dtypes != {torch.float32} or precision == "16-mixed":
            raise ValueError(
                f"trainer.precision={precision!r} trains {sorted(map(str, dtypes))} weights"
                f"{' with fp16 loss scaling, which the manual optimisation loop does not apply' if precision == '16-mixed' else ''}"
                f": AdamW updates at learning rates like 1e-5 round away in half precision. Use "
                f"trainer.precision: bf16-mixed (bf16 compute, fp32 master weights) or 32-true")
        # from_pretrained returns eval mode and Lightning keeps module modes: train mode is what
        # turns activation checkpointing on; dropout stays off so that the sampled and the
        # trained policy are one function (on-policy ratio 1; TRL's disable_dropout default)
        disable_dropout(self.policy)
        self.policy.train()

    def configure_optimizers(self) -> Any:
        o = self.optim
        params = list(self.policy.parameters())
        # the fused kernel: on CPU ~7x faster than the default foreach path at 135M parameters
        # (0.19 vs 1.3 s per step), which also allocates full-size temporaries; not for DTensors
        fused = bool(params) and all(not hasattr(p, "to_local") and p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay,
                                fused=True if fused else None)
        warm = max(0, int(o.warmup_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        if isinstance(batch, RolloutBatch):
            return batch.to(device)  # tensors only; Lightning's mover deep-copies the rest
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lit_scsdpo"] = {"counters": dict(self._counters),
                                    "consecutive_nonfinite": self._consecutive_nonfinite}
        if self.run_config is not None:
            checkpoint["lit_scsdpo"]["run_config"] = self.run_config

    def load_policy_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Start a new run from a checkpoint's policy weights (``fit --weights_from``): the
        ``policy.*`` entries of a Lightning ``state_dict``, loaded strictly; the models derived
        from the initial policy (SDPO teacher, GRPO reference) start from them too. Optimizer,
        schedule, loop and sampler state are not taken."""
        prefix = "policy."
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError("--weights_from: the checkpoint has no policy weights ('policy.*' in its state_dict)")
        missing, unexpected = self.policy.load_state_dict(weights, strict=False)
        missing = [k for k in missing if k not in _tied_names(self.policy)]
        if missing or unexpected:
            raise ValueError(f"--weights_from: the checkpoint's policy does not match "
                             f"model.model_name_or_path's architecture (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
        self.on_policy_loaded()

    def on_policy_loaded(self) -> None:
        """Called after :meth:`load_policy_weights`: re-derive what was copied from the initial policy."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_scsdpo", {})
        self._counters.update(state.get("counters", {}))
        self._consecutive_nonfinite = int(state.get("consecutive_nonfinite", 0))

    def on_train_batch_start(self, batch: RolloutBatch, batch_idx: int) -> None:
        if batch.micro_index == 0:
            self._step_time = {}
            self._step_metrics: dict[str, list[float]] = {}
            self._step_tokens = 0
            self._step_t0 = time.perf_counter()
            self._step_nonfinite = False
            if batch.step.update_index == 0:
                self._updated_in_batch = False

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        interrupt.check_global(self.device)  # a stop signal: abandon this step on every rank
        opt = self.optimizers()
        loss, metrics = self.compute_loss(batch)
        t0 = time.perf_counter()
        if self.any_rank(not bool(torch.isfinite(loss))):
            # on every rank: no backward for this micro-batch, and the whole step is skipped
            self._counters["nonfinite_loss"] += 1
            self._step_nonfinite = True
            self.print(f"warning: non-finite loss at step {self.global_step}; the step will be skipped")
        elif not self._step_nonfinite:
            # contributions sum to the global loss; DDP/FSDP average gradients over ranks
            self.manual_backward(loss * self.world_size)
        self._add_time("backward", time.perf_counter() - t0)
        for k, v in {"loss": loss.detach().item(), **metrics}.items():
            self._step_metrics.setdefault(k, []).append(v)
        self._step_tokens += int(batch.attention_mask.sum())
        if batch.last_in_step:
            interrupt.check_global(self.device)
            self._optimizer_step(opt, batch)
        return loss.detach()

    def _optimizer_step(self, opt: Any, batch: RolloutBatch) -> None:
        t0 = time.perf_counter()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        # the global norm before clipping; under FSDP2 a DTensor reduced over the shards
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        nonfinite = self._step_nonfinite or self.any_rank(not bool(torch.isfinite(grad_norm)))
        nothing = not nonfinite and not self.any_rank(bool(grad_norm > 0))
        lr = opt.param_groups[0]["lr"]  # the LR this step used (before the schedule advances)
        if nonfinite or nothing:
            self._counters["skipped_steps"] += 1
            if nonfinite and not self._step_nonfinite:
                self._counters["nonfinite_grad"] += 1
                self.print(f"warning: non-finite grad norm at step {self.global_step}; update skipped")
        else:
            if self.optim.grad_clip > 0:
                # by hand, with the norm computed above: the same under every strategy (Lightning's
                # FSDP precision plugin refuses norm clipping)
                torch.nn.utils.clip_grads_with_norm_(params, self.optim.grad_clip, norm)
            opt.step()
            self.lr_schedulers().step()
            self._updated_in_batch = True
        opt.zero_grad(set_to_none=True)
        if batch.last_in_rollout_batch and self._updated_in_batch:
            self.on_policy_updated()
        sharding.reshard(self)  # sharded roots gathered by a forward without backward (teacher, skipped step)
        self._consecutive_nonfinite = self._consecutive_nonfinite + 1 if nonfinite else 0
        self._add_time("optimizer", time.perf_counter() - t0)
        train_seconds = time.perf_counter() - self._step_t0
        shown = {"train/loss": sum(self._step_metrics["loss"])}  # in the progress bar, every step
        if "reward_mean" in batch.stats:
            shown["rollout/reward_mean"] = batch.stats["reward_mean"]
        self.log_dict(shown, on_step=True, on_epoch=False, batch_size=batch.num_sequences, prog_bar=True)
        logs = self._step_logs(batch, grad_norm, lr, train_seconds) if self._logs_every_scalar(nonfinite or nothing) else {}
        logs["step"] = float(self.global_step)  # the TensorBoard step: optimizer steps, as validation and the screen
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch.num_sequences)
        if self._consecutive_nonfinite >= self.max_nonfinite_steps:
            raise TrainingDiverged(
                f"{self._consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
                f"(model.max_nonfinite_steps={self.max_nonfinite_steps}); stopping. No update was applied in "
                f"those steps: the last checkpoint holds the last good state (lower optim.lr, or check the data)")

    def _logs_every_scalar(self, skipped: bool) -> bool:
        """Whether this step logs its full scalar set: the first step, every
        ``trainer.log_every_n_steps``-th optimizer step, the last step of the run and every
        skipped step; loss and reward are logged every step. ``self.log`` costs ~0.2 ms per
        scalar (~10 ms for the ~45 of a step, 2-3 % of a tiny step)."""
        trainer = self.trainer
        every = getattr(self, "_full_scalars_every", None) or 1
        step = self.global_step
        last = trainer.max_epochs is not None and trainer.current_epoch >= trainer.max_epochs - 1
        return skipped or every == 1 or step <= 1 or step % every == 0 or last

    def _step_logs(self, batch: RolloutBatch, grad_norm: Tensor, lr: float, train_seconds: float) -> dict[str, float]:
        logs = {f"train/{k}": sum(v) if k == "loss" else sum(v) / len(v) for k, v in self._step_metrics.items()}
        logs.update({f"rollout/{k}": v for k, v in batch.stats.items() if not k.startswith("time_")})
        logs.update({f"time/{k[5:]}": v for k, v in batch.stats.items() if k.startswith("time_")})
        logs.update({f"time/{k}": v for k, v in self._step_time.items()})
        logs["train/grad_norm"] = grad_norm.item()
        logs["train/lr"] = lr
        logs["train/tokens_per_s"] = self._step_tokens / max(train_seconds, 1e-9)
        logs.update({f"train/{k}": float(v) for k, v in self._counters.items()})
        for k in ("rollout/reward_mean", "train/loss"):  # logged every step, in the progress bar
            logs.pop(k, None)
        return logs

    def on_policy_updated(self) -> None:
        """Called once per rollout batch, after its last optimizer step, if at least one of its
        steps updated the policy (the SDPO teacher's EMA: paper-spec §1.5, pitfalls 17)."""

    def validation_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        self._log_eval(batch, "val")

    def test_step(self, batch: RolloutBatch, batch_idx: int) -> None:
        self._log_eval(batch, "test")

    def _log_eval(self, batch: RolloutBatch, prefix: str) -> None:
        n = batch.num_sequences
        self.log(f"{prefix}/reward", batch.rewards.float().mean(), on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{prefix}/response_length", batch.response_mask.sum(1).mean(), on_epoch=True, batch_size=n,
                 sync_dist=True)
        fmt = torch.tensor([p is not None for p in batch.preds], dtype=torch.float32).mean()
        self.log(f"{prefix}/format_rate", fmt, on_epoch=True, batch_size=n, sync_dist=True)


def check_group_size(algorithm: str, required: int, G: int) -> None:
    """``data.rollouts_per_question`` large enough for the loss to learn anything."""
    if G < required:
        raise ValueError(f"data.rollouts_per_question must be >= {required} for {algorithm} (got {G}): with one "
                         f"rollout per question there is no group baseline and no sibling demonstration, so the "
                         f"loss is 0 at every step")


def _tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that are aliases of another (tied embeddings): absent from some state dicts."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0 (dropout modules and attention dropout)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0


def _check_strategy(strategy: Any) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError("trainer.strategy=fsdp (FSDP1, FullyShardedDataParallel) is not supported: the package "
                         "shards with FSDP2 in configure_model; use --trainer.strategy fsdp2")


def _check_optim(o: OptimConfig) -> None:
    if not o.lr > 0:
        raise ValueError(f"model.optim.lr must be > 0, got {o.lr}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ValueError(f"model.optim.betas must be two values in [0, 1), got {o.betas}")
    if o.weight_decay < 0 or o.warmup_steps < 0 or o.grad_clip < 0:
        raise ValueError(f"model.optim.weight_decay, warmup_steps and grad_clip must be >= 0, got {o}")


class GRPO(PolicyOptimization):
    """Group-relative policy optimisation (the paper's baseline, paper-spec §1.8).

    Args:
        norm_adv_by_std: divide the group-centred reward ``r_i − mean(r)`` by the group's
            reward std (original GRPO: True; the SDPO/SC-SDPO papers' baseline and Dr. GRPO:
            False, which avoids up-weighting nearly solved or nearly failed questions).
        eps_low, eps_high: the PPO ratio ``π/π_old`` is clipped to ``[1 − eps_low, 1 + eps_high]``
            (paper: 0.2 / 0.28, DAPO's "clip-higher"). It only acts off-policy
            (``data.updates_per_batch > 1``); on-policy the ratio is exactly 1.
        kl_coef: KL-to-reference coefficient (0 = off, as in the paper); > 0 keeps a frozen
            copy of the initial policy.
        loss_agg_mode: default ``token-mean`` (the paper's GRPO baseline).
        **kwargs: see :class:`PolicyOptimization`.
    """

    min_group_size = 2

    def __init__(
        self,
        model_name_or_path: str,
        norm_adv_by_std: bool = False,
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        kl_coef: float = 0.0,
        optim: OptimConfig = OptimConfig(),
        loss_agg_mode: L.AggregationMode = "token-mean",
        torch_dtype: str = "float32",
        gradient_checkpointing: Checkpointing = "auto",
        logits_chunk_size: ChunkSize = "auto",
        max_nonfinite_steps: int = 3,
        rollout_correction: RolloutCorrection = RolloutCorrection(),
    ) -> None:
        _check_grpo_args(eps_low, eps_high)
        if kl_coef < 0:
            raise ValueError(f"model.kl_coef must be >= 0, got {kl_coef}")
        super().__init__(model_name_or_path, optim, loss_agg_mode, torch_dtype, gradient_checkpointing,
                         logits_chunk_size, max_nonfinite_steps, rollout_correction)
        self.norm_adv_by_std, self.eps_low, self.eps_high, self.kl_coef = norm_adv_by_std, eps_low, eps_high, kl_coef
        self.reference = SelfTeacher(self.policy, mode="frozen") if kl_coef > 0 else None

    def sharded_models(self) -> list[torch.nn.Module]:
        return super().sharded_models() + ([self.reference.weights] if self.reference is not None else [])

    def on_policy_loaded(self) -> None:
        if self.reference is not None:
            self.reference.reset()  # the KL reference is the new run's initial policy

    def reference_logp(self, batch: RolloutBatch) -> Optional[Tensor]:
        """Sampled-token log-probs under the frozen initial policy (only when ``kl_coef > 0``)."""
        if self.reference is None:
            return None
        with torch.no_grad():
            logits = response_logits(self.reference.weights, batch.input_ids, batch.attention_mask, batch.position_ids,
                                     batch.prompt_width, batch.response_ids.shape[1]).float() / batch.temperature
        return torch.log_softmax(logits, -1).gather(-1, batch.response_ids[..., None]).squeeze(-1)

    def compute_loss(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        student = self.student_forward(batch)
        per_tok = grpo_per_token(batch, student, self.norm_adv_by_std, self.eps_low, self.eps_high,
                                 self.old_logp(batch, student), self.reference_logp(batch), self.kl_coef)
        tis, tis_metrics = self.rollout_is_weights(batch, student)
        if tis is not None:
            per_tok = per_tok * tis
        mask = batch.response_mask
        loss = L.aggregate_loss(per_tok, mask, self.loss_agg_mode, self.normalizer(batch.step.response_lengths))
        return loss, {"entropy": _masked_mean(student.entropy, mask), **_weight_stats(batch), **tis_metrics}


class SDPO(PolicyOptimization):
    """Self-distillation policy optimisation (paper-spec §1). With the
    :class:`~lit_scsdpo.callbacks.DifficultyWeighting` callback it is SC-SDPO.

    Args:
        alpha: generalised-JSD mixing (0 forward KL, 1 reverse KL; paper: 0.5).
        topk: student top-K support (paper: 100); None = full vocabulary.
        add_tail: add the tail bucket (paper: True).
        full_logit_distillation: False = the token-level (sampled-token) estimator, reverse KL.
        is_clip: SDPO importance-ratio clip (paper: 2; the ratio is 1 on-policy).
        teacher_mode: ``ema`` (paper) | ``frozen`` | ``live`` | ``trust_region``.
        teacher_rate: EMA rate (paper: 0.05 science/tool use) or trust-region α.
        dont_reprompt_on_self_success: never demonstrate with the rollout itself (paper: True).
        include_feedback: put environment feedback in the reprompt (science/tool use: False).
        feedback_only_without_solution: feedback only when there is no demonstration (True).
        remove_thinking: strip ``<think>`` blocks from demonstrations (True).
        max_teacher_prompt_tokens: teacher prompt budget (paper: 10240); the demonstration
            text is truncated to fit.
        templates: the reprompt templates (paper-spec §1.2(4)).
        grpo_lambda: λ of the GRPO mix ``λ·GRPO + (1−λ)·SDPO`` (paper §4.5; 0 = pure SDPO, the
            science/tool setting).
        norm_adv_by_std, eps_low, eps_high: the GRPO term's settings when ``grpo_lambda > 0``
            (see :class:`GRPO`: group-std advantage scaling, off; PPO clip range 0.2 / 0.28).
        **kwargs: see :class:`PolicyOptimization`.

    A rollout is a success iff its reward ``>= data.success_threshold`` (the DataModule's, one
    definition for p̂, demonstrations and SC-SDPO weights).

    The teacher runs each distinct reprompt once and all of its rows' responses on that KV cache
    (``share_teacher_prefix``, on; exact, tests/test_forward.py); models whose cache is not plain
    full attention (sliding-window layers, e.g. OLMo-3) use one packed forward per row.
    """

    #: share each distinct teacher prompt's forward over its rows (set False for the packed path)
    share_teacher_prefix: bool = True

    def __init__(
        self,
        model_name_or_path: str,
        alpha: float = 0.5,
        topk: Optional[int] = 100,
        add_tail: bool = True,
        full_logit_distillation: bool = True,
        is_clip: float = 2.0,
        teacher_mode: TeacherMode = "ema",
        teacher_rate: float = 0.05,
        dont_reprompt_on_self_success: bool = True,
        include_feedback: bool = False,
        feedback_only_without_solution: bool = True,
        remove_thinking: bool = True,
        max_teacher_prompt_tokens: int = 10240,
        templates: RepromptTemplates = RepromptTemplates(),
        grpo_lambda: float = 0.0,
        norm_adv_by_std: bool = False,
        eps_low: float = 0.2,
        eps_high: float = 0.28,
        optim: OptimConfig = OptimConfig(),
        loss_agg_mode: L.AggregationMode = "seq-mean-token-mean",
        torch_dtype: str = "float32",
        gradient_checkpointing: Checkpointing = "auto",
        logits_chunk_size: ChunkSize = "auto",
        max_nonfinite_steps: int = 3,
        rollout_correction: RolloutCorrection = RolloutCorrection(),
    ) -> None:
        # every argument is checked before the weights load
        unchunkable = teacher_mode == "trust_region" or not full_logit_distillation
        if logits_chunk_size == "auto" and unchunkable:
            logits_chunk_size = None
        if logits_chunk_size is not None and unchunkable:
            raise ValueError("model.logits_chunk_size supports full-logit distillation with an ema, frozen or "
                             "live teacher (not trust_region, not the token-level estimator)")
        if not 0 <= alpha <= 1:
            raise ValueError(f"model.alpha must be in [0, 1], got {alpha}")
        if not full_logit_distillation and alpha != 1.0:
            raise ValueError("model.full_logit_distillation=False (token-level) supports only reverse KL: alpha=1")
        if not 0 <= grpo_lambda <= 1:
            raise ValueError(f"model.grpo_lambda must be in [0, 1], got {grpo_lambda}")
        if topk is not None and topk < 1:
            raise ValueError(f"model.topk must be >= 1 or null (full vocabulary), got {topk}")
        if not is_clip > 0:
            raise ValueError(f"model.is_clip must be > 0, got {is_clip}")
        if teacher_mode not in ("ema", "frozen", "live", "trust_region"):
            raise ValueError(f"model.teacher_mode must be ema|frozen|live|trust_region, got {teacher_mode!r}")
        if not 0 <= teacher_rate <= 1:
            raise ValueError(f"model.teacher_rate must be in [0, 1], got {teacher_rate}")
        if max_teacher_prompt_tokens < 1:
            raise ValueError(f"model.max_teacher_prompt_tokens must be >= 1, got {max_teacher_prompt_tokens}")
        _check_grpo_args(eps_low, eps_high)
        super().__init__(model_name_or_path, optim, loss_agg_mode, torch_dtype, gradient_checkpointing,
                         logits_chunk_size, max_nonfinite_steps, rollout_correction)
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        if topk is not None and topk > vocab:
            log.info("model.topk=%d exceeds the vocabulary (%d): the full vocabulary is used", topk, vocab)
        self.min_group_size = self.required_group_size(
            {"include_feedback": include_feedback, "dont_reprompt_on_self_success": dont_reprompt_on_self_success})
        self._step_prompts: tuple[Any, list[Optional[list[int]]], list[bool], list[Any]] = (None, [], [], [])
        self.alpha, self.topk, self.add_tail = alpha, topk, add_tail
        self.full_logit_distillation, self.is_clip = full_logit_distillation, is_clip
        self.dont_reprompt_on_self_success = dont_reprompt_on_self_success
        self.include_feedback, self.feedback_only_without_solution = include_feedback, feedback_only_without_solution
        self.remove_thinking, self.max_teacher_prompt_tokens = remove_thinking, max_teacher_prompt_tokens
        self.templates = templates
        self.grpo_lambda, self.norm_adv_by_std, self.eps_low, self.eps_high = grpo_lambda, norm_adv_by_std, eps_low, eps_high
        self.teacher = SelfTeacher(self.policy, teacher_mode, teacher_rate)

    @classmethod
    def required_group_size(cls, init_args: dict[str, Any]) -> int:
        # sibling demonstrations need G >= 2 unless the rollout may demonstrate to itself or feedback is used
        feedback = bool(init_args.get("include_feedback", False))
        self_demo = not bool(init_args.get("dont_reprompt_on_self_success", True))
        return 1 if feedback or self_demo else 2

    def sharded_models(self) -> list[torch.nn.Module]:
        return super().sharded_models() + ([self.teacher.weights] if self.teacher.weights is not None else [])

    def on_policy_loaded(self) -> None:
        self.teacher.reset()  # ema / frozen / trust-region anchor: the new run's initial policy

    def on_policy_updated(self) -> None:
        self.teacher.update()  # once per rollout batch, after its optimizer steps (paper-spec §1.5, A16)

    # ------------------------------------------------------------------ teacher inputs
    def step_teacher_prompts(self, batch: RolloutBatch) -> tuple[list[Optional[list[int]]], list[bool], list[Any]]:
        """Teacher prompt ids (None: no teacher context, or it cannot fit), truncation flags and
        reprompts for every row of the batch's optimizer step; built once per step (cached), so
        the loss normaliser can count exactly the rows that have a teacher."""
        s = batch.step
        # keyed on the step's content: step ids repeat across fits and in hand-made batches
        key = (s.step_id, tuple(s.rewards.tolist()), tuple(s.responses), tuple(map(id, s.messages)))
        if self._step_prompts[0] != key:
            reprompts = build_reprompts(
                s.messages, s.responses, s.rewards.tolist(), s.group_ids.tolist(), s.feedback,
                batch.success_threshold, self.dont_reprompt_on_self_success, self.include_feedback,
                self.feedback_only_without_solution, self.remove_thinking,
            )
            prompts, cut = [], []
            for rp in reprompts:
                ids, truncated = (fit_reprompt(self.tokenizer, rp, self.max_teacher_prompt_tokens, self.templates,
                                               batch.enable_thinking) if rp.active else (None, False))
                prompts.append(ids)
                cut.append(truncated)
            self._step_prompts = (key, prompts, cut, reprompts)
        return self._step_prompts[1], self._step_prompts[2], self._step_prompts[3]

    def teacher_inputs(self, batch: RolloutBatch) -> tuple[Optional[Rows], Tensor, dict[str, float]]:
        """Teacher token inputs for the rows that have a teacher context.

        Returns ``(rows or None, active [n] bool, metrics)``; ``rows`` are ordered like the active
        rows: each reprompt followed by the student's response ids, unchanged. Rows that share a
        reprompt (the same demonstration) share its forward (:class:`SharedPrefixRows`) when the
        teacher supports it and ``share_teacher_prefix`` is on, else :class:`PackedRows`.
        """
        all_prompts, all_cut, all_reprompts = self.step_teacher_prompts(batch)
        rows_in_step = slice(batch.step_offset, batch.step_offset + batch.num_sequences)
        prompts, cut, reprompts = all_prompts[rows_in_step], all_cut[rows_in_step], all_reprompts[rows_in_step]
        active = torch.tensor([p is not None for p in prompts], dtype=torch.bool)
        metrics = {
            "reprompt_fraction": active.float().mean().item(),
            "feedback_fraction": sum(rp.feedback is not None for rp in reprompts) / len(reprompts),
            "teacher_truncated": float(sum(cut)),
        }
        rows = [i for i, p in enumerate(prompts) if p is not None]
        if not rows:
            return None, active.to(batch.input_ids.device), metrics
        teacher_rows = self._teacher_rows([prompts[i] for i in rows], batch.response_ids[rows],
                                          batch.response_mask[rows])
        return teacher_rows.to(batch.input_ids.device), active.to(batch.input_ids.device), metrics

    def _teacher_rows(self, prompts: list[list[int]], response_ids: Tensor, response_mask: Tensor) -> Rows:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        shared = self.share_teacher_prefix and self.teacher.can_share_prefix()
        return (SharedPrefixRows if shared else PackedRows).build(prompts, response_ids.cpu(), response_mask.cpu(), pad)

    def teacher_logits(self, batch: RolloutBatch, rows: Rows) -> Tensor:
        """Teacher logits at the response positions of the active rows, ``[n_active, T, V]``."""
        t0 = time.perf_counter()
        logits = self.teacher.response_logits(rows)
        self._add_time("teacher", time.perf_counter() - t0)
        return logits / batch.temperature

    def step_sd_mask_lengths(self, batch: RolloutBatch) -> Tensor:
        """Per-sequence loss-mask token counts over the whole optimizer step (for token-mean):
        rows without a teacher context, or whose teacher prompt cannot fit, count 0."""
        prompts = self.step_teacher_prompts(batch)[0]
        has_teacher = torch.tensor([p is not None for p in prompts], dtype=torch.long)
        return batch.step.response_lengths.cpu() * has_teacher

    def _match_teacher_forward(self, has_inputs: bool, like: Tensor) -> None:
        """Under FSDP2 a teacher forward is a collective (it all-gathers each layer): a rank whose
        micro-batch has no teacher row runs a one-token forward when any other rank has one."""
        if not sharding.is_sharded(self.policy) or not self.any_rank(has_inputs) or has_inputs:
            return
        one = torch.ones((1, 1), dtype=torch.long)
        # the same kind of rows as the other ranks', so the same number of forwards (collectives)
        self.teacher.response_logits(self._teacher_rows([[0]], one * 0, one).to(like.device))

    # ------------------------------------------------------------------ the loss
    def sdpo_per_token(self, batch: RolloutBatch, student: StudentOutput) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Per-token SDPO loss ``[n, T]`` (× IS ratio) and the self-distillation mask ``[n]``."""
        inputs, active, metrics = self.teacher_inputs(batch)
        self._match_teacher_forward(inputs is not None, batch.input_ids)
        per_tok = student.logp * 0.0  # zeros attached to the graph: an all-masked batch still backprops
        if inputs is not None and student.hidden is not None:
            t0 = time.perf_counter()
            t_hidden = self.teacher.response_hidden(inputs)
            self._add_time("teacher", time.perf_counter() - t0)
            div = L.chunked_distillation_loss(student.hidden[active], self.policy.get_output_embeddings(), t_hidden,
                                              self.teacher.head(), self.logits_chunk_size, self.alpha, self.topk,
                                              self.add_tail, batch.temperature)
            per_tok = per_tok.index_put((active.nonzero().squeeze(1),), div)
        elif inputs is not None:
            t_logits = self.teacher_logits(batch, inputs)
            s_logits = student.logits[active]
            if self.full_logit_distillation:
                # temperature already applied to both sides in student_forward / teacher_logits
                div = L.distillation_loss(s_logits, t_logits, self.alpha, self.topk, self.add_tail, 1.0)
            else:
                t_logp = torch.log_softmax(t_logits, -1).gather(-1, batch.response_ids[active][..., None]).squeeze(-1)
                div = L.token_level_distillation_loss(student.logp[active], t_logp)
            per_tok = per_tok.index_put((active.nonzero().squeeze(1),), div)
            with torch.no_grad():  # teacher diagnostics: a teacher that stops copying shows here first
                t_logp_all = torch.log_softmax(t_logits.float(), -1)
                m = batch.response_mask[active]
                t_ent = -(t_logp_all.exp() * t_logp_all).sum(-1)
                t_tok = t_logp_all.gather(-1, batch.response_ids[active][..., None]).squeeze(-1)
                metrics["teacher_entropy"] = _masked_mean(t_ent, m)
                metrics["teacher_logp_sampled"] = _masked_mean(t_tok, m)
                metrics["student_logp_sampled"] = _masked_mean(student.logp.detach()[active], m)
        # on-policy old = current (ratio exactly 1); off-policy the pre-update (sampling) log-probs
        per_tok = per_tok * L.importance_ratio(student.logp, self.old_logp(batch, student), self.is_clip)
        tis, tis_metrics = self.rollout_is_weights(batch, student)
        if tis is not None:  # the sampler/trainer mismatch (vLLM), paper-spec §1.4(2)
            per_tok = per_tok * tis
        metrics.update(tis_metrics)
        return per_tok, active, metrics

    def compute_loss(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        student = self.student_forward(batch)
        per_tok, active, metrics = self.sdpo_per_token(batch, student)
        mask = batch.response_mask * active[:, None].float()
        loss = L.aggregate_loss(per_tok, mask, self.loss_agg_mode, self.normalizer(self.step_sd_mask_lengths(batch)),
                                weights=batch.question_weights)
        metrics["distill_loss"] = loss.item()
        if self.grpo_lambda > 0:
            grpo_tok = grpo_per_token(batch, student, self.norm_adv_by_std, self.eps_low, self.eps_high,
                                      self.old_logp(batch, student))
            tis = self.rollout_is_weights(batch, student)[0]
            grpo_tok = grpo_tok if tis is None else grpo_tok * tis
            grpo = L.aggregate_loss(grpo_tok, batch.response_mask,
                                    self.loss_agg_mode, self.normalizer(batch.step.response_lengths))
            loss = L.mix_losses(grpo, loss, self.grpo_lambda)
        return loss, {**metrics, "entropy": _masked_mean(student.entropy, batch.response_mask), **_weight_stats(batch)}


def grpo_per_token(
    batch: RolloutBatch,
    student: StudentOutput,
    norm_adv_by_std: bool = False,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    old_logp: Optional[Tensor] = None,
    ref_logp: Optional[Tensor] = None,
    kl_coef: float = 0.0,
) -> Tensor:
    """Per-token GRPO loss of a micro-batch of whole groups (``losses.grpo_token_loss``).

    ``old_logp``: the behaviour policy's log-probs (``PolicyOptimization.old_logp``); None
    means on-policy (the current ones detached, ratio ≡ 1)."""
    adv = L.group_advantages(batch.rewards.view(-1, batch.group_size), norm_adv_by_std).view(-1, 1)
    old = student.logp.detach() if old_logp is None else old_logp
    return L.grpo_token_loss(student.logp, old, adv.to(student.logp), eps_low, eps_high, ref_logp, kl_coef)


def _check_grpo_args(eps_low: float, eps_high: float) -> None:
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise ValueError(f"model.eps_low must be in [0, 1) and model.eps_high >= 0, got {eps_low}, {eps_high}")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp_min(1)).item()


def _weight_stats(batch: RolloutBatch) -> dict[str, float]:
    """Question-weight statistics over the whole optimizer step (identical in its micro-batches)."""
    w = batch.step.question_weights[:: batch.group_size]
    return {"weight_mean": w.mean().item(), "weight_min": w.min().item(), "weight_max": w.max().item()}

"""The policy-optimisation LightningModules: :class:`PolicyOptimization`, :class:`GRPO`, :class:`SDPO`.

The base class owns the policy (any ``AutoModelForCausalLM`` path, :mod:`lit_scsdpo.policy`),
its tokenizer, manual optimisation (AdamW, linear warmup then constant LR, grad-norm clipping,
gradient accumulation over the micro-batches of one optimizer step), the student forward pass
and step logging. A new algorithm is a subclass that overrides one method,
``compute_loss(batch) -> (loss, metrics)``; see docs/extending.md. The formulas are in
:mod:`lit_scsdpo.losses`, the options in :mod:`lit_scsdpo.config`, the loop's accounting in
:mod:`lit_scsdpo.step_state`, the data-parallel votes in :mod:`lit_scsdpo.distributed`.

Kept from the paper's setting: on-policy updates (one optimizer step per rollout batch by
default), seq-mean-token-mean aggregation over all B·G sequences for SDPO, token-mean for
GRPO, EMA self-teacher updated once per optimizer step, IS ratio (≡1 on-policy).
Rollout TIS against a separate sampler (docs/specification.md §1.4(2), ``rollout_correction``)
is on by default when the engine is vLLM and off with the HF engine, which samples with the
trained weights (the weight would be ≡ 1). Dropped: the entropy bonus (0 in the paper).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from torch import Tensor

from . import distributed, interrupt
from . import losses as L
from . import sharding
from .config import DistillationConfig, GRPOConfig, OptimConfig, RepromptConfig, RolloutCorrection, TeacherConfig
from .data import RolloutBatch, check_group_size
from .forward import PackedRows, SharedPrefixRows, response_logits, supports_shared_prefix
from .policy import (AUTO_CHECKPOINTING_PARAMETERS, DTYPES, Checkpointing, ChunkSize, StudentOutput, auto_chunk_size,
                     check_logits_are_head, disable_dropout, enable_checkpointing, load_policy, tied_names)
from .step_state import StepAccounting
from .teacher import Rows, SelfTeacher, StepPrompts, build_step_prompts

log = logging.getLogger(__name__)

__all__ = ["PolicyOptimization", "GRPO", "SDPO", "TrainingDiverged", "check_group_size", "OptimConfig",
           "RolloutCorrection", "StudentOutput"]


class TrainingDiverged(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient."""


class PolicyOptimization(pl.LightningModule):
    """Base module: policy, tokenizer, optimisation loop, logging. Subclasses define the loss.

    Args:
        model_name_or_path: a local path or hub id of a causal LM (``AutoModelForCausalLM``),
            or ``asset:<name>`` for a model shipped in ``lit_scsdpo/assets``.
        optim: optimiser settings (:class:`~lit_scsdpo.config.OptimConfig`).
        loss_agg_mode: ``token-mean`` | ``seq-mean-token-mean`` | ``seq-mean-token-sum``
            (see ``losses.aggregate_loss``); None: the algorithm's default (GRPO: ``token-mean``,
            the paper's baseline; SDPO: ``seq-mean-token-mean``, the official runs').
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
        max_nonfinite_steps: stop the run (after saving the last good state) when this many
            consecutive optimizer steps had a non-finite loss or gradient; each such step is
            skipped (no update) and counted.
        rollout_correction: truncated importance sampling against the sampler's log-probs
            (:class:`~lit_scsdpo.config.RolloutCorrection`; on by default when the engine is vLLM).

    The optimizer step is skipped, on every rank together, when the step's gradient is
    non-finite or exactly zero (nothing to learn: every row masked, every question weight 0,
    every group's advantage 0): no AdamW moment or weight-decay update, no LR-schedule advance,
    no EMA (docs/specification.md §3.3(4)). Skips are counted in ``train/skipped_steps``.

    The student runs each question's prompt once for its G rollouts and the responses on its
    KV cache (``share_student_prefix``, on; exact, tests/test_forward.py); the LM head runs at
    the response positions only. The full set of step scalars is logged on the steps the
    logger writes (``trainer.log_every_n_steps``), loss and reward at every step.
    """

    #: the smallest group size G the loss can learn from (group baselines / sibling demonstrations)
    min_group_size: int = 1
    #: ``loss_agg_mode`` when the configuration leaves it at None
    default_loss_agg_mode: L.AggregationMode = "seq-mean-token-mean"
    #: the run's configuration as the CLI parsed it, recorded in every checkpoint so that a resume
    #: can be compared with it (``lit_scsdpo.launch``); None outside the CLI
    run_config: Optional[dict[str, Any]] = None
    #: run each question's prompt once for its G rollouts (set False for one packed forward per row)
    share_student_prefix: bool = True

    @classmethod
    def required_group_size(cls, init_args: dict[str, Any]) -> int:
        """The smallest ``data.rollouts_per_question`` this module with ``init_args`` can learn
        from; checked before the weights load (the CLI) and again in :meth:`setup`."""
        return cls.min_group_size

    def __init__(
        self,
        model_name_or_path: str,
        optim: OptimConfig = OptimConfig(),
        loss_agg_mode: Optional[L.AggregationMode] = None,
        torch_dtype: str = "float32",
        gradient_checkpointing: Checkpointing = "auto",
        logits_chunk_size: ChunkSize = "auto",
        max_nonfinite_steps: int = 3,
        rollout_correction: RolloutCorrection = RolloutCorrection(),
    ) -> None:
        super().__init__()
        # every argument is checked before the weights load (the groups in their __post_init__)
        if gradient_checkpointing not in (True, False, "auto"):
            raise ValueError(f"model.gradient_checkpointing must be true, false or auto, got {gradient_checkpointing!r}")
        loss_agg_mode = self.default_loss_agg_mode if loss_agg_mode is None else loss_agg_mode
        if loss_agg_mode not in L.AGGREGATION_MODES:
            raise ValueError(f"model.loss_agg_mode must be one of {L.AGGREGATION_MODES}, got {loss_agg_mode!r}")
        if torch_dtype not in DTYPES:
            raise ValueError(f"model.torch_dtype must be one of {DTYPES}, got {torch_dtype!r}")
        if logits_chunk_size not in (None, "auto") and (not isinstance(logits_chunk_size, int) or logits_chunk_size < 1):
            raise ValueError(f"model.logits_chunk_size must be >= 1, auto or null, got {logits_chunk_size!r}")
        if max_nonfinite_steps < 1:
            raise ValueError(f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.optim, self.loss_agg_mode, self.rollout_correction = optim, loss_agg_mode, rollout_correction
        self.max_nonfinite_steps = max_nonfinite_steps
        self.tokenizer, self.policy = load_policy(model_name_or_path, torch_dtype)
        if gradient_checkpointing == "auto":
            gradient_checkpointing = sum(p.numel() for p in self.policy.parameters()) >= AUTO_CHECKPOINTING_PARAMETERS
        if gradient_checkpointing:
            enable_checkpointing(self.policy)
        if logits_chunk_size == "auto":
            logits_chunk_size = auto_chunk_size(self.policy)
        elif logits_chunk_size is not None:
            check_logits_are_head(self.policy)
        self.logits_chunk_size: Optional[int] = logits_chunk_size
        self.accounting = StepAccounting()

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
        """Sampled-token log-probs (grad) and entropies at the training temperature; with the
        logits (unchunked) or the final hidden states (``logits_chunk_size``) for the losses."""
        t0 = time.perf_counter()
        rows = self.student_rows(batch)
        if self.logits_chunk_size is not None:
            hidden = rows.forward(self.policy, "hidden")
            logp, entropy = L.chunked_token_stats(hidden, self.policy.get_output_embeddings(), batch.response_ids,
                                                  batch.temperature, self.logits_chunk_size)
            out = StudentOutput(logp=logp, entropy=entropy, hidden=hidden)
        else:
            logits = rows.forward(self.policy, "logits").float() / batch.temperature
            logp, entropy = L.token_stats(logits, batch.response_ids)
            out = StudentOutput(logp=logp, entropy=entropy, logits=logits)
        self.accounting.add_time("student", time.perf_counter() - t0)
        return out

    def old_logp(self, batch: RolloutBatch, student: StudentOutput) -> Tensor:
        """The behaviour policy's log-probs for importance ratios: on-policy the current ones,
        detached (ratio ≡ 1, as verl); with several updates per rollout batch the log-probs
        the rollouts were sampled with, i.e. before this batch's first update."""
        on_policy = batch.step.num_updates == 1
        return student.logp.detach() if on_policy else batch.sampler_logprobs.to(student.logp)

    def rollout_is_weights(self, batch: RolloutBatch, student: StudentOutput) -> tuple[Optional[Tensor], dict[str, float]]:
        """The per-token TIS weight ``[n, T]`` (None when off), passed to every
        ``losses.aggregate_loss`` of the micro-batch as ``token_weights``, and its diagnostics:
        the mean weight, the largest untruncated ratio and the share of truncated tokens."""
        c = self.rollout_correction
        if c.mode == "off" or (c.mode == "auto" and not batch.separate_sampler):
            return None, {}
        old = self.old_logp(batch, student)
        weights, raw = L.truncated_is_weights(old, batch.sampler_logprobs.to(old), c.cap)
        m = batch.response_mask.to(old)
        tokens = m > 0
        return weights, {"rollout_is_mean": L.masked_mean(weights, m),
                         "rollout_is_max": raw[tokens].max().item() if tokens.any() else 1.0,
                         "rollout_is_clipped": L.masked_mean((raw > c.cap).float(), m)}

    def reduce(self, tensor: Tensor, op: L.ReduceOp) -> Tensor:
        """Global reduction over data-parallel ranks (identity on one process)."""
        return distributed.all_reduce(tensor, op)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (``distributed.any_rank``)."""
        return distributed.any_rank(flag, self.device)

    def normalizer(self, lengths: Tensor) -> Tensor:
        """Global normaliser for ``loss_agg_mode`` from the per-sequence loss-mask token counts
        of this rank's whole optimizer step (``losses.global_normalizer``)."""
        return L.global_normalizer(lengths, self.loss_agg_mode, reduce=self.reduce).to(self.device)

    def aggregate(self, per_token: Tensor, mask: Tensor, lengths: Tensor, token_weights: Optional[Tensor] = None,
                  weights: Optional[Tensor] = None) -> Tensor:
        """``losses.aggregate_loss`` in ``loss_agg_mode`` with the global normaliser of the
        step's per-sequence loss-mask ``lengths``."""
        return L.aggregate_loss(per_token, mask, self.loss_agg_mode, self.normalizer(lengths), weights=weights,
                                token_weights=token_weights)

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        sharding.check_strategy(self.trainer.strategy)
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
        if not sharding.is_sharded(self.policy):
            sharding.shard_models(self.sharded_models(), self._device_mesh, str(self.trainer.precision))
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
        checkpoint["lit_scsdpo"] = self.accounting.state_dict()
        if self.run_config is not None:
            checkpoint["lit_scsdpo"]["run_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.accounting.load_state_dict(checkpoint.get("lit_scsdpo", {}))

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
        missing = [k for k in missing if k not in tied_names(self.policy)]
        if missing or unexpected:
            raise ValueError(f"--weights_from: the checkpoint's policy does not match "
                             f"model.model_name_or_path's architecture (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})")
        self.on_policy_loaded()

    def on_policy_loaded(self) -> None:
        """Called after :meth:`load_policy_weights`: re-derive what was copied from the initial policy."""

    def on_train_batch_start(self, batch: RolloutBatch, batch_idx: int) -> None:
        if batch.micro_index == 0:
            self.accounting.start_step(first_of_rollout_batch=batch.step.update_index == 0)

    def training_step(self, batch: RolloutBatch, batch_idx: int) -> Tensor:
        interrupt.check_global(self.device)  # a stop signal: abandon this step on every rank
        opt = self.optimizers()
        loss, metrics = self.compute_loss(batch)
        t0 = time.perf_counter()
        if self.any_rank(not bool(torch.isfinite(loss))):
            # on every rank: no backward for this micro-batch, and the whole step is skipped
            self.accounting.nonfinite_loss()
            self.print(f"warning: non-finite loss at step {self.global_step}; the step will be skipped")
        elif not self.accounting.nonfinite:
            self.manual_backward(loss * distributed.contribution_scale(self.world_size))
        self.accounting.add_time("backward", time.perf_counter() - t0)
        self.accounting.add_micro_batch({"loss": loss.detach().item(), **metrics}, int(batch.attention_mask.sum()))
        if batch.last_in_step:
            interrupt.check_global(self.device)
            self._optimizer_step(opt, batch)
        return loss.detach()

    def _optimizer_step(self, opt: Any, batch: RolloutBatch) -> None:
        t0 = time.perf_counter()
        acc = self.accounting
        params = [p for p in self.policy.parameters() if p.grad is not None]
        # the global norm before clipping; under FSDP2 a DTensor reduced over the shards
        norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        grad_norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        nonfinite = acc.nonfinite or self.any_rank(not bool(torch.isfinite(grad_norm)))
        nothing = not nonfinite and not self.any_rank(bool(grad_norm > 0))
        lr = opt.param_groups[0]["lr"]  # the LR this step used (before the schedule advances)
        if nonfinite and not acc.nonfinite:
            self.print(f"warning: non-finite grad norm at step {self.global_step}; update skipped")
        if not (nonfinite or nothing):
            if self.optim.grad_clip > 0:
                # by hand, with the norm computed above: the same under every strategy (Lightning's
                # FSDP precision plugin refuses norm clipping)
                torch.nn.utils.clip_grads_with_norm_(params, self.optim.grad_clip, norm)
            opt.step()
            self.lr_schedulers().step()
        acc.end_step(updated=not (nonfinite or nothing), nonfinite=nonfinite)
        opt.zero_grad(set_to_none=True)
        if batch.last_in_rollout_batch and acc.updated_in_batch:
            self.on_policy_updated()
        sharding.reshard(self)  # sharded roots gathered by a forward without backward (teacher, skipped step)
        acc.add_time("optimizer", time.perf_counter() - t0)
        self._log_step(batch, grad_norm, lr, acc.seconds, skipped=nonfinite or nothing)
        if acc.consecutive_nonfinite >= self.max_nonfinite_steps:
            raise TrainingDiverged(
                f"{acc.consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
                f"(model.max_nonfinite_steps={self.max_nonfinite_steps}); stopping. No update was applied in "
                f"those steps: the last checkpoint holds the last good state (lower optim.lr, or check the data)")

    def _log_step(self, batch: RolloutBatch, grad_norm: Tensor, lr: float, train_seconds: float,
                  skipped: bool) -> None:
        """Loss and reward at every step (and in the progress bar); the full scalar set on the
        steps :meth:`_logs_every_scalar` chooses."""
        shown = {"train/loss": sum(self.accounting.metrics["loss"])}
        if "reward_mean" in batch.stats:
            shown["rollout/reward_mean"] = batch.stats["reward_mean"]
        self.log_dict(shown, on_step=True, on_epoch=False, batch_size=batch.num_sequences, prog_bar=True)
        logs = self._step_logs(batch, grad_norm, lr, train_seconds) if self._logs_every_scalar(skipped) else {}
        logs["step"] = float(self.global_step)  # the TensorBoard step: optimizer steps, as validation and the screen
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch.num_sequences)

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
        logs = self.accounting.step_logs(train_seconds)
        logs.update({f"rollout/{k}": v for k, v in batch.stats.items() if not k.startswith("time_")})
        logs.update({f"time/{k[5:]}": v for k, v in batch.stats.items() if k.startswith("time_")})
        logs["train/grad_norm"] = grad_norm.item()
        logs["train/lr"] = lr
        for k in ("rollout/reward_mean", "train/loss"):  # logged every step, in the progress bar
            logs.pop(k, None)
        return logs

    def on_policy_updated(self) -> None:
        """Called once per rollout batch, after its last optimizer step, if at least one of its
        steps updated the policy (the SDPO teacher's EMA: docs/specification.md §1.5,
        docs/pitfalls.md#17)."""

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


def grpo_per_token(batch: RolloutBatch, student: StudentOutput, config: GRPOConfig, old_logp: Tensor,
                   ref_logp: Optional[Tensor] = None, kl_coef: float = 0.0) -> Tensor:
    """Per-token GRPO loss of a micro-batch of whole groups (``losses.grpo_token_loss``) with the
    behaviour policy's log-probs ``old_logp`` (``PolicyOptimization.old_logp``)."""
    adv = L.group_advantages(batch.rewards.view(-1, batch.group_size), config.norm_adv_by_std).view(-1, 1)
    return L.grpo_token_loss(student.logp, old_logp, adv.to(student.logp), config.eps_low, config.eps_high,
                             ref_logp, kl_coef)


def _only_the_path(args: tuple, cls: type) -> tuple:
    """Subclasses take the model path positionally and every other option by keyword (their
    own options come first in their signature, so a second positional value would be ambiguous)."""
    if len(args) > 1:
        raise TypeError(f"{cls.__name__}: pass model_name_or_path positionally and every other option by keyword")
    return args


def _no_chunking_unless_supported(base_options: dict[str, Any], unchunkable: bool) -> None:
    """SDPO's chunked loss needs the teacher's hidden states (not trust_region, which mixes two
    models' logits) and the full-logit estimator: ``logits_chunk_size: auto`` then means off, an
    explicit size is refused. (A function, so that the CLI's signature reader sees
    ``logits_chunk_size`` as the base option it is.)"""
    chunk = base_options.get("logits_chunk_size", "auto")
    if chunk == "auto" and unchunkable:
        base_options["logits_chunk_size"] = chunk = None
    if chunk is not None and unchunkable:
        raise ValueError("model.logits_chunk_size supports full-logit distillation with an ema, frozen or "
                         "live teacher (not trust_region, not the token-level estimator)")


def weight_stats(batch: RolloutBatch) -> dict[str, float]:
    """Question-weight statistics over the whole optimizer step (identical in its micro-batches)."""
    w = batch.step.question_weights[:: batch.group_size]
    return {"weight_mean": w.mean().item(), "weight_min": w.min().item(), "weight_max": w.max().item()}


class GRPO(PolicyOptimization):
    """Group-relative policy optimisation (the paper's baseline, docs/specification.md §1.8).

    Args:
        grpo: advantage scaling and the PPO clip range (:class:`~lit_scsdpo.config.GRPOConfig`:
            no std scaling, clip 0.2 / 0.28).
        kl_coef: KL-to-reference coefficient (0 = off, as in the paper); > 0 keeps a frozen
            copy of the initial policy.
        **kwargs: the base options (:class:`PolicyOptimization`); ``loss_agg_mode`` defaults
            to ``token-mean`` (the paper's GRPO baseline).
    """

    min_group_size = 2
    default_loss_agg_mode = "token-mean"

    def __init__(self, *args: Any, grpo: GRPOConfig = GRPOConfig(), kl_coef: float = 0.0, **kwargs: Any) -> None:
        if kl_coef < 0:
            raise ValueError(f"model.kl_coef must be >= 0, got {kl_coef}")
        super().__init__(*_only_the_path(args, type(self)), **kwargs)
        self.grpo, self.kl_coef = grpo, kl_coef
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
        return L.sampled_logprobs(logits, batch.response_ids)

    def compute_loss(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        student = self.student_forward(batch)
        tis, tis_metrics = self.rollout_is_weights(batch, student)
        per_tok = grpo_per_token(batch, student, self.grpo, self.old_logp(batch, student), self.reference_logp(batch),
                                 self.kl_coef)
        mask = batch.response_mask
        loss = self.aggregate(per_tok, mask, batch.step.response_lengths, token_weights=tis)
        return loss, {"entropy": L.masked_mean(student.entropy, mask), **weight_stats(batch), **tis_metrics}


class SDPO(PolicyOptimization):
    """Self-distillation policy optimisation (docs/specification.md §1). With the
    :class:`~lit_scsdpo.callbacks.DifficultyWeighting` callback it is SC-SDPO.

    Args:
        distillation: the divergence, its support and the IS clip
            (:class:`~lit_scsdpo.config.DistillationConfig`: JSD α 0.5 on the student's top-100
            + tail, full-logit, clip 2).
        teacher: the self-teacher's regularisation (:class:`~lit_scsdpo.config.TeacherConfig`:
            EMA at rate 0.05).
        reprompt: how the teacher prompts are built (:class:`~lit_scsdpo.config.RepromptConfig`:
            a sibling's success as the demonstration, no feedback, 10,240-token budget).
        grpo_lambda: λ of the GRPO mix ``λ·GRPO + (1−λ)·SDPO`` (paper §4.5; 0 = pure SDPO, the
            science/tool setting).
        grpo: the GRPO term's settings when ``grpo_lambda > 0`` (:class:`~lit_scsdpo.config.GRPOConfig`).
        **kwargs: the base options (:class:`PolicyOptimization`).

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
        *args: Any,
        distillation: DistillationConfig = DistillationConfig(),
        teacher: TeacherConfig = TeacherConfig(),
        reprompt: RepromptConfig = RepromptConfig(),
        grpo_lambda: float = 0.0,
        grpo: GRPOConfig = GRPOConfig(),
        **kwargs: Any,
    ) -> None:
        # every argument is checked before the weights load
        _no_chunking_unless_supported(kwargs, teacher.mode == "trust_region" or not distillation.full_logit_distillation)
        if not 0 <= grpo_lambda <= 1:
            raise ValueError(f"model.grpo_lambda must be in [0, 1], got {grpo_lambda}")
        super().__init__(*_only_the_path(args, type(self)), **kwargs)
        vocab = self.policy.get_output_embeddings().weight.shape[0]
        if distillation.topk is not None and distillation.topk > vocab:
            log.info("model.distillation.topk=%d exceeds the vocabulary (%d): the full vocabulary is used",
                     distillation.topk, vocab)
        self.distillation, self.reprompt, self.grpo_lambda, self.grpo = distillation, reprompt, grpo_lambda, grpo
        self.min_group_size = reprompt.min_group_size
        self.teacher = SelfTeacher(self.policy, teacher.mode, teacher.rate)
        self._step_prompts: tuple[Optional[str], Optional[StepPrompts]] = (None, None)

    @classmethod
    def required_group_size(cls, init_args: dict[str, Any]) -> int:
        reprompt = init_args.get("reprompt") or {}
        if hasattr(reprompt, "as_dict"):  # a jsonargparse Namespace
            reprompt = reprompt.as_dict()
        if not isinstance(reprompt, RepromptConfig):
            fields = RepromptConfig.__dataclass_fields__
            reprompt = RepromptConfig(**{k: v for k, v in dict(reprompt).items() if k in fields and k != "templates"})
        return reprompt.min_group_size

    def sharded_models(self) -> list[torch.nn.Module]:
        return super().sharded_models() + ([self.teacher.weights] if self.teacher.weights is not None else [])

    def on_policy_loaded(self) -> None:
        self.teacher.reset()  # ema / frozen / trust-region anchor: the new run's initial policy

    def on_policy_updated(self) -> None:
        self.teacher.update()  # once per rollout batch, after its optimizer steps (docs/specification.md §1.5)

    # ------------------------------------------------------------------ teacher inputs
    def step_teacher_prompts(self, batch: RolloutBatch) -> StepPrompts:
        """The teacher prompts of every row of the batch's optimizer step, built once per step
        (the step's ``uid`` is the same in all its micro-batches), so the loss normaliser can
        count exactly the rows that have a teacher."""
        uid = batch.step.uid
        if self._step_prompts[0] != uid:
            prompts = build_step_prompts(batch.step, self.tokenizer, self.reprompt, batch.success_threshold,
                                         batch.enable_thinking)
            self._step_prompts = (uid, prompts)
        return self._step_prompts[1]

    def teacher_inputs(self, batch: RolloutBatch) -> tuple[Optional[Rows], Tensor, dict[str, float]]:
        """Teacher token inputs for the rows that have a teacher context.

        Returns ``(rows or None, active [n] bool, metrics)``; ``rows`` are ordered like the active
        rows: each reprompt followed by the student's response ids, unchanged. Rows that share a
        reprompt (the same demonstration) share its forward (:class:`SharedPrefixRows`) when the
        teacher supports it and ``share_teacher_prefix`` is on, else :class:`PackedRows`.
        """
        step = self.step_teacher_prompts(batch)
        rows_in_step = slice(batch.step_offset, batch.step_offset + batch.num_sequences)
        prompts, cut, reprompts = step.ids[rows_in_step], step.truncated[rows_in_step], step.reprompts[rows_in_step]
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
        self.accounting.add_time("teacher", time.perf_counter() - t0)
        return logits / batch.temperature

    def step_sd_mask_lengths(self, batch: RolloutBatch) -> Tensor:
        """Per-sequence loss-mask token counts over the whole optimizer step (for token-mean):
        rows without a teacher context, or whose teacher prompt cannot fit, count 0."""
        has_teacher = self.step_teacher_prompts(batch).has_teacher().long()
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
    def estimator(self) -> L.SDPOEstimator:
        """Which ``losses.self_distillation_loss`` estimator this configuration uses."""
        if self.logits_chunk_size is not None:
            return "chunked"
        return "full" if self.distillation.full_logit_distillation else "token"

    def sdpo_per_token(self, batch: RolloutBatch, student: StudentOutput) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Per-token SDPO loss ``[n, T]`` (× the IS ratio), the self-distillation mask ``[n]`` and
        the teacher's diagnostics. The rollout correction is applied at aggregation."""
        inputs, active, metrics = self.teacher_inputs(batch)
        self._match_teacher_forward(inputs is not None, batch.input_ids)
        per_tok = student.logp * 0.0  # zeros attached to the graph: an all-masked batch still backprops
        if inputs is not None:
            d, estimator = self.distillation, self.estimator()
            targets = batch.response_ids[active]
            if estimator == "chunked":
                t0 = time.perf_counter()
                teacher = self.teacher.response_hidden(inputs)
                self.accounting.add_time("teacher", time.perf_counter() - t0)
                student_side = student.hidden[active]
            else:
                teacher = self.teacher_logits(batch, inputs)
                student_side = student.logits[active] if estimator == "full" else student.logp[active]
            div = L.self_distillation_loss(estimator, student_side, teacher, targets=targets, alpha=d.alpha,
                                           topk=d.topk, add_tail=d.add_tail,
                                           student_head=self.policy.get_output_embeddings(),
                                           teacher_head=self.teacher.head(), chunk_size=self.logits_chunk_size,
                                           temperature=batch.temperature)
            per_tok = per_tok.index_put((active.nonzero().squeeze(1),), div)
            if estimator != "chunked":
                metrics.update(L.distillation_diagnostics(teacher, targets, batch.response_mask[active],
                                                          student.logp[active]))
        # on-policy old = current (ratio exactly 1); off-policy the pre-update (sampling) log-probs
        per_tok = per_tok * L.importance_ratio(student.logp, self.old_logp(batch, student), self.distillation.is_clip)
        return per_tok, active, metrics

    def compute_loss(self, batch: RolloutBatch) -> tuple[Tensor, dict[str, float]]:
        student = self.student_forward(batch)
        tis, metrics = self.rollout_is_weights(batch, student)  # the sampler/trainer mismatch (vLLM)
        per_tok, active, sd_metrics = self.sdpo_per_token(batch, student)
        metrics = {**sd_metrics, **metrics}
        mask = batch.response_mask * active[:, None].float()
        loss = self.aggregate(per_tok, mask, self.step_sd_mask_lengths(batch), token_weights=tis,
                              weights=batch.question_weights)
        metrics["distill_loss"] = loss.item()
        if self.grpo_lambda > 0:
            grpo_tok = grpo_per_token(batch, student, self.grpo, self.old_logp(batch, student))
            grpo = self.aggregate(grpo_tok, batch.response_mask, batch.step.response_lengths, token_weights=tis)
            loss = L.mix_losses(grpo, loss, self.grpo_lambda)
        return loss, {**metrics, "entropy": L.masked_mean(student.entropy, batch.response_mask), **weight_stats(batch)}

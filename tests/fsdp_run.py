"""A short SC-SDPO fit for the sharding tests, run as a script (Lightning's launcher re-runs it
for rank 1 under ``--devices 2``):

    python tests/fsdp_run.py OUT_DIR --model PATH [--devices 2 --strategy fsdp2] [options]

Rollouts are drawn by :class:`PromptSeededEngine`: the real HF engine, called once per prompt
with a seed taken from the prompt's tokens and the draw count, so a question gets the same responses whichever
rank draws it, and a 2-rank run trains on exactly the data of a 1-rank run. Each rank writes
``rank{r}.json`` (per-step loss contribution, gradient norm, question weights, parameter bytes)
and rank 0 writes the full policy and teacher state after each step (``step{k}.pt``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402

from lit_scsdpo import GRPO, SDPO, DifficultyWeighting, OptimConfig, RolloutDataModule, RunCheckpoint, sharding  # noqa: E402
from lit_scsdpo.config import DistillationConfig, RepromptConfig  # noqa: E402
from lit_scsdpo.data import EvaluationConfig  # noqa: E402
from lit_scsdpo.rollout import Generations, HFGenerateEngine, SamplingConfig  # noqa: E402
from lit_scsdpo.tasks import ArithmeticTask  # noqa: E402


class PromptSeededEngine(HFGenerateEngine):
    """HF generation, one prompt at a time, seeded by the prompt's tokens and the draw seed."""

    draws = 0  # the DataModule's seed depends on the rank; the draw count does not

    def generate(self, prompts, n, sampling, seed=None) -> Generations:
        out = Generations()
        self.draws += 1
        for i, prompt in enumerate(prompts):
            digest = hashlib.sha256(repr((prompt, self.draws)).encode()).hexdigest()
            one = super().generate([prompt], n, sampling, seed=int(digest[:8], 16))
            out.prompt_index += [i] * len(one.response_ids)
            out.response_ids += one.response_ids
            out.logprobs += one.logprobs
            out.finished += one.finished
            out.seconds += one.seconds
        return out


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state on rank 0 (a collective under FSDP2: every rank calls it)."""
    if sharding.is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _teacher(module: torch.nn.Module) -> torch.nn.Module:
    """The SDPO EMA teacher, or GRPO's frozen reference model."""
    holder = module.teacher if hasattr(module, "teacher") else module.reference
    return holder.weights


class Recorder(pl.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.steps, self.weights = out, [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch.micro_index == 0:
            questions = [m[-1]["content"] for m in batch.step.messages[:: batch.group_size]]
            self.weights.append({"questions": questions,
                                 "weights": batch.step.question_weights[:: batch.group_size].tolist(),
                                 "rewards": batch.step.rewards.tolist(), "responses": list(batch.step.responses)})

    def on_train_start(self, trainer, module) -> None:
        policy, teacher = full_state(module.policy), full_state(_teacher(module))
        opt = trainer.optimizers[0]
        steps = [float(st["step"]) for st in opt.state.values() if "step" in st]
        if trainer.is_global_zero:
            torch.save({"policy": policy, "teacher": teacher, "global_step": trainer.global_step,
                        "adam_steps": steps}, os.path.join(self.out, "start.pt"))

    def on_train_epoch_end(self, trainer, module) -> None:
        m = trainer.callback_metrics
        self.steps.append({"loss": float(m["train/loss"]), "grad_norm": float(m["train/grad_norm"]),
                           "step": trainer.global_step, "skipped": float(m["train/skipped_steps"])})
        policy, teacher = full_state(module.policy), full_state(_teacher(module))
        if trainer.is_global_zero:
            torch.save({"policy": policy, "teacher": teacher}, os.path.join(self.out, f"step{trainer.global_step}.pt"))

    def on_train_end(self, trainer, module) -> None:
        info = {"steps": self.steps, "weights": self.weights,
                "local_param_bytes": sharding.local_parameter_bytes(module.policy),
                "teacher_local_param_bytes": sharding.local_parameter_bytes(_teacher(module)),
                "policy_dtypes": sorted({str(p.dtype) for p in module.policy.parameters()}),
                "teacher_dtypes": sorted({str(p.dtype) for p in _teacher(module).parameters()}),
                "sharded": sharding.is_sharded(module.policy), "world_size": trainer.world_size}
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)


def NaNAt(step: int) -> type:
    """SDPO whose loss is NaN on rank 0 in optimizer step ``step`` (a skipped step under FSDP2:
    a forward without backward on every rank)."""

    class SDPOWithNaN(SDPO):
        rollout_batches = 0

        def compute_loss(self, batch):
            loss, metrics = super().compute_loss(batch)
            if batch.micro_index == 0:
                SDPOWithNaN.rollout_batches += 1
            if SDPOWithNaN.rollout_batches == step and self.global_rank == 0:
                loss = loss * float("nan")
            return loss, metrics

    return SDPOWithNaN


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--precision", default="32-true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grad_clip", type=float, default=1.0)
    ap.add_argument("--chunk", type=int, default=0, help="model.logits_chunk_size (0: off)")
    ap.add_argument("--checkpointing", action="store_true", help="model.gradient_checkpointing")
    ap.add_argument("--torch_dtype", default="float32")
    ap.add_argument("--ckpt_dir", default=None, help="save last.ckpt here at the end (RunCheckpoint)")
    ap.add_argument("--resume", default=None, help="fit --ckpt_path")
    ap.add_argument("--grpo_kl", action="store_true", help="GRPO with a KL term to a frozen reference model")
    ap.add_argument("--nan_step", type=int, default=0, help="a NaN loss on rank 0 in this step (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    pl.seed_everything(0)
    optim = OptimConfig(lr=1e-3, warmup_steps=0, weight_decay=0.01, grad_clip=args.grad_clip)
    common = dict(optim=optim, logits_chunk_size=args.chunk or None, gradient_checkpointing=args.checkpointing,
                  torch_dtype=args.torch_dtype)
    if args.grpo_kl:
        model = GRPO(args.model, kl_coef=0.1, **common)
    else:
        model = NaNAt(args.nan_step)(args.model, distillation=DistillationConfig(topk=20),
                                      reprompt=RepromptConfig(max_teacher_prompt_tokens=256), **common)
    # FSDP2 runs the packed student forward; the one-process reference does the same arithmetic
    # (the shared-prefix path differs by float rounding, which AdamW's first step amplifies on
    # near-zero gradients beyond the 1e-3·lr the parity tests allow)
    model.share_student_prefix = False
    dm = RolloutDataModule(ArithmeticTask(levels=[0, 1, 2], train_size=64, val_size=4),
                           engine=PromptSeededEngine(), questions_per_step=4, rollouts_per_question=4,
                           micro_batch_questions=1, sampling=SamplingConfig(1.0, 1.0, 12),
                           evaluation=EvaluationConfig(samples=2), max_prompt_tokens=128)
    callbacks = [Recorder(args.out), DifficultyWeighting()]
    if args.ckpt_dir:
        callbacks.append(RunCheckpoint(dirpath=args.ckpt_dir, every_n_epochs=100))
    strategy = sharding.FSDP2Strategy() if args.strategy == "fsdp2" else args.strategy
    trainer = pl.Trainer(log_every_n_steps=1, accelerator="cpu", devices=args.devices, strategy=strategy, precision=args.precision,
                         max_epochs=args.steps, reload_dataloaders_every_n_epochs=1, logger=False,
                         enable_checkpointing=bool(args.ckpt_dir), enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=callbacks)
    trainer.fit(model, dm, ckpt_path=args.resume)
    if torch.distributed.is_initialized():  # gloo's threads can abort an exit left to static destructors
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

"""A short check of sharded training on ONE device: SC-SDPO with FSDP2 and bf16-mixed.

    python scripts/gpu_check.py                                # one GPU (the fits take seconds)
    python scripts/gpu_check.py --accelerator cpu --devices 1  # dry run of the same logic on CPU

Two short fits of SC-SDPO (SDPO + DifficultyWeighting) on the embedded tiny Qwen3
(``asset:tiny-qwen3``, 1M parameters) and procedural arithmetic (levels 0-2): ``--steps``
optimizer steps of B=``--questions`` × G=``--rollouts`` rollouts of ``--max-new-tokens`` tokens,
lr 1e-4 so that the weights visibly move, gradient checkpointing and chunked logits on, the
checkpoint read in bfloat16 as the paper config does (``torch_dtype: bfloat16``):

* ``single``: plain single-device ``bf16-mixed`` (no strategy), for comparison; run first,
  before any process group exists;
* ``fsdp2``:  ``Trainer(strategy="fsdp2", precision="bf16-mixed")``, then a sharded checkpoint
  (``trainer.save_checkpoint``: a folder), read back with ``lit_scsdpo.checkpoints.load_checkpoint``,
  and a resume from it for one more step.

It prints one line per property and run, ``PASS <run>/<name>: <measured>`` or
``FAIL <run>/<name>: <measured>`` (``SKIP`` where a property cannot be measured here, e.g. GPU
memory on a CPU run), then ``INFO`` lines comparing the runs. Exit status 0 iff nothing FAILed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Optional

# run from a source checkout without installation (the package is then imported from the repo)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import torch  # noqa: E402

RESULTS: list[tuple[str, str, str]] = []  # (status, name, measured)
INFO: list[str] = []


def report(status: str, name: str, measured: str) -> None:
    RESULTS.append((status, name, measured))
    print(f"{status} {name}: {measured}", flush=True)


def check(name: str, ok: bool, measured: str) -> None:
    report("PASS" if ok else "FAIL", name, measured)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2 parameters and gradients); the tensor otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: local(p.detach()).clone() for n, p in module.named_parameters()}


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def norm_of(fn: Callable[[str], torch.Tensor], keys) -> float:
    return math.sqrt(sum(fn(k).float().pow(2).sum().item() for k in keys))


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------- the probe
class Probe:
    """A Lightning callback (built lazily, after imports) that records what the checks need:
    per-micro-batch losses, the logged step metrics, the activation dtype of a decoder layer
    in training and in generation, gradient and AdamW-state dtypes at the optimizer step, and
    the policy / teacher weights (this rank's shards) at the start, after each step, and at the end."""

    @staticmethod
    def make(expect: Optional[dict[str, Any]] = None):
        import lightning.pytorch as pl

        class _Probe(pl.Callback):
            def __init__(self) -> None:
                self.expect = expect  # resume: the state the restored run must start from
                self.micro_losses: list[float] = []
                self.steps: list[dict[str, float]] = []
                self.train_dtypes: dict[str, int] = {}
                self.gen_dtypes: dict[str, int] = {}
                self.grad_dtypes: set[str] = set()
                self.state_dtypes: set[str] = set()
                self.policy0 = self.teacher0 = self.policy1 = self.teacher1 = None
                self.policy_after_step: list[dict[str, torch.Tensor]] = []
                self.start_step: Optional[int] = None
                self.restored: Optional[tuple[float, float]] = None  # max |diff| policy, teacher
                self._handles: list[Any] = []
                self._in_step = False
                self.train_calls = 0  # decoder layer 0 MLP forwards inside training steps
                self._unwrap: Callable[[], None] = lambda: None

            def on_fit_start(self, trainer, pl_module) -> None:
                # after configure_model (sharding, fp32 upcast) and strategy setup; before a resume
                # restores weights and before the first rollout batch is drawn. The forward itself is
                # wrapped, not hooked: torch's checkpoint runs no module hooks when it recomputes a
                # layer in backward.
                layer = pl_module.policy.base_model.layers[0]
                target = getattr(layer, "mlp", layer)
                forward = target.forward

                def counted(*args, **kwargs):
                    # inside a training step: the student forward, and its recompute in backward
                    # under activation checkpointing; outside: generation (the rollouts). Counted on
                    # entry: a recompute may stop early, inside the forward, once it has what backward needs.
                    if self._in_step:
                        self.train_calls += 1
                    out = forward(*args, **kwargs)
                    t = out[0] if isinstance(out, (tuple, list)) else out
                    seen = self.train_dtypes if self._in_step else self.gen_dtypes
                    key = str(t.dtype).replace("torch.", "")
                    seen[key] = seen.get(key, 0) + 1
                    return out

                target.forward = counted
                self._unwrap = lambda: delattr(target, "forward")
                opt = trainer.optimizers[0]

                def pre(optimizer, args, kwargs) -> None:
                    for g in optimizer.param_groups:
                        self.grad_dtypes.update(str(local(p.grad).dtype).replace("torch.", "")
                                                for p in g["params"] if p.grad is not None)

                def post(optimizer, args, kwargs) -> None:
                    for state in optimizer.state.values():
                        self.state_dtypes.update(str(local(v).dtype).replace("torch.", "")
                                                 for k, v in state.items() if k in ("exp_avg", "exp_avg_sq"))

                self._handles.append(opt.register_step_pre_hook(pre))
                self._handles.append(opt.register_step_post_hook(post))

            def on_train_start(self, trainer, pl_module) -> None:
                self.start_step = trainer.global_step
                self.policy0 = snapshot(pl_module.policy)
                self.teacher0 = snapshot(pl_module.teacher.weights)
                if self.expect is not None:
                    self.restored = (max_abs_diff(self.policy0, self.expect["policy"]),
                                     max_abs_diff(self.teacher0, self.expect["teacher"]))

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self._in_step = True

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self._in_step = False
                loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
                self.micro_losses.append(float(loss) if loss is not None else float("nan"))

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                metrics = dict(trainer.logged_metrics) or dict(trainer.callback_metrics)
                self.steps.append({k: float(v) for k, v in metrics.items()})
                self.policy_after_step.append(snapshot(pl_module.policy))

            def on_train_end(self, trainer, pl_module) -> None:
                # before teardown (a single-device strategy moves the module to the CPU then)
                self.policy1 = snapshot(pl_module.policy)
                self.teacher1 = snapshot(pl_module.teacher.weights)
                for h in self._handles:
                    h.remove()
                self._unwrap()

        return _Probe()


# ---------------------------------------------------------------------------------- one fit
def build(args: argparse.Namespace):
    import lightning.pytorch as pl

    from lit_scsdpo import SDPO, OptimConfig, RolloutDataModule
    from lit_scsdpo.callbacks import DifficultyWeighting
    from lit_scsdpo.config import DistillationConfig, RepromptConfig, TeacherConfig
    from lit_scsdpo.data import EvaluationConfig
    from lit_scsdpo.rollout import SamplingConfig
    from lit_scsdpo.tasks import ArithmeticTask

    pl.seed_everything(0, verbose=False)
    model = SDPO("asset:tiny-qwen3", distillation=DistillationConfig(alpha=0.5, topk=100),
                 teacher=TeacherConfig(mode="ema", rate=0.05), reprompt=RepromptConfig(max_teacher_prompt_tokens=512),
                 optim=OptimConfig(lr=args.lr, warmup_steps=0, weight_decay=0.0, grad_clip=1.0),
                 torch_dtype="bfloat16", gradient_checkpointing=True, logits_chunk_size=256)
    dm = RolloutDataModule(ArithmeticTask(levels=[0, 1, 2], train_size=512, val_size=8, test_size=8),
                           questions_per_step=args.questions, rollouts_per_question=args.rollouts,
                           micro_batch_questions=max(1, args.questions // 2),
                           sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens),
                           evaluation=EvaluationConfig(samples=2), max_prompt_tokens=256)
    return model, dm, DifficultyWeighting(exponent=0.5, normalization="batch_mean", scope="all")


def trainer_for(args: argparse.Namespace, strategy: Optional[str], epochs: int, root: str, callbacks: list):
    import lightning.pytorch as pl

    kw = dict(strategy=strategy) if strategy else {}
    if strategy == "fsdp2" and args.process_group_backend:
        from lit_scsdpo.sharding import FSDP2Strategy

        kw = dict(strategy=FSDP2Strategy(process_group_backend=args.process_group_backend))
    return pl.Trainer(
        accelerator=args.accelerator, devices=args.devices, precision="bf16-mixed", max_epochs=epochs,
        log_every_n_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, reload_dataloaders_every_n_epochs=1,
        default_root_dir=root, callbacks=callbacks, **kw,
    )


def reset_peak(args: argparse.Namespace) -> int:
    """Reset the peak-memory counter; returns the bytes still allocated (0 after a clean run)."""
    gc.collect()
    if args.accelerator == "cpu":
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def fit_and_check(args: argparse.Namespace, run: str, strategy: Optional[str], root: str) -> dict[str, Any]:
    """Fit, then one line per property. Returns what the comparison and the checkpoint need."""
    model, dm, weighting = build(args)
    probe = Probe.make()
    trainer = trainer_for(args, strategy, args.steps, root, [weighting, probe])
    before = reset_peak(args)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if args.accelerator != "cpu" else None
    out = {"trainer": trainer, "model": model, "probe": probe, "seconds": seconds, "peak": peak}

    # loss finite at every step
    steps = probe.steps
    step_losses = [s.get("train/loss", float("nan")) for s in steps]
    skipped = steps[-1].get("train/skipped_steps", float("nan")) if steps else float("nan")
    finite = (len(steps) == args.steps and len(probe.micro_losses) > 0
              and all(math.isfinite(x) for x in probe.micro_losses + step_losses))
    check(f"{run}/loss_finite", finite,
          f"{len(steps)}/{args.steps} steps, {len(probe.micro_losses)} micro-batches, step losses "
          f"[{', '.join(f'{x:.4g}' for x in step_losses)}], skipped steps {skipped:g}")

    # sharding applied (fsdp2 run only)
    if strategy == "fsdp2":
        from lit_scsdpo import sharding

        n_dt = sum(hasattr(p, "to_local") for p in model.policy.parameters())
        n_all = sum(1 for _ in model.policy.parameters())
        ok = sharding.is_sharded(model.policy) and sharding.is_sharded(model.teacher.weights) and n_dt == n_all
        check(f"{run}/sharded", ok, f"policy FSDP2: {sharding.is_sharded(model.policy)}, teacher FSDP2: "
                                    f"{sharding.is_sharded(model.teacher.weights)}, DTensor params {n_dt}/{n_all}")

    # policy weights moved
    p0, p1 = probe.policy0, probe.policy1
    changed = sum(int((p1[k] != p0[k]).sum()) for k in p0)
    total = sum(p0[k].numel() for k in p0)
    dmax = max_abs_diff(p1, p0)
    check(f"{run}/policy_moved", dmax > 0 and changed > 0,
          f"max |Δθ| {dmax:.3g}, {changed:,} of {total:,} elements changed")

    # fp32 master weights, gradients and AdamW state
    pdt = sorted({str(v.dtype).replace("torch.", "") for v in p1.values()})
    ok = pdt == ["float32"] and probe.grad_dtypes == {"float32"} and probe.state_dtypes == {"float32"}
    check(f"{run}/master_fp32", ok,
          f"policy parameter shards {pdt}, gradients at the optimizer step {sorted(probe.grad_dtypes)}, "
          f"AdamW exp_avg/exp_avg_sq {sorted(probe.state_dtypes)}")

    # EMA teacher: fp32, moved toward the policy, equal to the EMA replayed from the recorded policies
    t0_, t1 = probe.teacher0, probe.teacher1
    tdt = sorted({str(v.dtype).replace("torch.", "") for v in t1.values()})
    t_moved = max_abs_diff(t1, t0_)
    before = norm_of(lambda k: t0_[k] - p1[k], p1)  # teacher at start vs policy at end
    after = norm_of(lambda k: t1[k] - p1[k], p1)
    replay = {k: v.clone() for k, v in t0_.items()}
    rate, prev = model.teacher.rate, p0
    for snap in probe.policy_after_step:
        if max_abs_diff(snap, prev) > 0:  # an updated step: one EMA step after it
            for k in replay:
                replay[k].lerp_(snap[k].to(replay[k].dtype), rate)
        prev = snap
    err = max_abs_diff(t1, replay)
    ok = tdt == ["float32"] and t_moved > 0 and after < before and err <= 1e-6
    check(f"{run}/ema_teacher", ok,
          f"teacher shards {tdt}, max |Δθ'| {t_moved:.3g}, ‖θ'−θ_end‖ {before:.4g} → {after:.4g} "
          f"(rate {rate}), max |θ' − replayed EMA| {err:.3g}")

    # compute was bf16
    ok = set(probe.train_dtypes) == {"bfloat16"}
    check(f"{run}/compute_bf16", ok,
          f"decoder layer 0 MLP output dtypes in training steps {probe.train_dtypes}")

    # activation checkpointing (model.gradient_checkpointing=True): each decoder layer runs twice
    # per micro-batch, its forward and its recompute in backward
    calls = probe.train_calls / max(1, len(probe.micro_losses))
    check(f"{run}/activation_checkpointing", calls >= 2,
          f"decoder layer 0 forwards per micro-batch {calls:g} (2 = forward + recompute; 1 = no checkpointing, "
          f"all activations kept)")

    # peak GPU memory
    if peak is None:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        report("SKIP", f"{run}/peak_gpu_memory", f"CPU run (process peak RSS {mib(rss)}, for information)")
    else:
        check(f"{run}/peak_gpu_memory", peak < args.max_gpu_mib * 2**20,
              f"torch.cuda.max_memory_allocated {mib(peak)} (bound {args.max_gpu_mib:g} MiB; "
              f"{mib(before)} was allocated before the fit)")

    # generation ran
    keys = ("rollout/reward_mean", "rollout/response_length", "rollout/gen_tokens_per_s")
    present = all(k in s and math.isfinite(s[k]) for s in steps for k in keys) and len(steps) == args.steps
    lengths = [s.get("rollout/response_length", float("nan")) for s in steps]
    rewards = [s.get("rollout/reward_mean", float("nan")) for s in steps]
    tps = [s.get("rollout/gen_tokens_per_s", float("nan")) for s in steps]
    ok = present and all(x > 0 for x in lengths) and len(probe.gen_dtypes) > 0
    check(f"{run}/generation", ok,
          f"rollout stats at {len(steps)} steps: reward_mean [{', '.join(f'{x:.3f}' for x in rewards)}], "
          f"response_length [{', '.join(f'{x:.1f}' for x in lengths)}], "
          f"{(sum(tps) / len(tps)) if tps else float('nan'):.0f} tokens/s; generation MLP dtypes {probe.gen_dtypes}")
    out.update(step_losses=step_losses, rewards=rewards)
    return out


def checkpoint_checks(args: argparse.Namespace, run: str, fitted: dict[str, Any], root: str) -> None:
    """Save a sharded checkpoint, read it back in one process, resume from it for one step."""
    try:
        from lit_scsdpo.checkpoints import load_checkpoint
    except ImportError as exc:
        report("SKIP", f"{run}/checkpoint_sharded", f"lit_scsdpo.checkpoints is not available ({exc})")
        return
    trainer, probe = fitted["trainer"], fitted["probe"]
    folder = os.path.join(root, "ck", "last.ckpt")
    trainer.save_checkpoint(folder)
    trainer.strategy.barrier()
    if trainer.global_rank != 0:
        return
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    ckpt = load_checkpoint(folder)
    sd = ckpt["state_dict"]
    pol = {k: sd.get("policy." + k) for k in probe.policy1}
    tea = {k: sd.get("teacher.weights." + k) for k in probe.teacher1}
    missing = [k for k, v in {**pol, **tea}.items() if v is None]
    dpol = max_abs_diff(pol, {k: v.cpu() for k, v in probe.policy1.items()}) if not missing else float("nan")
    dtea = max_abs_diff(tea, {k: v.cpu() for k, v in probe.teacher1.items()}) if not missing else float("nan")
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in [*pol.values(), *tea.values()] if v is not None})
    opt_states = (ckpt.get("optimizer_states") or [{}])[0].get("state", {})
    ok = (os.path.isdir(folder) and not missing and dpol == 0 and dtea == 0 and dtypes == ["float32"]
          and len(opt_states) == len(probe.policy1) and ckpt.get("global_step") == args.steps)
    check(f"{run}/checkpoint_sharded", ok,
          f"folder of {len(files)} files ({', '.join(files[:4])}{', ...' if len(files) > 4 else ''}); "
          f"load_checkpoint: {len(sd)} tensors, policy/teacher vs live max |diff| {dpol:.3g}/{dtea:.3g}, "
          f"dtypes {dtypes}, AdamW state for {len(opt_states)}/{len(probe.policy1)} params, "
          f"global_step {ckpt.get('global_step')}" + (f", missing {missing[:3]}" if missing else ""))

    # resume from the folder for one more step
    model, dm, weighting = build(args)
    expect = {"policy": probe.policy1, "teacher": probe.teacher1}
    probe2 = Probe.make(expect)
    trainer2 = trainer_for(args, "fsdp2", args.steps + 1, os.path.join(root, "resume"), [weighting, probe2])
    trainer2.fit(model, dm, ckpt_path=folder)
    losses = probe2.micro_losses
    restored = probe2.restored or (float("nan"), float("nan"))
    ok = (probe2.start_step == args.steps and restored == (0.0, 0.0)
          and len(probe2.steps) == 1 and bool(losses) and all(math.isfinite(x) for x in losses))
    check(f"{run}/checkpoint_resume", ok,
          f"resumed at global_step {probe2.start_step} (expected {args.steps}); restored vs saved max |diff| "
          f"policy {restored[0]:.3g}, teacher {restored[1]:.3g}; {len(probe2.steps)} more step, micro-batch "
          f"losses [{', '.join(f'{x:.4g}' for x in losses)}]")


# ---------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cuda", "cpu"])
    parser.add_argument("--devices", type=int, default=1, help="must be 1: this is a one-device check")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per fit (default 4)")
    parser.add_argument("--questions", type=int, default=8, help="B, questions per step (default 8)")
    parser.add_argument("--rollouts", type=int, default=8, help="G, rollouts per question (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-gpu-mib", type=float, default=512.0,
                        help="bound on torch.cuda.max_memory_allocated per fit (default 512 MiB; the model "
                             "and its optimizer state are ~20 MB)")
    parser.add_argument("--runs", default="single,fsdp2", help="comma-separated: single, fsdp2 (run in that order)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (CPU runs)")
    parser.add_argument("--process-group-backend", default=None,
                        help="fsdp2 run: torch.distributed backend, e.g. 'cpu:gloo,cuda:nccl' (default: "
                             "Lightning's, nccl on GPUs)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (checkpoints)")
    args = parser.parse_args(argv)
    if args.devices != 1:
        parser.error("--devices must be 1 (one device; multi-process FSDP2 parity is tested in tests/)")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not set(runs) <= {"fsdp2", "single"} or not runs:
        parser.error(f"--runs: choose from fsdp2, single; got {args.runs!r}")
    # single first: it runs before any process group exists (the fsdp2 fit creates one, which
    # then stays initialised in this process, so the package's reductions would use it)
    runs = [r for r in ("single", "fsdp2") if r in runs]
    if args.accelerator == "cpu":
        torch.set_num_threads(max(1, args.threads))
    elif not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device; run with --accelerator cpu for a dry run",
              file=sys.stderr)
        return 2

    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning_utilities", "lit_scsdpo", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import lightning  # noqa: F401  (imported before lit_scsdpo registers the fsdp2 strategy)
    import lit_scsdpo  # noqa: F401  (registers --trainer.strategy fsdp2)

    device = (torch.cuda.get_device_name(0) if args.accelerator != "cpu" else "CPU")
    print(f"gpu_check: {device}, torch {torch.__version__}, lightning {lightning.__version__}; "
          f"{args.steps} step(s) of B={args.questions} x G={args.rollouts}, {args.max_new_tokens} new tokens, "
          f"lr {args.lr:g}, runs {runs}", flush=True)
    t_start = time.perf_counter()
    root = tempfile.mkdtemp(prefix="gpu_check_")
    fitted: dict[str, dict[str, Any]] = {}
    try:
        for run in runs:
            strategy = "fsdp2" if run == "fsdp2" else None
            try:
                fitted[run] = fit_and_check(args, run, strategy, os.path.join(root, run))
            except Exception as exc:  # noqa: BLE001 - a failed fit is a FAIL line, and the other run still runs
                traceback.print_exc()
                first = (str(exc).strip().splitlines() or [""])[0]
                hint = ""
                if "device type cpu" in str(exc):
                    hint = (" (a collective on a CPU tensor under NCCL: the reductions must use device tensors; "
                            "--process-group-backend cpu:gloo,cuda:nccl checks the rest meanwhile)")
                report("FAIL", f"{run}/fit", f"{type(exc).__name__}: {first}{hint}")
                continue
            if run == "fsdp2":
                try:
                    checkpoint_checks(args, run, fitted[run], os.path.join(root, run))
                except Exception as exc:  # noqa: BLE001
                    traceback.print_exc()
                    first = (str(exc).strip().splitlines() or [""])[0]
                    report("FAIL", f"{run}/checkpoint", f"{type(exc).__name__}: {first}")
            for key in ("trainer", "model", "probe"):  # free this run's device memory before the next
                fitted[run].pop(key, None)
    finally:
        if args.keep:
            print(f"gpu_check: work folder kept at {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    for run, f in fitted.items():
        peak = f"peak {mib(f['peak'])}, " if f["peak"] is not None else ""
        INFO.append(f"INFO {run}: {f['seconds']:.1f} s fit, {peak}step losses "
                    f"[{', '.join(f'{x:.4g}' for x in f['step_losses'])}], rewards "
                    f"[{', '.join(f'{x:.3f}' for x in f['rewards'])}]")
    if {"fsdp2", "single"} <= set(fitted):
        a, b = fitted["fsdp2"], fitted["single"]
        INFO.append(f"INFO compare: step-0 reward fsdp2 {a['rewards'][0]:.3f} vs single {b['rewards'][0]:.3f}; "
                    f"step-0 loss {a['step_losses'][0]:.4g} vs {b['step_losses'][0]:.4g} (not expected to be equal: "
                    f"FSDP2 keeps bf16 parameters and residual stream in compute, autocast keeps fp32 ones)")
    n_fail = sum(s == "FAIL" for s, _, _ in RESULTS)
    n_pass = sum(s == "PASS" for s, _, _ in RESULTS)
    n_skip = sum(s == "SKIP" for s, _, _ in RESULTS)
    print("\n== gpu_check summary ==")
    for status, name, measured in RESULTS:
        print(f"{status} {name}: {measured}")
    for line in INFO:
        print(line)
    print(f"== {n_pass} PASS, {n_fail} FAIL, {n_skip} SKIP in {time.perf_counter() - t_start:.0f} s ==")
    return 0 if n_fail == 0 and n_pass > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

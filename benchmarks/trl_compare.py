"""Our GRPO / SDPO / SC-SDPO against TRL's GRPOTrainer and experimental SDPOTrainer, same setting.

Every run is its own process (one thread), with the same tiny model, questions, batch shape,
lengths, sampling and optimiser; the first optimizer step(s) are a warm-up and are not measured;
repeats are interleaved (ours-grpo, trl-grpo, ours-sdpo, trl-sdpo, ours-scsdpo, then again).
Prints the median seconds per optimizer step of each phase, the median wall time per step, the
peak RSS of each process and the ratios ours / TRL (computed within each repeat, then the median).
docs/performance.md says what each phase measures on either side and every remaining difference.

Needs TRL, which the package does not depend on: ``make bench-trl`` installs it into .venv-bench
(benchmarks/requirements-trl.txt) and runs this script there.

    python benchmarks/trl_compare.py                 # 3 repeats x 5 measured steps (+1 warm-up)
    python benchmarks/trl_compare.py --quick         # 1 repeat x 2 measured steps
    python benchmarks/trl_compare.py --repeats 5 --steps 8 --jobs ours-sdpo trl-sdpo --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
JOBS = ["ours-grpo", "trl-grpo", "ours-sdpo", "trl-sdpo", "ours-scsdpo"]
#: per-step phases, in seconds; "other" = wall - their sum
PHASES = ["generate", "score", "reprompt", "teacher", "student", "optimizer"]
#: (numerator, denominator) of the reported ratios of median s/step
RATIOS = [("ours-grpo", "trl-grpo"), ("ours-sdpo", "trl-sdpo"), ("ours-scsdpo", "trl-sdpo"),
          ("ours-sdpo", "ours-grpo")]
#: SC-SDPO = SDPO + this callback, as in configs/tiny/scsdpo.yaml (after configs/tiny/base.yaml)
DIFFICULTY_CALLBACK = {"class_path": "lit_scsdpo.callbacks.DifficultyWeighting",
                       "init_args": {"exponent": 0.5, "normalization": "batch_mean", "scope": "all"}}


# ---------------------------------------------------------------------------------------- shared
def _configs(algo: str) -> list[str]:
    """``--config`` arguments of the embedded default for ``algo`` (base.yaml, then its file)."""
    tiny = REPO / "configs" / "tiny"
    return ["--config", str(tiny / "base.yaml"), "--config", str(tiny / f"{algo}.yaml")]


def _task_and_questions(s: dict[str, Any]):
    """The ArithmeticTask of the tiny configs and the training rows our DataModule draws for the
    first ``n_steps`` steps (its order: ``torch.randperm`` seeded ``data.seed * 1_000_003 + cycle``)."""
    import torch
    import yaml

    from lit_scsdpo.tasks import ArithmeticTask

    with open(REPO / "configs" / "tiny" / "base.yaml") as f:
        data_cfg = yaml.safe_load(f)["data"]
    task = ArithmeticTask(**data_cfg["task"].get("init_args", {}))
    train = task.rows("train")
    data_seed = int(data_cfg.get("seed", 0))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(data_seed * 1_000_003)).tolist()
    n = s["questions"] * (s["warmup"] + s["steps"] + 2)  # + spare questions: TRL may prefetch a batch
    return task, [train[i] for i in order[:n]]


def _finish(out: str, steps: list[dict[str, Any]], extra: dict[str, Any]) -> None:
    import resource

    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("trl", "lightning"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    Path(out).write_text(json.dumps({"steps": steps, "peak_rss_mib": rss_mib, "versions": versions,
                                     "threads": torch.get_num_threads(), **extra}))


def _mean(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(xs) / len(xs) if xs else None


# ------------------------------------------------------------------------------------- our side
def child_ours(job: str, s: dict[str, Any], out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from lit_scsdpo import cli
    from lit_scsdpo import module as M

    algo = job.split("-", 1)[1]
    acc: dict[str, float] = defaultdict(float)
    steps: list[dict[str, Any]] = []
    last = [None]

    def timed(cls: type, name: str, key: str) -> None:
        orig = cls.__dict__[name]

        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return orig(self, *a, **k)
            finally:
                acc[key] += time.perf_counter() - t0

        setattr(cls, name, wrapper)

    # in this process only: time the loss (student forward, teacher, loss) and the teacher-input build
    timed(M.GRPO, "compute_loss", "compute_loss")
    timed(M.SDPO, "compute_loss", "compute_loss")
    timed(M.SDPO, "teacher_inputs", "reprompt")

    def on_train_epoch_end(self) -> None:  # one epoch = one rollout batch = one optimizer step
        now = time.perf_counter()
        st, stats = dict(self.accounting.times), self.trainer.datamodule.current.stats
        teacher = st.get("teacher", 0.0)
        steps.append({
            "wall": None if last[0] is None else now - last[0],
            "generate": stats["time_generate"], "score": stats["time_score"],
            "reprompt": acc["reprompt"], "teacher": teacher,
            "student": acc["compute_loss"] - acc["reprompt"] - teacher + st.get("backward", 0.0),
            "optimizer": st.get("optimizer", 0.0),
            "reward": stats["reward_mean"], "response_length": stats["response_length"],
            "distill_fraction": _mean(self.accounting.metrics.get("reprompt_fraction", [])),
            "questions": sorted(r["question"] for r in self.trainer.datamodule.current.rows),
        })
        acc.clear()
        last[0] = now

    M.PolicyOptimization.on_train_epoch_end = on_train_epoch_end

    callbacks = json.dumps([DIFFICULTY_CALLBACK]) if algo == "scsdpo" else "null"
    args = [
        "fit", *_configs(algo), "--seed_everything", str(s["seed"]), "--threads", "1",
        "--trainer.max_epochs", str(s["warmup"] + s["steps"]), "--trainer.limit_val_batches", "0",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_checkpointing", "false", "--trainer.logger", "false",
        "--trainer.callbacks", callbacks, "--trainer.default_root_dir", s["tmp"],
        "--model.init_args.model_name_or_path", s["model"],
        "--model.init_args.optim.lr", str(s["lr"]), "--model.init_args.optim.warmup_steps", "0",
        "--model.init_args.optim.weight_decay", "0.0", "--model.init_args.optim.grad_clip", str(s["grad_clip"]),
        "--data.questions_per_step", str(s["questions"]), "--data.rollouts_per_question", str(s["rollouts"]),
        "--data.micro_batch_questions", str(s["micro_questions"]),
        "--data.sampling.max_new_tokens", str(s["max_new_tokens"]),
        "--data.sampling.temperature", str(s["temperature"]), "--data.sampling.top_p", str(s["top_p"]),
        "--data.success_threshold", str(s["success_threshold"]),
    ]
    if algo == "grpo":
        args += ["--model.init_args.kl_coef", "0.0", "--model.init_args.grpo.norm_adv_by_std", "false"]
    else:
        args += ["--model.init_args.distillation.alpha", str(s["alpha"]), "--model.init_args.distillation.topk", str(s["topk"]),
                 "--model.init_args.teacher.mode", "ema", "--model.init_args.teacher.rate", str(s["teacher_rate"]),
                 "--model.init_args.reprompt.max_teacher_prompt_tokens", str(s["max_teacher_prompt_tokens"]),
                 "--model.init_args.grpo_lambda", "0.0"]
    cli.run(args)
    _finish(out, steps, {})


# ------------------------------------------------------------------------------------- TRL side
def child_trl(job: str, s: dict[str, Any], out: str) -> None:
    import torch

    torch.set_num_threads(1)
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from lit_scsdpo.teacher import RepromptTemplates

    algo = job.split("-", 1)[1]
    task, rows = _task_and_questions(s)
    # conversational prompts: TRL renders them with the tokenizer's chat template, as ours does
    dataset = Dataset.from_list([{"prompt": task.messages(r), "answer": r["answer"]} for r in rows])

    questions: list[str] = []  # this step's questions (checked against ours by the parent)

    def arithmetic_reward(completions, answer, prompts, **kwargs):
        """The same verifier as ours (task.score), on the decoded completion text."""
        questions[:] = sorted({p[-1]["content"] for p in prompts})
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.score(t, {"answer": a}).reward) for t, a in zip(texts, answer)]

    tokenizer = AutoTokenizer.from_pretrained(s["model"])
    vocab = AutoConfig.from_pretrained(s["model"]).vocab_size
    mb_rows = s["micro_questions"] * s["rollouts"]
    ga = s["questions"] // s["micro_questions"]
    common = dict(
        output_dir=s["tmp"], max_steps=s["warmup"] + s["steps"], seed=s["seed"], use_cpu=True,
        bf16=False, fp16=False, gradient_checkpointing=False, model_init_kwargs={"dtype": "float32"},
        per_device_train_batch_size=mb_rows, gradient_accumulation_steps=ga, num_generations=s["rollouts"],
        num_iterations=1, shuffle_dataset=False, max_completion_length=s["max_new_tokens"],
        temperature=s["temperature"], top_p=s["top_p"], top_k=0,
        learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=s["grad_clip"], optim="adamw_torch_fused",
        beta=0.0, epsilon=0.2, epsilon_high=0.28, scale_rewards="none", loss_type="dapo",
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    if algo == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        trainer = GRPOTrainer(model=s["model"], reward_funcs=arithmetic_reward, args=GRPOConfig(**common),
                              train_dataset=dataset, processing_class=tokenizer)
        gen_method = "_generate_single_turn"
    else:
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

        t = RepromptTemplates()  # our reprompt text, so both teachers see the same prompt
        full = s["topk"] >= vocab  # torch.topk refuses k > V; top-V + an empty tail is the full vocabulary
        cfg = SDPOConfig(
            **common, distillation_weight=1.0, distillation_alpha=s["alpha"],
            distillation_mode="full_logits" if full else "topk_logits",
            distillation_topk=None if full else s["topk"], distillation_add_tail=True, distillation_is_clip=2.0,
            teacher_model_kind="ema", teacher_update_rate=s["teacher_rate"], teacher_sync_steps=1,
            use_successful_as_teacher=True, success_reward_threshold=s["success_threshold"],
            dont_reprompt_on_self_success=True, include_environment_feedback=False,
            remove_thinking_from_demonstration=True, max_reprompt_len=s["max_teacher_prompt_tokens"],
            reprompt_template=t.reprompt, solution_template=t.solution, feedback_template=t.feedback,
            max_prompt_length=256,
        )
        trainer = SDPOTrainer(model=s["model"], reward_funcs=arithmetic_reward, args=cfg,
                              train_dataset=dataset, processing_class=tokenizer)
        gen_method = "_generate_transformers"

    acc: dict[str, float] = defaultdict(float)
    marks: dict[str, Optional[float]] = {"backward_end": None, "last": None}

    def wrap(obj: Any, name: str, key_of) -> None:
        orig = getattr(obj, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                t1 = time.perf_counter()
                acc[key_of(a, k)] += t1 - t0
                if name == "backward":
                    marks["backward_end"] = t1

        setattr(obj, name, wrapper)

    wrap(trainer, gen_method, lambda a, k: "generate")
    wrap(trainer, "_calculate_rewards", lambda a, k: "score")
    wrap(trainer, "compute_loss", lambda a, k: "compute_loss")
    wrap(trainer.accelerator, "backward", lambda a, k: "backward")
    if algo == "sdpo":
        wrap(trainer.teacher_context_builder, "build", lambda a, k: "reprompt")
        teacher = trainer.teacher_model
        wrap(trainer, "_forward_logits",
             lambda a, k: "teacher" if (k.get("model", a[0] if a else None) is teacher) else "student_forward")

    class StepTimer(TrainerCallback):
        """Added last: its on_step_end follows grad clipping, optimizer and scheduler steps,
        zero_grad and the EMA teacher sync (SyncTeacherModelCallback.on_step_end)."""

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            metrics = trainer._metrics["train"]
            reward = metrics.get("reward") or metrics.get("self_distillation/reward_mean") or [None]
            length = metrics.get("completions/mean_length") or [None]
            fraction = (trainer.teacher_context_builder.last_metrics.get("self_distillation/reprompt_sample_fraction")
                        if algo == "sdpo" else None)
            steps.append({
                "wall": None if marks["last"] is None else now - marks["last"],
                "generate": acc["generate"], "score": acc["score"], "reprompt": acc["reprompt"],
                "teacher": acc["teacher"], "student": acc["compute_loss"] - acc["teacher"] + acc["backward"],
                "optimizer": now - marks["backward_end"],
                "reward": reward[-1], "response_length": length[-1], "distill_fraction": fraction,
                "questions": list(questions),
            })
            acc.clear()
            marks["last"] = now

    steps: list[dict[str, Any]] = []
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepTimer())
    trainer.train()
    _finish(out, steps, {"trl_micro_batch_rows": mb_rows, "trl_gradient_accumulation_steps": ga})


# ---------------------------------------------------------------------------------------- parent
def _median(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(run: dict[str, Any], warmup: int) -> dict[str, Any]:
    """Per-run medians over the measured steps (the first ``warmup`` steps dropped)."""
    measured = run["steps"][warmup:]
    for st in measured:
        st["other"] = st["wall"] - sum(st[p] for p in PHASES)
    out = {k: _median([st[k] for st in measured]) for k in [*PHASES, "other", "wall", "reward",
                                                             "response_length", "distill_fraction"]}
    out["peak_rss_mib"] = run["peak_rss_mib"]
    out["n_steps"] = len(measured)
    return out


def _fmt(x: Optional[float], spec: str = "7.3f") -> str:
    width = int(spec.split(".")[0]) if spec[0].isdigit() else 7
    return f"{x:{spec}}" if x is not None else "-".rjust(width)


def report(results: dict[str, list[dict[str, Any]]], s: dict[str, Any], versions: dict[str, str]) -> str:
    lines = [
        f"model {s['model_label']}, {s['questions']} questions x {s['rollouts']} rollouts, "
        f"{s['max_new_tokens']} new tokens max, T={s['temperature']}, top_p={s['top_p']}, 1 thread; "
        f"{s['steps']} measured steps after {s['warmup']} warm-up, {s['repeats']} repeat(s) interleaved",
        "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
        "",
        "median s/step (median over repeats of each run's median over its measured steps)",
        f"{'run':<12}" + "".join(f"{p:>10}" for p in [*PHASES, "other", "total"])
        + f"{'peakRSS':>9}{'reward':>8}{'distill':>8}{'resp_len':>9}",
    ]
    for job, runs in results.items():
        row = {k: _median([r[k] for r in runs]) for k in [*PHASES, "other", "wall", "peak_rss_mib", "reward",
                                                          "distill_fraction", "response_length"]}
        lines.append(f"{job:<12}" + "".join(_fmt(row[p], "10.3f") for p in [*PHASES, "other", "wall"])
                     + _fmt(row["peak_rss_mib"], "9.0f") + _fmt(row["reward"], "8.3f")
                     + _fmt(row["distill_fraction"], "8.3f") + _fmt(row["response_length"], "9.1f"))
    lines += ["", "ratios of total s/step (within each repeat, then the median; per-repeat values in brackets)"]
    for a, b in RATIOS:
        if a in results and b in results:
            per = [ra["wall"] / rb["wall"] for ra, rb in zip(results[a], results[b])]
            lines.append(f"  {a:>11} / {b:<10} {statistics.median(per):6.2f}  [{', '.join(f'{x:.2f}' for x in per)}]")
    lines += ["", "phases: generate = sampling; score = verifier (+ decode, ours); reprompt = teacher prompt "
              "build; teacher = teacher forward; student = student forward + loss + backward; optimizer = clip + "
              "AdamW + scheduler + zero_grad + EMA; other = wall - phases. peakRSS in MiB (ru_maxrss); "
              "distill = fraction of rollouts with a teacher context."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repeat x 2 measured steps (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3; --quick 1)")
    ap.add_argument("--steps", type=int, default=None, help="measured optimizer steps per run (default 5; --quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="leading optimizer steps not measured (default 1)")
    ap.add_argument("--jobs", nargs="+", choices=JOBS, default=JOBS, help="runs, in this order within a repeat")
    ap.add_argument("--model", default="asset:tiny-qwen3",
                    help="model folder or asset:<name> (default: the shipped tiny Qwen3)")
    ap.add_argument("--questions", type=int, default=8, help="questions per optimizer step")
    ap.add_argument("--rollouts", type=int, default=8, help="rollouts per question (G)")
    ap.add_argument("--micro-questions", type=int, default=8,
                    help="questions per micro-batch (TRL: per_device_train_batch_size = this x G, "
                         "gradient_accumulation_steps = questions / this)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--json", default=None, help="also write every run's per-step records here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        s = json.loads(args.settings)
        (child_ours if args.child.startswith("ours-") else child_trl)(args.child, s, args.out)
        return

    if args.warmup < 1:
        ap.error("--warmup must be >= 1 (a step's wall time is measured from the end of the previous one)")
    if args.questions % args.micro_questions:
        ap.error("--questions must be divisible by --micro-questions")
    if any(job.startswith("trl-") for job in args.jobs):
        try:
            import trl
        except ImportError:
            sys.exit("trl is not installed in this environment: run `make bench-trl` (it creates .venv-bench "
                     "from benchmarks/requirements-trl.txt), or pass only --jobs ours-*")
        if trl.__version__ != "1.16.0":
            print(f"warning: trl {trl.__version__}; this benchmark was written for trl 1.16.0 "
                  "(benchmarks/requirements-trl.txt)", file=sys.stderr)
    from lit_scsdpo.assets import resolve_model_path

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    steps = args.steps if args.steps is not None else (2 if args.quick else 5)
    model = resolve_model_path(args.model)
    settings = dict(
        model=model, model_label=args.model, questions=args.questions, rollouts=args.rollouts,
        micro_questions=args.micro_questions, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0,
        lr=args.lr, grad_clip=1.0, seed=0, steps=steps, warmup=args.warmup, repeats=repeats,
        alpha=0.5, topk=100, teacher_rate=0.05, success_threshold=0.5, max_teacher_prompt_tokens=512,
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    results: dict[str, list[dict[str, Any]]] = {job: [] for job in args.jobs}
    raw: dict[str, list[dict[str, Any]]] = {job: [] for job in args.jobs}
    versions: dict[str, str] = {}
    for rep in range(repeats):
        for job in args.jobs:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "result.json")
                child = {**settings, "tmp": tmp}
                cmd = [sys.executable, os.path.abspath(__file__), "--child", job, "--settings", json.dumps(child),
                       "--out", out]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
                if proc.returncode != 0 or not os.path.exists(out):
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
                    sys.exit(f"{job} (repeat {rep + 1}) failed with exit status {proc.returncode}")
                run = json.loads(Path(out).read_text())
            if len(run["steps"]) != steps + args.warmup:
                sys.exit(f"{job}: expected {steps + args.warmup} optimizer steps, got {len(run['steps'])}")
            versions.update(run["versions"])
            seen = [st["questions"] for st in run["steps"]]
            first = next((r["steps"] for runs in raw.values() for r in runs), None)
            if first is not None and seen != [st["questions"] for st in first]:
                print(f"warning: {job} saw other questions than {args.jobs[0]} (the step order of the data differs)",
                      file=sys.stderr)
            raw[job].append(run)
            results[job].append(summarize(run, args.warmup))
            print(f"[repeat {rep + 1}/{repeats}] {job:<12} {time.perf_counter() - t0:6.1f} s process, "
                  f"{results[job][-1]['wall']:.3f} s/step median", flush=True)
    print()
    print(report(results, settings, versions))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "runs": raw}, indent=1))


if __name__ == "__main__":
    main()

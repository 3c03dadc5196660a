"""GRPO vs SDPO vs SC-SDPO on the embedded default: same model, data, steps; several seeds.

Each (algorithm, seed) run is ``lit-scsdpo fit --config configs/tiny/base.yaml --config configs/tiny/<algo>.yaml`` in a
subprocess (``--parallel`` at a time, one torch thread each), with validation every
``--val-every`` steps; the start value comes from ``lit-scsdpo validate`` on the initial
model with the same seed. Afterwards the TensorBoard events and ``curriculum.csv`` of every
run are read back and summarised: final and best val mean@k / maj@k (mean ± std over seeds),
per difficulty level, accuracy at a common wall-clock budget, the shares of questions at
p̂ = 0 / mixed / 1 over training, and plots (PNG) for docs/results.md.

    python benchmarks/compare_algorithms.py --seeds 0 1 2 --steps 200 --val-every 25
    python benchmarks/compare_algorithms.py --report-only      # re-read finished runs
    python benchmarks/compare_algorithms.py --out benchmarks/out/worked -- \
        --model.init_args.model_name_or_path /tmp/worked_asset --data.sampling.max_new_tokens 64 \
        --data.evaluation.sampling.max_new_tokens 64                    # another model, other settings
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ["grpo", "sdpo", "scsdpo"]
LABEL = {"grpo": "GRPO", "sdpo": "SDPO", "scsdpo": "SC-SDPO"}
COLOR = {"grpo": "tab:gray", "sdpo": "tab:blue", "scsdpo": "tab:red"}


def cli(args: list[str], log: Path) -> float:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "lit_scsdpo.entry", *args], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"lit-scsdpo {' '.join(args[:3])} failed (rc={rc}); see {log}")
    return time.time() - t0


def common(algo: str, seed: int, run_dir: Path, opts) -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny" / "base.yaml"), "--config", str(ROOT / "configs" / "tiny" / f"{algo}.yaml"), "--seed_everything", str(seed),
            "--data.seed", str(seed), "--threads", "1",
            "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.logger.init_args.name", "run",
            "--data.evaluation.samples", str(opts.val_samples), *opts.overrides]


def run_one(algo: str, seed: int, opts) -> dict:
    run_dir = opts.out / algo / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    start = cli(["validate", *common(algo, seed, run_dir / "start", opts)], run_dir / "validate_start.log")
    seconds = cli(["fit", *common(algo, seed, run_dir, opts), "--trainer.max_epochs", str(opts.steps),
                   "--trainer.check_val_every_n_epoch", str(opts.val_every)], run_dir / "fit.log")
    info = {"algo": algo, "seed": seed, "fit_seconds": seconds, "validate_seconds": start}
    (run_dir / "done.json").write_text(json.dumps(info))
    print(f"{LABEL[algo]} seed {seed}: {seconds:.0f}s", flush=True)
    return info


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, wall_time, value)] from every events file under ``log_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list] = {}
    for ev in sorted(log_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.wall_time, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


def load_run(algo: str, seed: int, opts) -> dict:
    run_dir = opts.out / algo / f"seed{seed}"
    start = scalars(run_dir / "start")
    train = scalars(run_dir / "run")
    k = opts.val_samples
    t0 = min(w for tag in train.values() for _, w, _ in tag)
    curve = {}
    for tag in [t for t in train if t.startswith("val/") and "/best_" not in t]:
        pts = [(0, 0.0, start[tag][0][2])] if tag in start else []
        curve[tag] = pts + [(s, w - t0, v) for s, w, v in train[tag]]
    hist = list(csv.DictReader(open(next((run_dir / "run").rglob("curriculum.csv")))))
    return {"algo": algo, "seed": seed, "curve": curve, "k": k, "curriculum": hist,
            "shares": {t: train.get(f"curriculum/{t}", []) for t in ("frac_p0", "frac_mixed", "frac_p1")},
            "step_seconds": seconds_per_step(train["train/loss"])}


def seconds_per_step(points: list[tuple[int, float, float]]) -> float:
    """Wall seconds per optimizer step between the first and the last logged step (the
    configs log every n steps: count steps, not events)."""
    (s0, w0, _), (s1, w1, _) = points[0], points[-1]
    return (w1 - w0) / (s1 - s0) if s1 > s0 else float("nan")


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.mean(xs):.1f} ± {100 * sd:.1f}"


def value_at_time(points, budget):
    """Last validation value logged within ``budget`` seconds of training."""
    vals = [v for _, w, v in points if w <= budget]
    return vals[-1] if vals else points[0][2]


def report(runs: list[dict], opts) -> str:
    k = runs[0]["k"]
    by = {a: [r for r in runs if r["algo"] == a] for a in ALGOS}
    by = {a: rs for a, rs in by.items() if rs}
    budget = min(r["curve"][f"val/all/mean@{k}"][-1][1] for r in runs)
    lines = [f"| algorithm | seeds | start mean@{k} | final mean@{k} | best mean@{k} | final maj@{k} | best maj@{k} "
             f"| mean@{k} at {budget:.0f} s | s / step |", "|---|---|---|---|---|---|---|---|---|"]
    for a, rs in by.items():
        m = [r["curve"][f"val/all/mean@{k}"] for r in rs]
        j = [r["curve"][f"val/all/maj@{k}"] for r in rs]
        lines.append(
            f"| {LABEL[a]} | {len(rs)} | {mean_std([c[0][2] for c in m])} | {mean_std([c[-1][2] for c in m])} "
            f"| {mean_std([max(v for _, _, v in c) for c in m])} | {mean_std([c[-1][2] for c in j])} "
            f"| {mean_std([max(v for _, _, v in c) for c in j])} | {mean_std([value_at_time(c, budget) for c in m])} "
            f"| {statistics.mean(r['step_seconds'] for r in rs):.2f} |")
    levels = sorted({t.split("/")[2] for t in runs[0]["curve"] if t.startswith("val/arithmetic/")})
    lines += ["", f"Per difficulty level: final val mean@{k} (start → final, mean ± std over seeds)", "",
              "| algorithm | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for a, rs in by.items():
        cells = []
        for lv in levels:
            tag = f"val/arithmetic/{lv}/mean@{k}"
            s0 = statistics.mean(r["curve"][tag][0][2] for r in rs)
            cells.append(f"{100 * s0:.0f} → {mean_std([r['curve'][tag][-1][2] for r in rs])}")
        lines.append(f"| {LABEL[a]} | " + " | ".join(cells) + " |")
    lines += ["", "Share of training questions by pass rate (mean over seeds; first 10 % of steps → last 10 %)", "",
              "| algorithm | p̂ = 0 | 0 < p̂ < 1 | p̂ = 1 |", "|---|---|---|---|"]
    for a, rs in by.items():
        cells = []
        for t in ("frac_p0", "frac_mixed", "frac_p1"):
            early, late = [], []
            for r in rs:
                vals = [v for _, _, v in r["shares"][t]]
                n = max(1, len(vals) // 10)
                early.append(statistics.mean(vals[:n]))
                late.append(statistics.mean(vals[-n:]))
            cells.append(f"{100 * statistics.mean(early):.0f} % → {100 * statistics.mean(late):.0f} %")
        lines.append(f"| {LABEL[a]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(runs: list[dict], opts) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = runs[0]["k"]
    fig_dir = opts.figures
    fig_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for x_idx, xlabel, fname in [(0, "optimizer step", "accuracy_vs_step.png"), (1, "training wall time (s)",
                                                                                  "accuracy_vs_time.png")]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, metric in zip(axes, [f"mean@{k}", f"maj@{k}"]):
            for r in runs:
                pts = r["curve"][f"val/all/{metric}"]
                ax.plot([p[x_idx] for p in pts], [100 * p[2] for p in pts], color=COLOR[r["algo"]], alpha=0.8,
                        label=f"{LABEL[r['algo']]}" if r["seed"] == min(x["seed"] for x in runs) else None)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"validation {metric} (%)")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(fig_dir / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    fig, axes = plt.subplots(1, len({r["algo"] for r in runs}), figsize=(12, 3.5), sharey=True)
    for ax, algo in zip(axes, [a for a in ALGOS if any(r["algo"] == a for r in runs)]):
        rs = [r for r in runs if r["algo"] == algo]
        steps = [s for s, _, _ in rs[0]["shares"]["frac_p0"]]
        stack = [[statistics.mean(r["shares"][t][i][2] for r in rs) for i in range(len(steps))]
                 for t in ("frac_p0", "frac_mixed", "frac_p1")]
        ax.stackplot(steps, *stack, labels=["p̂ = 0", "0 < p̂ < 1", "p̂ = 1"],
                     colors=["#3b528b", "#21918c", "#fde725"], alpha=0.9)
        ax.set_title(LABEL[algo])
        ax.set_xlabel("optimizer step")
    axes[0].set_ylabel("share of training questions")
    axes[-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(fig_dir / "pass_rate_shares.png", dpi=110)
    plt.close(fig)
    names.append("pass_rate_shares.png")
    sc = [r for r in runs if r["algo"] == "scsdpo"]
    if sc:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        rows = [h for r in sc for h in r["curriculum"]]
        by_p: dict[float, list[float]] = {}
        for h in rows:
            by_p.setdefault(round(float(h["p_hat"]), 4), []).append(float(h["weight"]))
        ps = sorted(by_p)
        axes[0].bar([str(round(p * 8)) + "/8" for p in ps], [statistics.mean(by_p[p]) for p in ps], color="tab:red")
        axes[0].set_xlabel("pass rate p̂ (successes of G = 8)")
        axes[0].set_ylabel("mean normalised weight w_q")
        axes[0].set_title("SC-SDPO question weights")
        epochs = sorted({int(h["epoch"]) for h in rows})
        mx = [max(float(h["weight"]) for h in rows if int(h["epoch"]) == e) for e in epochs]
        ess = []  # Kish ESS / B of each run's batch, averaged over seeds
        for e in epochs:
            per_run = []
            for r in sc:
                w = [float(h["weight"]) for h in r["curriculum"] if int(h["epoch"]) == e]
                per_run.append(sum(w) ** 2 / max(1e-12, sum(x * x for x in w)) / len(w) if w else 0.0)
            ess.append(statistics.mean(per_run))
        axes[1].plot(epochs, mx, label="max weight (over seeds)", color="tab:red")
        axes[1].plot(epochs, ess, label="effective sample size / B (mean over seeds)", color="tab:purple")
        axes[1].set_xlabel("optimizer step")
        axes[1].legend()
        axes[1].grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(fig_dir / "scsdpo_weights.png", dpi=110)
        plt.close(fig)
        names.append("scsdpo_weights.png")
    return names


def add_run_arguments(ap: argparse.ArgumentParser, out: str) -> None:
    """The options every multi-run benchmark shares (this one, weighting_study.py)."""
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per run (the same for every run)")
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--val-samples", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2, help="runs at a time (one torch thread each)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / out)
    ap.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra lit-scsdpo overrides for every run, after --, e.g. "
                    "-- --model.init_args.model_name_or_path /path/to/model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    add_run_arguments(ap, "compare")
    opts = ap.parse_args()
    jobs = [(a, s) for s in opts.seeds for a in opts.algos]
    if not opts.report_only:
        todo = [(a, s) for a, s in jobs if not (opts.out / a / f"seed{s}" / "done.json").exists()]
        with ThreadPoolExecutor(opts.parallel) as pool:
            list(pool.map(lambda j: run_one(*j, opts), todo))
    runs = [load_run(a, s, opts) for a, s in jobs if (opts.out / a / f"seed{s}" / "done.json").exists()]
    table = report(runs, opts)
    names = plots(runs, opts)
    print(table)
    (opts.out / "report.md").write_text(table + "\n\n" + "\n".join(f"![{n}](figures/{n})" for n in names) + "\n")


if __name__ == "__main__":
    main()

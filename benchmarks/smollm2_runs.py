"""GRPO, SDPO and SC-SDPO on a real pretrained LLM on CPU: SmolLM2-135M-Instruct learning
1-2 digit arithmetic (configs/smollm2/base.yaml with the paper's algo files), then a report.

Each algorithm is one ``lit-scsdpo fit`` in a child process, one after the other (2 threads
each, as the config says), with validation before training, half-way and at the end. The
child records its peak resident memory. The report reads the TensorBoard events back: reward,
format rate, p-hat shares, response length and seconds per phase of every step, validation
mean@k / maj@k, and draws the curves to docs/figures/smollm2_curves.png.

    make smollm2                                  # convert the model once (~1 min)
    python benchmarks/smollm2_runs.py             # ~30 min per algorithm on 2 cores
    python benchmarks/smollm2_runs.py --report-only --out /tmp/smruns
    python benchmarks/smollm2_runs.py --algos grpo -- --trainer.max_epochs 4   # overrides
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALGOS = ["grpo", "sdpo", "scsdpo"]
LABEL = {"grpo": "GRPO", "sdpo": "SDPO", "scsdpo": "SC-SDPO"}
COLOR = {"grpo": "tab:gray", "sdpo": "tab:blue", "scsdpo": "tab:red"}
PHASES = ["generate", "score", "teacher", "student", "backward", "optimizer"]


def child(args: list[str], out: Path) -> None:
    """Run the CLI in this process; write the wall time and peak resident memory beside the logs."""
    from lit_scsdpo.cli import run

    t0 = time.time()
    run(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    out.write_text(json.dumps({"seconds": time.time() - t0, "peak_rss_mib": peak}))


def run_algo(algo: str, opts) -> None:
    args = ["fit", "--config", str(ROOT / "configs" / "smollm2" / "base.yaml"),
            "--config", str(ROOT / "configs" / "paper" / "algo" / f"{algo}.yaml"),
            "--trainer.default_root_dir", str(opts.out), "--trainer.enable_progress_bar", "false", *opts.overrides]
    (opts.out / algo).mkdir(parents=True, exist_ok=True)
    log = opts.out / algo / "fit.log"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, __file__, "--child", str(opts.out / algo / "process.json"), "--", *args],
                            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{LABEL[algo]}: lit-scsdpo fit failed (rc={rc}); see {log}")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for ev in sorted(run_dir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def load(algo: str, out: Path) -> dict:
    versions = sorted((out / algo / "arithmetic").glob("version_*"))
    if not versions:
        raise SystemExit(f"no run of {algo} under {out / algo / 'arithmetic'}")
    s = scalars(versions[-1])
    info = json.loads((out / algo / "process.json").read_text()) if (out / algo / "process.json").exists() else {}
    return {"algo": algo, "s": s, **info}


def values(run: dict, tag: str) -> list[float]:
    return [v for _, v in run["s"].get(tag, [])]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def report(runs: list[dict]) -> str:
    k = next((t.split("@")[1] for t in runs[0]["s"] if t.startswith("val/all/mean@")), "4")
    lines = [f"| algorithm | steps | val mean@{k}: start → mid → end | maj@{k} start → end | rollout reward: "
             "first 4 → last 4 steps | response tokens: first → last 4 | p̂ shares (0 / mixed / 1), last 8 steps "
             "| s/step (median) | peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        mean, maj = values(r, f"val/all/mean@{k}"), values(r, f"val/all/maj@{k}")
        rew, length = values(r, "rollout/reward_mean"), values(r, "rollout/response_length")
        p0, mix, p1 = (values(r, f"rollout/frac_{x}")[-8:] for x in ("p0", "mixed", "p1"))
        step_s = [sum(vals) for vals in zip(*(values(r, f"time/{p}") for p in PHASES if values(r, f"time/{p}")))]
        peak = f"{r['peak_rss_mib'] / 1024:.1f} GiB" if "peak_rss_mib" in r else "n/a"
        maj_text = f"{100 * maj[0]:.1f} → {100 * maj[-1]:.1f}" if maj else "n/a"
        lines.append(
            f"| {LABEL[r['algo']]} | {len(rew)} | {' → '.join(f'{100 * v:.1f}' for v in mean) or 'n/a'} | "
            f"{maj_text} | {100 * statistics.mean(rew[:4]):.1f} → "
            f"{100 * statistics.mean(rew[-4:]):.1f} | {statistics.mean(length[:4]):.1f} → "
            f"{statistics.mean(length[-4:]):.1f} | {statistics.mean(p0):.2f} / {statistics.mean(mix):.2f} / "
            f"{statistics.mean(p1):.2f} | {med(step_s):.1f} | {peak} |")
    lines += ["", "Median seconds per step and phase:", "",
              "| algorithm | " + " | ".join(PHASES) + " | sum |", "|---" * (len(PHASES) + 2) + "|"]
    for r in runs:
        meds = [med(values(r, f"time/{p}")) if values(r, f"time/{p}") else 0.0 for p in PHASES]
        lines.append(f"| {LABEL[r['algo']]} | " + " | ".join(f"{m:.2f}" for m in meds) + f" | {sum(meds):.2f} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    k = next((t.split("@")[1] for t in runs[0]["s"] if t.startswith("val/all/mean@")), "4")
    for r in runs:
        c, lab = COLOR[r["algo"]], LABEL[r["algo"]]
        rew = values(r, "rollout/reward_mean")
        smooth = [statistics.mean(rew[max(0, i - 3): i + 1]) for i in range(len(rew))]
        axes[0].plot(range(1, len(rew) + 1), smooth, color=c, label=lab)
        pts = r["s"].get(f"val/all/mean@{k}", [])
        axes[1].plot([s for s, _ in pts], [100 * v for _, v in pts], "o-", color=c, label=lab)
        axes[2].plot(range(1, len(rew) + 1), values(r, "rollout/response_length"), color=c, label=lab)
        axes[3].plot(range(1, len(rew) + 1), values(r, "rollout/frac_mixed"), color=c, label=lab)
    for i, (ax, title) in enumerate(zip(axes, ["rollout reward (4-batch mean)", f"validation mean@{k} (%)",
                                               "response tokens", "share of questions with 0 < p̂ < 1"])):
        ax.set_title(title, fontsize=10)
        # a rollout batch whose groups are all uniform (GRPO: zero gradient) is not an optimizer step
        ax.set_xlabel("optimizer step (skipped steps not counted)" if i == 1 else "rollout batch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("SmolLM2-135M-Instruct, arithmetic L0-L1, CPU (configs/smollm2/base.yaml)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[sys.argv.index("--") + 1:], Path(sys.argv[2]))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "smollm2")
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "smollm2_curves.png")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra lit-scsdpo overrides for every run, after --")
    opts = ap.parse_args()
    if not opts.report_only:
        for algo in opts.algos:
            run_algo(algo, opts)
    runs = [load(a, opts.out) for a in opts.algos]
    print(report(runs))
    plot(runs, opts.figure)
    print(f"\nfigure: {opts.figure}")


if __name__ == "__main__":
    main()

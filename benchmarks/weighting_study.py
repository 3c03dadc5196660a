"""Where pass-rate weighting should matter: SC-SDPO's weighting, its ablations, paired statistics.

Every (arm, seed) run is ``lit-scsdpo fit`` on the worked-solution default
(``configs/tiny/base.yaml`` + ``configs/tiny/<grpo|sdpo>.yaml`` + ``configs/tiny/worked.yaml`` + the arm's own settings),
with the same budget (optimizer steps, B, G, lengths) for every arm, in a subprocess
(``--parallel`` at a time, one torch thread each). Runs are paired by seed: the same seed
gives every arm the same initial validation, the same training questions in the same order and
the same first rollouts. A run cut short (the session ended) resumes from its ``last.ckpt``.

Arms (the weighting is the ``DifficultyWeighting`` callback's arguments):

* ``grpo``; ``sdpo`` (= exponent 0: every weight 1); ``scsdpo`` (exponent 0.5, ``batch_mean``
  over ``all`` questions: the paper) — the main arms, ``--seeds``.
* ablations of the paper's weighting, ``--ablation-seeds``: ``exp1`` (exponent 1, the reward
  variance), ``binary`` (``1[0 < p̂ < 1]``, DAPO-style filter), ``norm_none`` (no batch
  normalisation: the raw weights, mean ~0.3, scale the loss), ``scope_active`` (normalised over
  the questions with a success only), ``lambda`` (λ = 0.9 GRPO + 0.1 SC-SDPO, paper §4.5).

The report (``<out>/report.md``, printed): per arm final / best mean@k and maj@k; the paired
difference of each arm against SDPO (mean, 95 % t-interval over seeds, exact sign-flip
permutation p-value, verdict); per difficulty level; per band of the initial model's pass rate
on each validation question (``val_per_question.csv``); the shares of training questions by
p̂. Figures (``--figures``): accuracy vs step and vs wall time, p̂ shares, weight ESS, the
per-seed paired differences.

    python benchmarks/weighting_study.py                      # 5 seeds x 3 + 3 seeds x 5 arms
    python benchmarks/weighting_study.py --quick              # 2 seeds, 6 steps: end to end in minutes
    python benchmarks/weighting_study.py --report-only        # re-read the finished runs
    python benchmarks/weighting_study.py --arms scsdpo sdpo --seeds 5 6   # more runs of some arms
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_algorithms import add_run_arguments, scalars, seconds_per_step  # noqa: E402

WEIGHTING = "lit_scsdpo.callbacks.DifficultyWeighting"
PAPER = {"exponent": 0.5, "binary": False, "normalization": "batch_mean", "scope": "all"}
#: arm -> (algorithm config, DifficultyWeighting arguments or None, model overrides, label, colour)
ARMS: dict[str, tuple[str, Optional[dict], dict, str, str]] = {
    "grpo": ("grpo", None, {}, "GRPO", "tab:gray"),
    "sdpo": ("sdpo", None, {}, "SDPO (exponent 0)", "tab:blue"),
    "scsdpo": ("sdpo", PAPER, {}, "SC-SDPO (paper)", "tab:red"),
    "exp1": ("sdpo", {**PAPER, "exponent": 1.0}, {}, "exponent 1 (variance)", "tab:orange"),
    "binary": ("sdpo", {**PAPER, "binary": True}, {}, "binary 1[0<p̂<1]", "tab:green"),
    "norm_none": ("sdpo", {**PAPER, "normalization": "none"}, {}, "normalisation none", "tab:brown"),
    "scope_active": ("sdpo", {**PAPER, "scope": "active"}, {}, "scope active", "tab:purple"),
    "lambda": ("sdpo", PAPER, {"grpo_lambda": 0.9}, "λ = 0.9 GRPO mix", "tab:olive"),
}
MAIN = ["grpo", "sdpo", "scsdpo"]
ABLATIONS = [a for a in ARMS if a not in MAIN]
#: two-sided 95 % quantiles of Student's t by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042}
BANDS = [("p̂ = 0", lambda p: p == 0), ("0 < p̂ ≤ 1/2", lambda p: 0 < p <= 0.5),
         ("1/2 < p̂ < 1", lambda p: 0.5 < p < 1), ("p̂ = 1", lambda p: p == 1)]


# ---------------------------------------------------------------------------------------- runs
def arm_config(arm: str) -> dict:
    _, weighting, model, _, _ = ARMS[arm]
    cfg: dict = {}
    if weighting is not None:  # "callbacks+": append to the algorithm file's callbacks
        cfg["trainer"] = {"callbacks+": [{"class_path": WEIGHTING, "init_args": weighting}]}
    if model:
        cfg["model"] = {"init_args": model}
    return cfg


def run_dir(opts, arm: str, seed: int) -> Path:
    return opts.out / arm / f"seed{seed}"


def run_one(arm: str, seed: int, opts) -> None:
    import yaml

    out = run_dir(opts, arm, seed)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "arm.yaml"
    config.write_text(yaml.safe_dump(arm_config(arm), sort_keys=False, allow_unicode=True))
    args = ["fit", "--config", str(ROOT / "configs" / "tiny" / "base.yaml"),
            "--config", str(ROOT / "configs" / "tiny" / f"{ARMS[arm][0]}.yaml"),
            "--config", str(ROOT / "configs" / "tiny" / "worked.yaml"), "--config", str(config),
            "--seed_everything", str(seed), "--data.seed", str(seed), "--threads", "1",
            "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", "run",
            "--trainer.max_epochs", str(opts.steps), "--trainer.check_val_every_n_epoch", str(opts.val_every),
            "--data.evaluation.samples", str(opts.val_samples), "--trainer.enable_progress_bar", "false", *opts.overrides]
    last = sorted(out.glob("run/version_*/checkpoints/last.ckpt"))
    if last:  # a run cut short: continue it (bit-exact resume, same log folder)
        args += ["--ckpt_path", str(last[-1])]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    with open(out / "fit.log", "a") as f:
        rc = subprocess.run([sys.executable, "-m", "lit_scsdpo.entry", *args], cwd=ROOT, env=env,
                            stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise RuntimeError(f"{arm} seed {seed} failed (rc={rc}); see {out / 'fit.log'}")
    (out / "done.json").write_text(json.dumps({"arm": arm, "seed": seed, "steps": opts.steps,
                                               "seconds": time.time() - t0}))
    print(f"{arm} seed {seed}: {time.time() - t0:.0f} s", flush=True)


#: a gap between two logged events longer than this is a pause (a run resumed in a later session,
#: a benchmark run while the study was stopped), not training: it counts as MAX_GAP
MAX_GAP = 120.0


def run_clock(times: list[float]):
    """Training seconds since the run's first event at each wall time, pauses cut to MAX_GAP."""
    cut, marks = 0.0, []
    for prev, cur in zip(times, times[1:]):
        if cur - prev > MAX_GAP:
            cut += cur - prev - MAX_GAP
            marks.append((cur, cut))

    def clock(w: float) -> float:
        return w - times[0] - max((c for t, c in marks if t <= w), default=0.0)
    return clock


def load_run(opts, arm: str, seed: int) -> dict:
    out = run_dir(opts, arm, seed)
    tb = scalars(out / "run")
    clock = run_clock(sorted(w for pts in tb.values() for _, w, _ in pts))
    curves = {tag: [(s, clock(w), v) for s, w, v in pts] for tag, pts in tb.items() if tag.startswith("val/")}
    per_question: dict[int, dict[str, float]] = {}
    for path in sorted((out / "run").rglob("val_per_question.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                per_question.setdefault(int(row["step"]), {})[row["question"]] = int(row["successes"]) / int(row["k"])
    shares = {t: [v for _, _, v in tb.get(f"curriculum/{t}", [])] for t in ("frac_p0", "frac_mixed", "frac_p1")}
    return {"arm": arm, "seed": seed, "curves": curves, "per_question": per_question, "shares": shares,
            "ess": [(s, v) for s, _, v in tb.get("curriculum/weight_ess_fraction", [])],
            "step_seconds": seconds_per_step([(s, clock(w), v) for s, w, v in tb["train/loss"]])
            if "train/loss" in tb else float("nan")}


# ---------------------------------------------------------------------------------- statistics
def paired(a: dict[int, float], b: dict[int, float]) -> Optional[dict]:
    """Mean of the per-seed differences ``a - b`` over the seeds both have, its 95 % t-interval
    and the exact two-sided sign-flip permutation p-value (all ``2^n`` sign patterns)."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    if n < 2:
        return None
    mean, sd = statistics.mean(d), statistics.stdev(d)
    t = T975.get(n - 1) or T975[max(k for k in T975 if k <= n - 1)]
    half = t * sd / math.sqrt(n)
    observed = abs(sum(d))
    if n <= 16:
        flips = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=n)]
    else:
        rng = random.Random(0)
        flips = [abs(sum(rng.choice((1, -1)) * x for x in d)) for _ in range(20000)]
    p = sum(f >= observed - 1e-12 for f in flips) / len(flips)
    return {"n": n, "mean": mean, "lo": mean - half, "hi": mean + half, "p": p, "diffs": d}


def verdict(r: Optional[dict]) -> str:
    """From the t-interval; no verdict on fewer than 3 seeds (the interval rests on 1 degree of
    freedom, and a normal-theory reading of 2 numbers)."""
    if r is None:
        return "n < 2"
    if r["n"] < 3:
        return "too few seeds for a verdict"
    if r["lo"] > 0:
        return "higher (CI excludes 0)"
    if r["hi"] < 0:
        return "lower (CI excludes 0)"
    return "not distinguishable from 0"


def fmt_paired(r: Optional[dict]) -> str:
    if r is None:
        return "— | — | — | n < 2"
    return (f"{100 * r['mean']:+.1f} | [{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}] | {r['p']:.2f} | {verdict(r)}")


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "—"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * (statistics.stdev(xs) if len(xs) > 1 else 0.0):.1f}"


def metric(run: dict, tag: str, how: str) -> Optional[float]:
    pts = run["curves"].get(tag)
    if not pts:
        return None
    return pts[-1][2] if how == "final" else max(v for _, _, v in pts)


def band_accuracy(run: dict) -> dict[str, float]:
    """Final accuracy (mean of successes / k) of the validation questions in each band of the
    initial model's pass rate on them (the step-0 validation: the same for every arm of a seed)."""
    pq = run["per_question"]
    if 0 not in pq or len(pq) < 2:
        return {}
    start, final = pq[0], pq[max(pq)]
    out = {}
    for name, test in BANDS:
        qs = [q for q, p in start.items() if test(p) and q in final]
        if qs:
            out[name] = statistics.mean(final[q] for q in qs)
    return out


def paired_rows(by: dict[str, dict[int, dict]], arms: list[str], base: str,
                metrics: list[tuple[str, str]]) -> list[str]:
    """One table row per (arm, metric): the arm's runs paired by seed against ``base``'s."""
    rows = []
    for a in arms:
        for tag, how in metrics:
            r = paired({s: metric(run, tag, how) for s, run in by[a].items()},
                       {s: metric(run, tag, how) for s, run in by[base].items()})
            rows.append(f"| {ARMS[a][3]} | {how} {tag.split('/')[-1]} | {r['n'] if r else len(by[a])} "
                        f"| {fmt_paired(r)} |")
    return rows


def report(runs: list[dict], opts) -> str:
    k = opts.val_samples
    by = {a: {r["seed"]: r for r in runs if r["arm"] == a} for a in ARMS}
    by = {a: rs for a, rs in by.items() if rs}
    heads = [(f"val/all/mean@{k}", "final"), (f"val/all/mean@{k}", "best"), (f"val/all/maj@{k}", "final"),
             (f"val/all/maj@{k}", "best")]
    lines = [f"Budget per run: {opts.steps} optimizer steps (16 questions x 8 rollouts, 64 new tokens); "
             f"validation every {opts.val_every} steps on 120 held-out questions x {k} samples at T = 1.", "",
             f"| arm | seeds | start mean@{k} | final mean@{k} | best mean@{k} | final maj@{k} | best maj@{k} "
             f"| s / step |", "|---|---|---|---|---|---|---|---|"]
    for a, rs in by.items():
        cells = [mean_sd([r["curves"][f"val/all/mean@{k}"][0][2] for r in rs.values()])]
        cells += [mean_sd([v for r in rs.values() if (v := metric(r, tag, how)) is not None]) for tag, how in heads]
        lines.append(f"| {ARMS[a][3]} | {len(rs)} | " + " | ".join(cells)
                     + f" | {statistics.mean(r['step_seconds'] for r in rs.values()):.2f} |")
    lines.append("")
    lines.append("s / step: training wall time between the first and last logged steps (validations included), "
                 f"{opts.parallel} runs at a time on the machine's cores.")
    lines += ["", "Paired by seed, against SDPO: mean difference (points), 95 % t-interval, exact sign-flip "
              "p-value (with n seeds it cannot fall below 2 / 2^n: 0.0625 at 5 seeds), verdict from the interval",
              "", "| arm − SDPO | metric | seeds | mean | 95 % CI | p | verdict |", "|---|---|---|---|---|---|---|"]
    if "sdpo" in by:
        lines += paired_rows(by, [a for a in by if a != "sdpo"], "sdpo", heads)
    ablations = [a for a in ABLATIONS if a in by]
    if "scsdpo" in by and ablations:
        # Which knob matters: each ablation changes one thing of the paper's weighting.
        lines += ["", "Each ablation against the paper's weighting (SC-SDPO), paired by seed", "",
                  "| ablation − SC-SDPO | metric | seeds | mean | 95 % CI | p | verdict |", "|---|---|---|---|---|---|---|"]
        lines += paired_rows(by, ablations, "scsdpo", heads[:3])
    if {"scsdpo", "sdpo"} <= set(by):
        levels = sorted({t.split("/")[2] for r in runs for t in r["curves"] if t.startswith("val/arithmetic/")})
        lines += ["", f"SC-SDPO − SDPO per difficulty level (final mean@{k}, paired)", "",
                  "| level | start | SDPO final | SC-SDPO final | seeds | mean | 95 % CI | p | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for lv in levels:
            tag = f"val/arithmetic/{lv}/mean@{k}"
            a = {s: metric(r, tag, "final") for s, r in by["scsdpo"].items()}
            b = {s: metric(r, tag, "final") for s, r in by["sdpo"].items()}
            start = [r["curves"][tag][0][2] for r in by["sdpo"].values()]
            res = paired(a, b)
            lines.append(f"| {lv} | {mean_sd(start)} | {mean_sd(list(b.values()))} | {mean_sd(list(a.values()))} "
                         f"| {res['n'] if res else '—'} | {fmt_paired(res)} |")
        lines += ["", "By the initial model's pass rate on each validation question (step-0 validation, "
                  f"k = {k}): final accuracy of the questions in each band, and SC-SDPO − SDPO paired", "",
                  "| band | questions (mean) | " + " | ".join(ARMS[a][3] for a in by) + " | SC-SDPO − SDPO | 95 % CI "
                  "| p | verdict |", "|---|---|" + "---|" * len(by) + "---|---|---|---|"]
        bands = {a: {s: band_accuracy(r) for s, r in rs.items()} for a, rs in by.items()}
        for name, test in BANDS:
            counts = [sum(test(p) for p in r["per_question"].get(0, {}).values()) for r in by["sdpo"].values()]
            cells = [mean_sd([b[name] for b in bands[a].values() if name in b]) for a in by]
            res = paired({s: b[name] for s, b in bands["scsdpo"].items() if name in b},
                         {s: b[name] for s, b in bands["sdpo"].items() if name in b})
            lines.append(f"| {name} | {statistics.mean(counts) if counts else 0:.1f} | " + " | ".join(cells)
                         + f" | {fmt_paired(res)} |")
    lines += ["", "Share of training questions by pass rate (mean over seeds; first 10 % of steps → last 10 %)", "",
              "| arm | p̂ = 0 | 0 < p̂ < 1 | p̂ = 1 | weight ESS / B (last 10 %) |", "|---|---|---|---|---|"]
    for a, rs in by.items():
        cells = []
        for t in ("frac_p0", "frac_mixed", "frac_p1"):
            early, late = [], []
            for r in rs.values():
                vals = r["shares"][t]
                if vals:
                    n = max(1, len(vals) // 10)
                    early.append(statistics.mean(vals[:n]))
                    late.append(statistics.mean(vals[-n:]))
            cells.append(f"{100 * statistics.mean(early):.0f} % → {100 * statistics.mean(late):.0f} %" if early else "—")
        ess = [statistics.mean(v for _, v in r["ess"][-max(1, len(r["ess"]) // 10):]) for r in rs.values() if r["ess"]]
        lines.append(f"| {ARMS[a][3]} | " + " | ".join(cells) + f" | {statistics.mean(ess):.2f} |" if ess else
                     f"| {ARMS[a][3]} | " + " | ".join(cells) + " | — |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- plots
def plots(runs: list[dict], opts) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = opts.val_samples
    opts.figures.mkdir(parents=True, exist_ok=True)
    by = {a: [r for r in runs if r["arm"] == a] for a in ARMS}
    by = {a: rs for a, rs in by.items() if rs}
    names = []
    for x, xlabel, fname in [(0, "optimizer step", "weighting_vs_step.png"),
                             (1, "training wall time (s)", "weighting_vs_time.png")]:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        for ax, m in zip(axes, [f"mean@{k}", f"maj@{k}"]):
            for a, rs in by.items():
                main = a in MAIN
                for i, r in enumerate(rs):
                    pts = r["curves"][f"val/all/{m}"]
                    ax.plot([p[x] for p in pts], [100 * p[2] for p in pts], color=ARMS[a][4],
                            alpha=0.55 if main else 0.35, lw=1.2 if main else 0.8, ls="-" if main else "--",
                            label=ARMS[a][3] if i == 0 else None)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"validation {m} (%)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(opts.figures / fname, dpi=110)
        plt.close(fig)
        names.append(fname)
    shown = [a for a in by if by[a][0]["shares"]["frac_p0"]]
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), sharey=True, squeeze=False)
        for ax, a in zip(axes[0], shown):
            n = min(len(r["shares"]["frac_p0"]) for r in by[a])
            stack = [[statistics.mean(r["shares"][t][i] for r in by[a]) for i in range(n)]
                     for t in ("frac_p0", "frac_mixed", "frac_p1")]
            ax.stackplot(range(n), *stack, labels=["p̂ = 0", "0 < p̂ < 1", "p̂ = 1"],
                         colors=["#3b528b", "#21918c", "#fde725"])
            ax.set_title(ARMS[a][3], fontsize=8)
            ax.set_xlabel("optimizer step")
        axes[0][0].set_ylabel("share of training questions")
        axes[0][-1].legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(opts.figures / "weighting_pass_rate_shares.png", dpi=110)
        plt.close(fig)
        names.append("weighting_pass_rate_shares.png")
    weighted = [a for a in by if ARMS[a][1] is not None]
    if weighted:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for a in weighted:
            n = min(len(r["ess"]) for r in by[a])
            if n:
                ax.plot([by[a][0]["ess"][i][0] for i in range(n)],
                        [statistics.mean(r["ess"][i][1] for r in by[a]) for i in range(n)], color=ARMS[a][4],
                        label=ARMS[a][3])
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("weight ESS / B (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(opts.figures / "weighting_ess.png", dpi=110)
        plt.close(fig)
        names.append("weighting_ess.png")
    if "sdpo" in by:
        fig, ax = plt.subplots(figsize=(7, 3.8))
        base = {r["seed"]: r for r in by["sdpo"]}
        others = [a for a in by if a != "sdpo"]
        for i, a in enumerate(others):
            d = [metric(r, f"val/all/mean@{k}", "final") - metric(base[r["seed"]], f"val/all/mean@{k}", "final")
                 for r in by[a] if r["seed"] in base]
            ax.scatter([i] * len(d), [100 * v for v in d], color=ARMS[a][4], s=18)
            if d:
                ax.hlines(100 * statistics.mean(d), i - 0.3, i + 0.3, color="k")
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(range(len(others)), [ARMS[a][3] for a in others], rotation=25, ha="right", fontsize=7)
        ax.set_ylabel(f"final mean@{k} − SDPO's, same seed (points)")
        fig.tight_layout()
        fig.savefig(opts.figures / "weighting_paired.png", dpi=110)
        plt.close(fig)
        names.append("weighting_paired.png")
    return names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), help="only these arms (default: all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds of the main arms")
    ap.add_argument("--ablation-seeds", nargs="+", type=int, default=[0, 1, 2])
    add_run_arguments(ap, "weighting")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 6 steps, validation every 3, 4 samples, "
                    "into <out>-quick; figures there too: checks the pipeline, says nothing about the algorithms")
    opts = ap.parse_args()
    if opts.quick:
        opts.seeds, opts.ablation_seeds, opts.steps, opts.val_every, opts.val_samples = [0, 1], [0, 1], 6, 3, 4
        opts.out = opts.out.with_name(opts.out.name + "-quick")
        opts.figures = opts.out / "figures"
    arms = opts.arms or list(ARMS)
    jobs = [(a, s) for a in arms for s in (opts.seeds if a in MAIN else opts.ablation_seeds)]
    jobs.sort(key=lambda j: (j[1], list(ARMS).index(j[0])))  # seed-major: paired results land together
    if not opts.report_only:
        todo = [j for j in jobs if not (run_dir(opts, *j) / "done.json").exists()]
        with ThreadPoolExecutor(opts.parallel) as pool:
            for _ in pool.map(lambda j: run_one(*j, opts), todo):
                pass
    runs = [load_run(opts, a, s) for a, s in jobs if (run_dir(opts, a, s) / "done.json").exists()]
    if not runs:
        raise SystemExit(f"no finished runs under {opts.out}")
    table = report(runs, opts)
    names = plots(runs, opts)
    print(table)
    rel = os.path.relpath(opts.figures, opts.out)
    (opts.out / "report.md").write_text(table + "\n\n" + "\n".join(f"![{n}]({rel}/{n})" for n in names) + "\n")


if __name__ == "__main__":
    main()

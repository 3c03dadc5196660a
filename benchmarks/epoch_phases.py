"""Wall time and per-phase split of tiny training epochs (one epoch = one rollout batch).

Runs ``lit-scsdpo fit`` in-process for a few epochs (validation off) and reads the logged
``time/*`` scalars back from TensorBoard: generate, score, teacher (SDPO), student forward,
backward, optimizer. The first epoch (warm-up, allocator growth) is reported separately.

    python benchmarks/epoch_phases.py --config configs/tiny/base.yaml --config configs/tiny/scsdpo.yaml --epochs 6
    python benchmarks/epoch_phases.py --config configs/tiny/base.yaml --config configs/tiny/sdpo.yaml -- --model.init_args.model_name_or_path /tmp/m
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

PHASES = ["generate", "score", "teacher", "student", "backward", "optimizer"]


def read_phase_times(log_dir: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for ev in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("time/"):
                out.setdefault(tag[5:], []).extend(e.value for e in acc.Scalars(tag))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, action="append", help="config files, in order (repeat)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("extra", nargs="*", help="extra CLI overrides (after --)")
    args = ap.parse_args()
    from lit_scsdpo.cli import run as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cli_main(["fit", *[a for c in args.config for a in ("--config", c)], "--trainer.max_epochs", str(args.epochs),
                  "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
                  "--trainer.logger.init_args.save_dir", tmp, "--trainer.enable_checkpointing", "false",
                  "--trainer.callbacks", "null", *args.extra])
        wall = time.perf_counter() - t0
        times = read_phase_times(tmp)
    steady = {k: v[1:] or v for k, v in times.items()}
    total = sum(sum(v) / len(v) for k, v in steady.items() if k in PHASES)
    print(f"\n{args.config}: {args.epochs} epochs in {wall:.1f} s wall (incl. model load)")
    print(f"{'phase':<10} {'first epoch s':>14} {'steady s/epoch':>15} {'share':>7}")
    for k in PHASES:
        if k in times:
            s = sum(steady[k]) / len(steady[k])
            print(f"{k:<10} {times[k][0]:>14.3f} {s:>15.3f} {s / total:>7.1%}")
    print(f"{'sum':<10} {'':>14} {total:>15.3f}")


if __name__ == "__main__":
    main()

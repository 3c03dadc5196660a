"""A new user's first hour, measured: every mistake of issue "first hour" as its own real CLI
launch, with what it printed, how long it took, whether it got past the model load, and
whether it changed anything already written (checksums of the run folder before and after).

    python benchmarks/first_hour.py                       # this checkout
    python benchmarks/first_hour.py --src /tmp/old-clone  # another checkout, same venv

Each probe runs ``python -m lit_scsdpo.entry`` (the console script) with ``PYTHONPATH=<src>`` in a scratch folder.
Probes that must fail before the weights load use a copy of the shipped tiny model whose
``model.safetensors`` is garbage: a launch that reaches the weight load says so in its
message. Prints a markdown table (and ``--json FILE`` writes the rows).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SMALL = [
    "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "2", "--trainer.num_sanity_val_steps", "0",
    "--data.task.init_args.train_size", "32", "--data.task.init_args.val_size", "4",
    "--data.questions_per_step", "4", "--data.rollouts_per_question", "2", "--data.micro_batch_questions", "4",
    "--data.sampling.max_new_tokens", "8", "--data.evaluation.samples", "2", "--data.evaluation.sampling.max_new_tokens", "8",
    "--trainer.enable_progress_bar", "false",
]


def tree_digest(folder: Path) -> str:
    """Names, sizes and contents of every file under ``folder``."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(ROOT), help="checkout whose lit_scsdpo is probed")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--only", nargs="*", default=None, help="probe names to run")
    args = ap.parse_args()
    src = Path(args.src).resolve()
    work = Path(tempfile.mkdtemp(prefix="first-hour-"))
    env = {**os.environ, "PYTHONPATH": str(src), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LIT_SCSDPO_TRACEBACK", None)
    cfg = src / "configs" / "tiny"
    logs = work / "logs"

    def cli(argv, timeout=600, cwd=None):
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "lit_scsdpo.entry", *argv], cwd=cwd or work, env=env,
                             capture_output=True, text=True, timeout=timeout)
        return out, time.time() - t0

    # the run a user resumes: GRPO, 2 steps, checkpoint at the end
    base = ["fit", "--config", str(cfg / "base.yaml"), "--config", str(cfg / "grpo.yaml"), *SMALL, "--trainer.logger.init_args.save_dir", str(logs)]
    out, _ = cli(base)
    if out.returncode != 0:
        sys.exit(f"base run failed:\n{out.stderr[-3000:]}")
    run_dir = logs / "grpo" / "version_0"
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    # a copy of the tiny model with garbage weights: a launch that loads them says so
    sys.path.insert(0, str(src))
    from lit_scsdpo.assets import resolve_model_path

    poisoned = work / "poisoned-model"
    shutil.copytree(resolve_model_path("asset:tiny-qwen3"), poisoned)
    (poisoned / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    data = work / "data"
    data.mkdir()
    (data / "empty.json").write_text("")
    (data / "bad.json").write_text('{"prompt": "Q1", "answer": "A"}\n{"prompt": "Q2", "answer": "B",}\n')
    (data / "noanswer.json").write_text('{"prompt": "Q1", "answer": "A"}\n{"prompt": "Q2"}\n')
    (data / "good.json").write_text("".join(json.dumps({"prompt": f"Q{i}?", "answer": "A"}) + "\n" for i in range(8)))
    truncated = work / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    garbage = work / "garbage.ckpt"
    garbage.write_bytes(b"\xdc" * 4096)

    poison = ["--model.init_args.model_name_or_path", str(poisoned)]
    fresh = ["fit", "--config", str(cfg / "base.yaml"), "--config", str(cfg / "sdpo.yaml"), *SMALL, "--trainer.logger.init_args.save_dir",
             str(work / "fresh")]

    def mcq(path):
        return ["--data.task", "lit_scsdpo.tasks.files.MultipleChoiceTask", "--data.task.init_args.name", "mcq",
                "--data.task.init_args.test_file", str(path), "--data.task.init_args.train_file", str(path)]

    fresh_mcq = ["fit", "--config", str(cfg / "base.yaml"), "--config", str(cfg / "sdpo.yaml"), "--trainer.max_epochs", "1",
                 "--trainer.logger.init_args.save_dir", str(work / "fresh")]
    pc = src / "configs" / "paper"  # run from the scratch folder, which has no data/tooluse/ in it
    paper = ["fit", "--config", str(pc / "base.yaml"), "--config", str(pc / "model/qwen3_8b.yaml"),
             "--config", str(pc / "algo/sdpo.yaml"), "--config", str(pc / "task/tooluse.yaml"),
             "--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    probes = {
        # defects
        "resume with another algorithm's config": (["fit", "--config", str(cfg / "base.yaml"), "--config", str(cfg / "sdpo.yaml"), *SMALL,
                                                    "--trainer.logger.init_args.save_dir", str(logs),
                                                    "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3"], None),
        "resume with a new lr and eps_high": ([*base, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3",
                                              "--model.init_args.optim.lr", "1e-3",
                                              "--model.init_args.grpo.eps_high", "0.5"], None),
        "resume with rollouts_per_question 1": ([*base, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3",
                                                "--data.rollouts_per_question", "1"], None),
        "data.questions_per_step 0": ([*fresh, *poison, "--data.questions_per_step", "0"], None),
        "data.rollouts_per_question 1 (SDPO)": ([*fresh, *poison, "--data.rollouts_per_question", "1"], None),
        "empty task file": ([*fresh_mcq, *poison, *mcq(data / "empty.json")], None),
        "malformed JSON line": ([*fresh_mcq, *poison, *mcq(data / "bad.json")], None),
        "row without answer": ([*fresh_mcq, *poison, *mcq(data / "noanswer.json")], None),
        "missing --ckpt_path file": ([*fresh, *poison, "--ckpt_path", str(work / "nope.ckpt")], None),
        "paper recipe, data files missing": (paper, work),
        "vLLM engine without vLLM": ([*fresh, *poison, "--data.engine", "lit_scsdpo.rollout.VLLMEngine"], None),
        "GPU accelerator on a CPU machine": ([*fresh, *poison, "--trainer.accelerator", "gpu"], None),
        "training temperature 0": ([*fresh, *poison, "--data.sampling.temperature", "0"], None),
        "validation temperature 0": ([*fresh, "--data.evaluation.sampling.temperature", "0",
                                      "--trainer.logger.init_args.save_dir", str(work / "greedy")], None),
        "truncated checkpoint": ([*base, "--ckpt_path", str(truncated), "--trainer.max_epochs", "3"], None),
        "garbage checkpoint": ([*base, "--ckpt_path", str(garbage), "--trainer.max_epochs", "3"], None),
        # frictions
        "bad model path": ([*fresh, "--model.init_args.model_name_or_path", str(work / "no-model")], None),
        "typo in a model key": ([*fresh, *poison, "--model.init_args.alpah", "0.5"], None),
        "negative lr -1e-5": ([*fresh, *poison, "--model.init_args.optim.lr", "-1e-5"], None),
        "bad evaluation.sampling.temperature": ([*fresh, *poison, "--data.evaluation.sampling.temperature", "-1"], None),
        "--help": (["--help"], None),
        "fit --help": (["fit", "--help"], None),
    }
    rows = []
    for name, (argv, cwd) in probes.items():
        if args.only and name not in args.only:
            continue
        before = tree_digest(logs)
        versions = sorted(p.name for p in logs.rglob("version_*"))
        out, seconds = cli(argv, cwd=cwd)
        err = [ln for ln in out.stderr.splitlines() if ln.strip()]
        shown = err or [ln for ln in out.stdout.splitlines() if ln.strip()]
        said = [ln for ln in shown if "error:" in ln] or [ln for ln in shown if not ln.startswith(("  ", "usage:", "hint:"))]
        last = said[-1] if said else ""
        if name.endswith("--help"):
            last = ("lists export: " + str("export" in out.stdout))
        loaded = "safetensors" in out.stderr or "could not load the local folder" in out.stderr
        rows.append({"probe": name, "rc": out.returncode, "seconds": round(seconds, 1), "stderr_lines": len(err),
                     "weights_loaded_first": loaded, "run_folder_changed": tree_digest(logs) != before,
                     "new_version_dirs": sorted(p.name for p in logs.rglob("version_*")) != versions,
                     "says": last[:220]})
        print(json.dumps(rows[-1]), flush=True)

    # TensorBoard: a 2-step run with the shipped log_every_n_steps (5)
    tb = work / "tb"
    out, _ = cli(["fit", "--config", str(cfg / "base.yaml"), "--config", str(cfg / "grpo.yaml"), *SMALL, "--trainer.logger.init_args.save_dir", str(tb)])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = {}
    for ev in tb.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in ("train/loss", "rollout/reward_mean", "train/grad_norm"):
            if tag in acc.Tags()["scalars"]:
                steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
    rows.append({"probe": "2-step run: TensorBoard steps", "rc": out.returncode, "says": json.dumps(steps)})
    print(json.dumps(rows[-1]), flush=True)

    print("\n| probe | rc | s | stderr lines | weights loaded first | run folder changed | says |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['probe']} | {r['rc']} | {r.get('seconds', '')} | {r.get('stderr_lines', '')} | "
              f"{r.get('weights_loaded_first', '')} | {r.get('run_folder_changed', '')} | "
              f"{r['says'].replace('|', '/')} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

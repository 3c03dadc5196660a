"""What the CLI checks before any weights load, and what a resume may change.

A paper recipe loads 16 GB of weights before its first step; a mistake found after that costs
minutes and, worse, may leave a half-written run folder behind. Everything that can be checked
without the weights is checked here, by :func:`preflight`, before the model is built:

* the hardware the trainer asks for exists (a GPU accelerator on a machine without CUDA), and
  the precision can train (fp16 loss scaling and half-precision master weights cannot);
* ``--ckpt_path`` / ``--weights_from`` exist and are readable checkpoints (one line naming the
  file for a truncated or corrupt one);
* a resume is the same run (:func:`resume_differences`): the configuration given on the
  command line is compared with the one recorded in the checkpoint. Keys that only change how
  long the run goes, how often it validates, logs or saves, what is evaluated, or the hardware
  layout are applied and said; any other difference is refused in one line that lists the keys.
  Training a new run from a checkpoint's weights is ``fit --weights_from CKPT``;
* the DataModule's own checks, every split the subcommand needs read and validated row by row
  (``RolloutDataModule.check_before_weights``), the rollout engine importable, the group size
  large enough for the algorithm, and a training temperature above 0.

Kept out: anything that needs the tokenizer (prompt lengths are counted after the model loads).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional

class LaunchError(ValueError):
    """A launch that cannot work, found before any weights load (one line, with its hint)."""


#: configuration keys a resume may change: they do not change what the run trains on or how.
#: Each is applied and printed. Patterns match flattened keys (``trainer.max_epochs``; callbacks
#: by class: ``trainer.callbacks[RunCheckpoint].every_n_epochs``).
SAFE_ON_RESUME = (
    # how long the run goes
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs", "trainer.min_steps",
    # validation: when, and what is evaluated (its rollouts have their own seeds)
    "trainer.check_val_every_n_epoch", "trainer.val_check_interval", "trainer.num_sanity_val_steps",
    "trainer.limit_val_batches", "trainer.limit_test_batches",
    "data.evaluation*",
    # logging, progress, saving
    "trainer.log_every_n_steps", "trainer.enable_progress_bar", "trainer.enable_model_summary",
    "trainer.logger*", "trainer.default_root_dir",
    "trainer.callbacks[StepProgressBar]*", "trainer.callbacks[TQDMProgressBar]*", "trainer.callbacks[RichProgressBar]*",
    "trainer.callbacks[RunCheckpoint]*", "trainer.callbacks[MajorityVoteEvaluation]*",
    "trainer.callbacks[CurriculumLogger]*",
    # the hardware layout (said: each rank draws its own rollout stream, so the draws differ)
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy*",
    "threads",
)
#: hardware keys: applied on resume, with the note that the rollouts then differ
LAYOUT_KEYS = ("trainer.devices", "trainer.num_nodes", "trainer.strategy*")
#: not part of a run's configuration
NOT_COMPARED = ("config", "ckpt_path", "weights_from", "print_config", "subcommand", "__path__",
                # set by the CLI itself on a resume (the same log folder, events after the checkpoint hidden)
                "trainer.logger.init_args.version", "trainer.logger.init_args.purge_step")


# ------------------------------------------------------------------ checkpoints
def read_checkpoint_meta(path: str, option: str = "--ckpt_path") -> dict[str, Any]:
    """The checkpoint's loop counters, hyper-parameters and recorded run configuration, read
    without its weights (a file is memory-mapped; of a sharded folder only ``meta.pt``).
    Raises :class:`LaunchError` naming ``option`` and the file for anything unreadable."""
    import torch

    from .checkpoints import DCP_METADATA_FILE, META_FILE

    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise LaunchError(f"{option} {str(path)!r}: no such file or folder")
    if p.is_dir():
        if not (p / DCP_METADATA_FILE).is_file() or not (p / META_FILE).is_file():
            raise LaunchError(f"{option} {str(path)!r}: a folder, but not a sharded Lightning checkpoint "
                              f"(expected {DCP_METADATA_FILE} and {META_FILE} in it)")
        target = p / META_FILE
    else:
        target = p
    try:
        meta = torch.load(target, map_location="cpu", weights_only=True, mmap=not p.is_dir())
    except Exception as exc:  # truncated zip, not a zip, pickle or weights_only errors alike
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise LaunchError(f"{option} {str(path)!r}: not a readable Lightning checkpoint "
                          f"(truncated or corrupt? {type(exc).__name__}: {first})") from None
    if not isinstance(meta, dict) or ("state_dict" not in meta and not p.is_dir()):
        raise LaunchError(f"{option} {str(path)!r}: not a Lightning checkpoint (no 'state_dict')")
    return meta


def recorded_run_config(meta: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The run configuration the CLI recorded in a checkpoint (None for an older checkpoint)."""
    return (meta.get("lit_scsdpo") or {}).get("run_config")


def model_config_of(meta: dict[str, Any]) -> Optional[dict[str, Any]]:
    """``{"class_path", "init_args"}`` from a checkpoint's hyper-parameters (any checkpoint the
    CLI wrote, also before run configurations were recorded)."""
    hparams = dict(meta.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    class_path = hparams.pop("_class_path", None)
    if class_path is None:
        return None
    return {"class_path": class_path, "init_args": hparams}


# ------------------------------------------------------------------ comparing configurations
def plain(value: Any) -> Any:
    """Configuration values as plain Python (dataclasses, namespaces and tuples unwrapped)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "as_dict") and callable(value.as_dict):  # jsonargparse Namespace
        return plain(value.as_dict())
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.init_args.optim.lr": 1e-5, ...}``; callbacks keyed by their class name."""
    out: dict[str, Any] = {}
    config = plain(config)
    if isinstance(config, dict):
        for key, value in config.items():
            name = f"{prefix}{key}"
            if name in NOT_COMPARED:
                continue
            if name == "trainer.callbacks" and isinstance(value, list):
                for cb in value:
                    cls = str(cb.get("class_path", cb)).rsplit(".", 1)[-1] if isinstance(cb, dict) else str(cb)
                    args = cb.get("init_args", {}) if isinstance(cb, dict) else {}
                    out[f"{name}[{cls}]"] = "present"
                    out.update(flatten(args, f"{name}[{cls}]."))
                continue
            if isinstance(value, dict) and value:
                out.update(flatten(value, name + "."))
            else:
                out[name] = value
    return out


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    """``key`` is one of ``patterns`` (a trailing ``*``: any key that starts with the rest)."""
    return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def resume_differences(recorded: dict[str, Any], given: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(refused, applied)``: the keys where ``given`` differs from the checkpoint's ``recorded``
    configuration, as ``"key: old -> new"``; ``applied`` are the :data:`SAFE_ON_RESUME` ones."""
    old, new = flatten(recorded), flatten(given)
    refused, applied = [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if _same(a, b) or (a in (None, "<unset>") and b in (None, "<unset>")):
            continue
        (applied if _matches(key, SAFE_ON_RESUME) else refused).append(f"{key}: {a!r} -> {b!r}")
    return refused, applied


def check_resume(meta: dict[str, Any], given: dict[str, Any], ckpt_path: str) -> list[str]:
    """Refuse a ``fit --ckpt_path`` whose configuration differs from the checkpoint's, except
    where :data:`SAFE_ON_RESUME`; returns the lines that say what was applied."""
    recorded = recorded_run_config(meta)
    notes = []
    if recorded is None:  # a checkpoint from before run configurations were recorded
        model = model_config_of(meta)
        if model is None:
            return [f"{ckpt_path} records no configuration: resuming with the one given, unchecked"]
        recorded = {"model": model}
        given = {"model": plain(given.get("model"))}
        notes.append(f"{ckpt_path} records only the model configuration (an older checkpoint): "
                     f"the data and trainer configuration were not compared")
    refused, applied = resume_differences(recorded, given)
    if refused:
        shown = "; ".join(refused[:8]) + (f"; and {len(refused) - 8} more" if len(refused) > 8 else "")
        raise LaunchError(
            f"--ckpt_path {ckpt_path}: a resume continues the same run, but this configuration differs from the "
            f"checkpoint's in {len(refused)} key(s): {shown}. Give the run's own config (its config.yaml), or "
            f"start a new run from these weights with --weights_from {ckpt_path}")
    if applied:
        notes.append("resume: applied " + "; ".join(applied))
        if any(_matches(k.split(":")[0], LAYOUT_KEYS) for k in applied):
            notes.append("resume: the hardware layout changed; each rank draws its own rollout stream, so the "
                         "rollouts from here differ from those of an uninterrupted run")
    return notes


def evaluation_note(subcommand: str, meta: dict[str, Any], given: dict[str, Any], ckpt_path: str) -> str:
    """``validate`` / ``test --ckpt_path``: the checkpoint's model configuration is the one used
    (it is what was trained); say so, and which given model keys it replaced."""
    model = model_config_of(meta)
    if model is None:
        return f"{subcommand}: {ckpt_path} records no model configuration; using the one given"
    refused, _ = resume_differences({"model": model}, {"model": plain(given.get("model"))})
    note = (f"{subcommand}: the model configuration is the checkpoint's ({model['class_path']}, as trained); "
            f"data and trainer settings are the ones given")
    if refused:
        note += f"; ignored from the given config: " + "; ".join(refused[:6]) + \
                (f"; and {len(refused) - 6} more" if len(refused) > 6 else "")
    return note


# ------------------------------------------------------------------ hardware
#: precisions the manual optimisation loop cannot train with (fp16 loss scaling; half weights)
UNTRAINABLE_PRECISIONS = ("16-mixed", "16", "16-true", "bf16-true", "half", "64", "64-true", "double")


def check_hardware(trainer: dict[str, Any], subcommand: str) -> None:
    """A GPU accelerator where no GPU is visible, more GPUs than visible, or a precision that
    cannot train: one line, before the weights load."""
    import torch

    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise LaunchError(f"trainer.accelerator={accelerator}: no CUDA GPU is visible on this machine "
                              f"(torch.cuda.is_available() is False; torch {torch.__version__}); "
                              f"use --trainer.accelerator cpu, or install a CUDA build of torch")
        devices = trainer.get("devices")
        if isinstance(devices, int) and devices > torch.cuda.device_count():
            raise LaunchError(f"trainer.devices={devices}: only {torch.cuda.device_count()} CUDA GPU(s) are "
                              f"visible on this machine")
    if accelerator == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise LaunchError("trainer.accelerator=mps: Apple's MPS is not available on this machine")
    precision = str(trainer.get("precision") or "32-true")
    if subcommand == "fit" and precision in UNTRAINABLE_PRECISIONS:
        raise LaunchError(f"trainer.precision={precision!r} cannot train here: the manual optimisation loop keeps "
                          f"fp32 master weights and applies no fp16 loss scaling; use bf16-mixed (GPUs) or 32-true")

"""Read training checkpoints, consolidate sharded ones, export Hugging Face models.

    lit-scsdpo export --ckpt_path last.ckpt --out exported/ [--teacher] [--dtype bfloat16]
    lit-scsdpo consolidate --ckpt_path checkpoints/last.ckpt --out last-full.ckpt

Two checkpoint formats (see ``docs/export.md``):

* a Lightning ``.ckpt`` file (single process, DDP, or FSDP2 with
  ``save_distributed_checkpoint=False``);
* a sharded folder written by ``ModelParallelStrategy`` / ``FSDP2Strategy`` with
  ``save_distributed_checkpoint=True``: a ``torch.distributed.checkpoint`` (DCP) of
  ``{"state_dict": ..., "optimizer_0": ..., ...}`` plus rank 0's ``meta.pt`` with everything
  else. Lightning's own ``consolidate_checkpoint`` expects the ``fsdp`` strategy's ``"model"``
  key and keeps the optimizer states keyed by parameter name, which a single-process
  ``Trainer`` cannot load; :func:`load_checkpoint` converts both.

Everything here runs in one process without a process group, on CPU, and reads the whole
checkpoint into host memory.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from . import module as _module  # noqa: F401  (registers the safe globals torch.load(weights_only=True) needs)
from .assets import resolve_model_path

PathLike = Union[str, os.PathLike]

#: rank 0's file of a sharded Lightning checkpoint (``lightning.fabric.utilities.load._METADATA_FILENAME``)
META_FILE = "meta.pt"
#: the DCP index file (``torch.distributed.checkpoint.filesystem`` writes it as ``.metadata``)
DCP_METADATA_FILE = ".metadata"
POLICY_PREFIX = "policy."
TEACHER_PREFIX = "teacher.weights."
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

__all__ = ["is_sharded_checkpoint", "load_checkpoint", "consolidate_checkpoint", "export_hf",
           "optimizer_state_by_id", "main"]


def is_sharded_checkpoint(path: PathLike) -> bool:
    """True iff ``path`` is a folder holding a DCP index and Lightning's ``meta.pt``."""
    p = Path(path)
    return p.is_dir() and (p / DCP_METADATA_FILE).is_file() and (p / META_FILE).is_file()


def optimizer_state_by_id(state: dict[str, Any]) -> dict[str, Any]:
    """An optimizer state keyed by parameter FQN (``get_optimizer_state_dict``) in the standard
    ``Optimizer.state_dict()`` format: each parameter's id is its position in the enumeration of
    all param groups' ``params`` in order, which is how ``Optimizer.load_state_dict`` matches
    saved state to the parameters of the optimizer it loads into. Integer-keyed input is
    returned unchanged."""
    groups = state.get("param_groups", [])
    if all(isinstance(p, int) for g in groups for p in g["params"]) and all(isinstance(k, int) for k in state["state"]):
        return state
    ids: dict[str, int] = {}
    new_groups = []
    for group in groups:
        params = []
        for fqn in group["params"]:
            if fqn in ids:
                raise ValueError(f"optimizer state: parameter {fqn!r} is listed in more than one param group")
            ids[fqn] = len(ids)
            params.append(ids[fqn])
        new_groups.append({**group, "params": params})
    unknown = sorted(set(state["state"]) - set(ids))
    if unknown:
        raise ValueError(f"optimizer state: state for parameters not in any param group: {unknown[:3]}")
    by_id = {ids[fqn]: value for fqn, value in state["state"].items()}
    return {**state, "state": dict(sorted(by_id.items())), "param_groups": new_groups}


def _load_dcp(folder: Path, keys: Optional[set[str]] = None) -> dict[str, Any]:
    """A DCP folder (its top-level ``keys``; None: all) as full, plain CPU tensors: every rank's
    shards, read in one process."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    # dcp.load() fills only keys of the dict it is given; the empty planner builds the dict from
    # the checkpoint's own metadata (this is what torch's dcp_to_torch_save does)
    try:
        planner = _EmptyStateDictLoadPlanner(keys=keys)
    except TypeError:  # a torch without key filtering: read everything
        planner = _EmptyStateDictLoadPlanner()
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=FileSystemReader(folder), planner=planner, no_dist=True)
    return state


def load_checkpoint(path: PathLike, with_optimizer: bool = True) -> dict[str, Any]:
    """A standard Lightning checkpoint dict (``state_dict``, ``optimizer_states`` with integer
    parameter ids, ``lr_schedulers``, ``loops``, ``hyper_parameters``, ...) from a ``.ckpt``
    file or a sharded checkpoint folder. Tensors are on the CPU; the input is not modified.

    ``with_optimizer=False`` skips reading a sharded folder's optimizer states (about half of
    it; an export needs only the weights). A file is memory-mapped, so what is not used is
    not read either way."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(p)!r}: no such file or folder")
    if p.is_file():
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # pickle, zip and weights_only errors alike: not a checkpoint we can read
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"checkpoint {str(p)!r}: not a readable Lightning checkpoint file ({first})") from None
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"checkpoint {str(p)!r}: not a Lightning checkpoint (no 'state_dict')")
        return ckpt
    has_dcp, has_meta = (p / DCP_METADATA_FILE).is_file(), (p / META_FILE).is_file()
    if not (has_dcp and has_meta):
        missing = " and ".join(f for f, ok in ((DCP_METADATA_FILE, has_dcp), (META_FILE, has_meta)) if not ok)
        raise ValueError(f"checkpoint {str(p)!r}: a folder, but not a sharded Lightning checkpoint "
                         f"(missing {missing}; expected a folder saved with save_distributed_checkpoint=True)")
    sharded = _load_dcp(p, None if with_optimizer else {"state_dict", "model"})
    ckpt = torch.load(p / META_FILE, map_location="cpu", weights_only=True)
    # ModelParallelStrategy saves the weights as "state_dict", Lightning's FSDPStrategy as "model"
    ckpt["state_dict"] = sharded.pop("state_dict") if "state_dict" in sharded else sharded.pop("model", {})
    numbers = sorted(int(m.group(1)) for k in sharded if (m := re.fullmatch(r"optimizer_(\d+)", k)))
    if numbers != list(range(len(numbers))):
        raise ValueError(f"checkpoint {str(p)!r}: optimizer states {numbers} are not numbered 0..n-1")
    optimizers = [sharded.pop(f"optimizer_{i}") for i in numbers]
    if optimizers and with_optimizer:  # a weights-only save has none, like a weights-only .ckpt
        ckpt["optimizer_states"] = [optimizer_state_by_id(o) for o in optimizers]
    ckpt.update(sharded)  # anything else a strategy may add
    return ckpt


def consolidate_checkpoint(folder: PathLike, out_file: PathLike) -> Path:
    """Write the sharded checkpoint ``folder`` as one ``.ckpt`` file that a single-process
    ``Trainer.fit(ckpt_path=out_file)`` resumes from. Written atomically (``out_file.tmp``
    next to it, then renamed). Returns the output path."""
    if not is_sharded_checkpoint(folder):
        load_checkpoint(folder)  # raises the reason (missing, a file, not a checkpoint folder)
        raise ValueError(f"checkpoint {str(folder)!r}: not a sharded checkpoint folder (already a single file)")
    out = Path(out_file)
    if out.resolve() == Path(folder).resolve() or Path(folder).resolve() in out.resolve().parents:
        raise ValueError(f"--out {str(out)!r}: must not be inside the checkpoint folder {str(folder)!r}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {str(out)!r}: is a folder; give a file name such as last-full.ckpt")
    ckpt = load_checkpoint(folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, out)  # a crash mid-write never leaves a truncated out_file
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _strip(state_dict: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _save_hf(weights: dict[str, torch.Tensor], base: str, out: Path, dtype: torch.dtype, tokenizer: Any) -> None:
    """Build the base model's architecture from its config only (no weight download), load
    ``weights`` strictly, and save config, generation config, safetensors and tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = AutoConfig.from_pretrained(base)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # tied parameters (embed_tokens / lm_head) appear under each name in a state dict; after a
    # DCP round trip they are separate tensors, and the one loaded last would silently win
    shared: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(param), []).append(name)
    for names in shared.values():
        present = [n for n in names if n in weights]
        if any(not torch.equal(weights[present[0]], weights[n]) for n in present[1:]):
            raise ValueError(f"tied parameters {present} differ in the checkpoint; cannot export one model")
    model.load_state_dict(weights, strict=True)  # copy_ casts to the model's dtype
    try:
        model.generation_config = GenerationConfig.from_pretrained(base)
    except OSError:
        pass  # the base has no generation_config.json: keep the one derived from its config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # transformers writes the weights through a private temporary file (mode 0600); give every
    # file the mode the user's umask gives new files, like the config files beside it
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def export_hf(ckpt_path: PathLike, out_dir: PathLike, teacher: bool = False, dtype: str = "float32",
              model_name_or_path: Optional[str] = None) -> dict[str, Path]:
    """Export the policy (and with ``teacher=True`` the SDPO EMA teacher, to ``out_dir/teacher``)
    of a checkpoint (``.ckpt`` file or sharded folder) as Hugging Face model folders with the
    base model's config, generation config and tokenizer.

    Args:
        ckpt_path: the training checkpoint; it is only read.
        out_dir: the output folder (created; existing model files in it are overwritten).
        teacher: also export the teacher weights (an error if the checkpoint has none).
        dtype: ``float32`` | ``bfloat16`` | ``float16``: the saved weights' dtype.
        model_name_or_path: the base model (config, tokenizer); default: the checkpoint's
            ``hyper_parameters["model_name_or_path"]``.

    Returns:
        ``{"policy": out_dir}``, plus ``"teacher": out_dir/teacher`` when exported.
    """
    from transformers import AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {list(DTYPES)}, got {dtype!r}")
    src, out = Path(ckpt_path), Path(out_dir)
    if src.is_dir() and (out.resolve() == src.resolve() or src.resolve() in out.resolve().parents):
        raise ValueError(f"--out {str(out)!r}: must not be inside the checkpoint folder {str(src)!r}")
    if out.is_file():
        raise NotADirectoryError(f"--out {str(out)!r}: is a file; give a folder")
    ckpt = load_checkpoint(src, with_optimizer=False)
    hparams = ckpt.get("hyper_parameters") or {}
    base_name = model_name_or_path or hparams.get("model_name_or_path")
    if not base_name:
        raise ValueError(f"checkpoint {str(src)!r}: no hyper_parameters.model_name_or_path; "
                         f"pass --model_name_or_path (the base model of the run)")
    state_dict = ckpt["state_dict"]
    policy = _strip(state_dict, POLICY_PREFIX)
    if not policy:
        raise ValueError(f"checkpoint {str(src)!r}: no policy weights (no '{POLICY_PREFIX}*' keys in state_dict)")
    teacher_weights = _strip(state_dict, TEACHER_PREFIX) if teacher else {}
    if teacher:
        if not teacher_weights:
            raise ValueError(f"checkpoint {str(src)!r}: no teacher weights ('{TEACHER_PREFIX}*'): only SDPO runs "
                             f"with teacher.mode ema or frozen have them")
        teacher_cfg = hparams.get("teacher")
        mode = teacher_cfg.get("mode") if isinstance(teacher_cfg, dict) else getattr(teacher_cfg, "mode", None)
        if mode == "trust_region":
            raise ValueError(f"checkpoint {str(src)!r}: the trust_region teacher mixes the logits of the initial "
                             f"and the current policy; it is not one set of weights")
    base = resolve_model_path(base_name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OSError(f"base model {base_name!r}: could not load its tokenizer ({first}); "
                      f"pass --model_name_or_path") from None
    written = {"policy": out}
    out.mkdir(parents=True, exist_ok=True)
    _save_hf(policy, base, out, DTYPES[dtype], tokenizer)
    if teacher:
        written["teacher"] = out / "teacher"
        _save_hf(teacher_weights, base, written["teacher"], DTYPES[dtype], tokenizer)
    return written


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``lit-scsdpo export ...`` / ``lit-scsdpo consolidate ...`` (dispatched from ``lit_scsdpo.entry.main``)."""
    parser = argparse.ArgumentParser(prog="lit-scsdpo", description="checkpoint tools (see docs/export.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write the policy (and teacher) as a Hugging Face model folder")
    exp.add_argument("--ckpt_path", required=True, help="a .ckpt file or a sharded checkpoint folder")
    exp.add_argument("--out", required=True, help="output folder (from_pretrained loads it)")
    exp.add_argument("--teacher", action="store_true", help="also write the SDPO EMA teacher to OUT/teacher")
    exp.add_argument("--dtype", default="float32", choices=list(DTYPES), help="saved weights' dtype")
    exp.add_argument("--model_name_or_path", default=None,
                     help="base model for config and tokenizer (default: the checkpoint's)")
    con = sub.add_parser("consolidate", help="turn a sharded checkpoint folder into one .ckpt file")
    con.add_argument("--ckpt_path", required=True, help="the sharded checkpoint folder")
    con.add_argument("--out", required=True, help="output .ckpt file")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "export":
            written = export_hf(args.ckpt_path, args.out, args.teacher, args.dtype, args.model_name_or_path)
            for what, path in written.items():
                print(f"[lit-scsdpo] exported the {what} ({args.dtype}) to {path}", flush=True)
        else:
            out = consolidate_checkpoint(args.ckpt_path, args.out)
            print(f"[lit-scsdpo] consolidated {args.ckpt_path} into {out}; resume with "
                  f"lit-scsdpo fit ... --ckpt_path {out}", flush=True)
    except (OSError, ValueError) as exc:  # one line, not a traceback, for a wrong path or argument
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        sys.exit(f"lit-scsdpo {args.command}: error: {first}")

"""The ``lit-scsdpo`` console script: a light front door to the CLI.

It answers ``lit-scsdpo --help`` without importing torch, Lightning or transformers, sends
``export`` / ``consolidate`` to the checkpoint tools, reads ``--key -1e-5`` as a value, and
turns a launch that cannot work (a bad option, file, checkpoint or argument, found before
training starts) into one line and a hint instead of a traceback. Errors raised once training
has started keep their traceback. ``LIT_SCSDPO_TRACEBACK=1`` shows the full traceback (and the
parser's full message) always.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Optional

from .errors import TRACEBACK_ENV, condense_parser_message, one_line, root_cause  # noqa: F401 - re-exported

HELP = """usage: lit-scsdpo <command> [options]

Reinforcement learning of LLM reasoning: GRPO, SDPO and SC-SDPO on PyTorch Lightning.

commands:
  fit          train (--config FILE ...; resume the same run with --ckpt_path CKPT,
               start a new run from a checkpoint's weights with --weights_from CKPT)
  validate     evaluate a checkpoint on the validation split (--ckpt_path CKPT)
  test         evaluate a checkpoint on the test split (--ckpt_path CKPT)
  export       write a checkpoint's policy (and teacher) as a Hugging Face model folder
  consolidate  turn a sharded (FSDP2) checkpoint folder into one .ckpt file

`lit-scsdpo <command> --help` lists a command's options with their docstrings;
`lit-scsdpo fit --config configs/tiny/base.yaml --config configs/tiny/scsdpo.yaml --print_config`
prints a whole configuration.
Errors before training are one line; LIT_SCSDPO_TRACEBACK=1 shows the full traceback.
Docs: README.md and docs/ in the repository."""

_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def join_negative_values(argv: list[str]) -> list[str]:
    """``["--model.init_args.optim.lr", "-1e-5"]`` -> ``["--model.init_args.optim.lr=-1e-5"]``:
    argparse reads a token such as ``-1e-5`` as an option, not as the previous option's value."""
    out: list[str] = []
    for token in argv:
        if out and _NUMBER.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def main(args: Optional[list[str]] = None) -> None:
    """``lit-scsdpo``: returns None on success (exit status 0)."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] in ("-h", "--help"):
        print(HELP)
        return
    if argv[0] in ("export", "consolidate"):  # checkpoint tools, not LightningCLI subcommands
        from .checkpoints import main as checkpoints_main

        return checkpoints_main(argv)
    argv = join_negative_values(argv)
    from . import cli

    if args is None:  # the command line: Lightning re-launches sys.argv for the other ranks (DDP)
        sys.argv[1:] = argv
    try:
        cli.run(None if args is None else argv)
    except Exception as exc:  # noqa: BLE001 - shown as one line only before training starts
        if os.environ.get(TRACEBACK_ENV) or cli.training_started():
            raise
        sys.stderr.write(f"lit-scsdpo {argv[0]}: error: {one_line(exc)}\n"
                         f"hint: nothing was written; {TRACEBACK_ENV}=1 shows the full traceback\n")
        sys.exit(1)
    finally:
        from .distributed import destroy_process_group

        destroy_process_group()


if __name__ == "__main__":
    main()

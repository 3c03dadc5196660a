"""``lit-scsdpo``: LightningCLI over the policy-optimisation modules and the rollout DataModule.

    lit-scsdpo fit --config configs/tiny/scsdpo.yaml
    lit-scsdpo validate --config configs/tiny/scsdpo.yaml --ckpt_path <ckpt>
    lit-scsdpo fit --print_config --config configs/tiny/sdpo.yaml

The module is chosen by class (``model.class_path``: ``lit_scsdpo.GRPO`` or ``lit_scsdpo.SDPO``
or your own subclass of ``PolicyOptimization``); SC-SDPO is SDPO plus the
``lit_scsdpo.callbacks.DifficultyWeighting`` callback. One training epoch is one rollout batch.

Differences from a plain ``LightningCLI``:

* no ``--optimizer`` / ``--lr_scheduler``: the modules use manual optimisation with their own
  AdamW and linear warm-up, set by ``model.init_args.optim`` (``OptimConfig``: ``lr``,
  ``betas``, ``weight_decay``, ``warmup_steps``, ``grad_clip``);
* ``--trainer.enable_progress_bar false`` drops the progress-bar callbacks a config lists;
* a relative logger ``save_dir`` (the configs' ``lightning_logs``) is taken relative to
  ``--trainer.default_root_dir`` when that is set, so logs and checkpoints go under it;
* ``--threads N`` sets torch's CPU threads;
* freed tensor memory goes back to the OS (``host_memory.return_freed_memory_to_os``: glibc
  would otherwise keep each step's transient peak resident);
* a few warnings a user cannot act on are silenced (``_silence_warnings``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import Any

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningCLI

from .data import RolloutDataModule
from .host_memory import return_freed_memory_to_os
from .module import PolicyOptimization

#: options LightningCLI adds by default that the modules' manual optimisation cannot honour
_REMOVED_OPTIONS = ("--optimizer", "--lr_scheduler")
_OPTIM_HINT = ("the modules use manual optimisation with their own AdamW and linear warm-up; set them with "
               "model.init_args.optim (OptimConfig: lr, betas, weight_decay, warmup_steps, grad_clip), "
               "e.g. --model.init_args.optim.lr 1e-5 --model.init_args.optim.warmup_steps 10")

TRAINER_DEFAULTS = {
    "reload_dataloaders_every_n_epochs": 1,  # fresh on-policy rollouts every epoch
    # every step (Lightning's default, 50, is too sparse for RL curves); the module logs its full
    # scalar set only on the steps the logger writes (configs/tiny: every 5)
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
}


def _silence_warnings() -> None:
    """Silence the messages a user of the CLI cannot act on (exact messages only)."""
    # torch >= 2.10 deprecates LeafSpec, which Lightning's _pytree still builds
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    # from_pretrained returns the policy in eval mode (no dropout, as rollouts were drawn) and the
    # SDPO teacher is in eval mode by design; Lightning >= 2.6 warns about both at fit start
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # the module moves its own RolloutBatch (tensors only); that is the point of overriding it
    warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`")
    # an advertisement, printed by every Trainer
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTip) for f in logger.filters):
            logger.addFilter(_DropTip())


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        return "litlogger" not in str(record.msg)


def _is_progress_bar(callback: Any) -> bool:
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if isinstance(callback, ProgressBar):
        return True
    if not isinstance(class_path, str):
        return False
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, ProgressBar)


def _is_sharded_strategy(strategy: Any) -> bool:
    """``trainer.strategy`` names FSDP2 / ModelParallel (a registered name or a class path)."""
    if strategy is None:
        return False
    if not isinstance(strategy, str):
        strategy = getattr(strategy, "class_path", None) or type(strategy).__name__
    from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry

    if strategy in StrategyRegistry:
        return issubclass(StrategyRegistry[strategy]["strategy"], ModelParallelStrategy)
    return strategy.rsplit(".", 1)[-1] in ("FSDP2Strategy", "ModelParallelStrategy")


def _as_list(value: Any) -> list[Any]:
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class RLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument("--threads", type=int, default=0,
                            help="torch CPU threads (0: leave torch's default)")

    def parse_arguments(self, parser, args) -> None:  # noqa: D102
        argv = sys.argv[1:] if args is None else args
        if isinstance(argv, (list, tuple)):
            for token in argv:
                option = str(token).split("=", 1)[0].split(".", 1)[0]
                if option in _REMOVED_OPTIONS:
                    parser.error(f"unrecognized arguments: {option} is not an option of lit-scsdpo: {_OPTIM_HINT}")
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:  # noqa: D102
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        threads = config.get("threads", 0)
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        trainer = config.get("trainer")
        if trainer is None:
            return
        # --trainer.enable_progress_bar false with a config that lists a progress bar
        if trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            kept = [c for c in _as_list(trainer.callbacks) if not _is_progress_bar(c)]
            trainer.callbacks = kept or None
        # relative logger directories are relative to --trainer.default_root_dir when it is set
        root = trainer.get("default_root_dir")
        if root:
            for lg in _as_list(trainer.get("logger")):
                init_args = lg.get("init_args") if hasattr(lg, "get") else None
                save_dir = init_args.get("save_dir") if init_args is not None and hasattr(init_args, "get") else None
                if isinstance(save_dir, (str, os.PathLike)) and not os.path.isabs(save_dir) \
                        and "://" not in str(save_dir):
                    init_args.save_dir = os.path.join(str(root), str(save_dir))
        self._consolidate_for_one_process(config, trainer)
        self._continue_log_folder(config, trainer)

    def _consolidate_for_one_process(self, config: Any, trainer: Any) -> None:
        """``--ckpt_path`` is a sharded checkpoint folder (saved under ``fsdp2``) but this run does
        not shard: write it as one file beside the folder and resume from that."""
        from .checkpoints import consolidate_checkpoint, is_sharded_checkpoint

        ckpt = config.get("ckpt_path")
        if not ckpt or not is_sharded_checkpoint(str(ckpt)) or _is_sharded_strategy(trainer.get("strategy")):
            return
        folder = os.path.abspath(str(ckpt))
        out = folder.rstrip(os.sep) + ".consolidated"
        if int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
            print(f"[lit-scsdpo] {ckpt} is sharded and this run does not shard: consolidating it to {out}",
                  flush=True)
            consolidate_checkpoint(folder, out)
        config.ckpt_path = out

    def _continue_log_folder(self, config: Any, trainer: Any) -> None:
        """``fit --ckpt_path <log dir>/checkpoints/last.ckpt``: keep logging in that run's folder
        (the logger's ``version``) instead of a new ``version_N``, and hide the TensorBoard
        events a killed run wrote after its checkpoint (``purge_step``)."""
        ckpt = config.get("ckpt_path")
        if self.subcommand != "fit" or not ckpt or not os.path.exists(str(ckpt)):
            return
        run_dir = os.path.dirname(os.path.dirname(os.path.abspath(str(ckpt))))
        for lg in _as_list(trainer.get("logger")):
            if not (hasattr(lg, "get") and str(lg.get("class_path", "")).endswith("TensorBoardLogger")):
                continue
            args = lg.get("init_args")
            if args is None or args.get("version") is not None:
                continue
            expected = os.path.abspath(os.path.join(str(args.get("save_dir") or "lightning_logs"),
                                                    str(args.get("name") or "lightning_logs")))
            if os.path.dirname(run_dir) == expected and os.path.basename(run_dir).startswith("version_"):
                import torch

                # a file, or a sharded folder (its meta.pt holds the loops and the step)
                meta = os.path.join(str(ckpt), "meta.pt") if os.path.isdir(str(ckpt)) else str(ckpt)
                state = torch.load(meta, map_location="cpu", weights_only=False, mmap=True)
                args.version = os.path.basename(run_dir)
                args.purge_step = int(state.get("global_step", 0)) + 1

    def _print_log_dir(self, when: str) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # on every rank: a collective (broadcast) under DDP
        if trainer.is_global_zero and log_dir:
            print(f"\n[lit-scsdpo] {when}: logs in {log_dir}\n"
                  f"[lit-scsdpo] open them with: tensorboard --logdir {os.path.dirname(log_dir)}\n",
                  flush=True)

    def before_fit(self) -> None:  # noqa: D102
        self._print_log_dir("training")

    def after_fit(self) -> None:  # noqa: D102
        self._print_log_dir("done")
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or ""
        if ckpt and self.trainer.is_global_zero:
            print(f"[lit-scsdpo] last checkpoint: {ckpt}\n", flush=True)


def run(args: list[str] | None = None) -> RLCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _silence_warnings()
    return_freed_memory_to_os()
    return RLCLI(
        PolicyOptimization,
        RolloutDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,  # manual optimisation: model.init_args.optim
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The ``lit-scsdpo`` console script (returns None, so its exit status is 0 on success)."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in ("export", "consolidate"):  # checkpoint tools, not LightningCLI subcommands
        from .checkpoints import main as checkpoints_main

        return checkpoints_main(argv)
    try:
        run(args)
    finally:
        _destroy_process_group()


def _destroy_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to static destructors,
    gloo's worker threads occasionally abort the process after a successful DDP run
    ("terminate called without an active exception", exit -6)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

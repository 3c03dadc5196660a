"""``lit-scsdpo``: LightningCLI over the policy-optimisation modules and the rollout DataModule.

    lit-scsdpo fit --config configs/tiny/base.yaml --config configs/tiny/scsdpo.yaml
    lit-scsdpo validate --config configs/tiny/base.yaml --config configs/tiny/scsdpo.yaml --ckpt_path <ckpt>
    lit-scsdpo fit --print_config --config configs/tiny/base.yaml --config configs/tiny/sdpo.yaml

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
* a few warnings a user cannot act on are silenced (``_silence_warnings``);
* everything that can be checked without the weights is checked before the model is built
  (``lit_scsdpo.launch``): hardware, checkpoints, the data and its files, the engine;
* ``fit --ckpt_path`` resumes the *same* run: a configuration that differs from the one recorded
  in the checkpoint is refused (keys that only change duration, evaluation, logging or the
  hardware layout are applied and said); ``fit --weights_from CKPT`` starts a new run from a
  checkpoint's policy weights; ``validate`` / ``test --ckpt_path`` use the checkpoint's model
  configuration, and say so;
* ``config.yaml`` of a resumed run is rewritten only after the resume completed a step.

The console script is :mod:`lit_scsdpo.entry` (fast ``--help``, one-line errors).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from typing import Any, Optional

import yaml
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from . import launch
from .data import RolloutDataModule
from .host_memory import return_freed_memory_to_os
from .module import PolicyOptimization
from .rollout import SamplingConfig

_STATE = {"training_started": False}


def training_started() -> bool:
    """Whether this process's CLI got past its launch (errors after that keep their traceback)."""
    return _STATE["training_started"]


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def _say(line: str) -> None:
    if _is_rank_zero():
        print(f"[lit-scsdpo] {line}", flush=True)

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
    # the DataModule's loaders are iterable with a length on purpose (no DistributedSampler re-shard)
    warnings.filterwarnings("ignore", message=r".*IterableDataset.*has `__len__` defined")
    warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging interval")
    # RunCheckpoint restores nothing that depends on the folder (validate/test log to a new one)
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
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


class _Parser(LightningArgumentParser):
    """Parse errors as one line and a hint (``LIT_SCSDPO_TRACEBACK=1``: the parser's full message)."""

    def error(self, message: str, ex: Optional[Exception] = None):  # noqa: D102
        from .errors import TRACEBACK_ENV, condense_parser_message

        if os.environ.get(TRACEBACK_ENV) or getattr(self, "exit_on_error", True) is False:
            return super().error(message, ex)
        sys.stderr.write(f"lit-scsdpo: error: {condense_parser_message(message)}\n"
                         f"hint: `lit-scsdpo fit --help` lists every option; {TRACEBACK_ENV}=1 shows the parser's "
                         f"full message\n")
        sys.exit(2)


class RunConfigFile(SaveConfigCallback):
    """``config.yaml`` in the run folder. A run in a new folder writes it at start, as
    Lightning does; a resume into the run's own folder rewrites it only at the end of its first
    completed step, so a launch that did not train never replaces the record of how the
    checkpoint was trained."""

    _deferred = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:  # noqa: D102
        if self.already_saved:
            return
        path = os.path.join(trainer.log_dir, self.config_filename)
        exists = trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(path))
        if exists and stage == "fit":
            self._deferred = True
            return
        super().setup(trainer, pl_module, stage)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:  # noqa: D102
        if not self._deferred:
            return
        self._deferred, self.already_saved = False, True
        if trainer.is_global_zero:
            path = os.path.join(trainer.log_dir, self.config_filename)
            self.parser.save(self.config, path + ".tmp", skip_none=False, overwrite=True, multifile=self.multifile)
            os.replace(path + ".tmp", path)


def _instantiate_datamodule(data_config: Any) -> RolloutDataModule:
    """The DataModule alone, from its configuration (before the model, whose weights load in
    its constructor)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(RolloutDataModule, "data")
    cfg = parser.parse_object({"data": launch.plain(data_config)})
    return parser.instantiate_classes(cfg).data


class RLCLI(LightningCLI):
    _ckpt_meta: Optional[dict[str, Any]] = None
    _run_config: Optional[dict[str, Any]] = None
    _checked_datamodule: Optional[RolloutDataModule] = None

    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument("--threads", type=int, default=0,
                            help="torch CPU threads (0: leave torch's default)")
        parser.add_argument("--weights_from", type=Optional[str], default=None,
                            help="fit: start a NEW run from this checkpoint's policy weights (a .ckpt file or "
                                 "sharded folder), with the configuration given here: fresh optimizer, schedule, "
                                 "sampler and log folder; the SDPO teacher / GRPO reference start from these "
                                 "weights. To continue the same run, use --ckpt_path")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before anything loads. ``fit``: a resume of the same run (the
        configuration is compared in :meth:`instantiate_classes`); ``validate`` / ``test``: the
        checkpoint's model configuration replaces the given one (Lightning's behaviour), said."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        config = self.config[sub]
        ckpt = config.get("ckpt_path")
        if not ckpt:
            return
        self._ckpt_meta = launch.read_checkpoint_meta(str(ckpt))
        if sub == "fit":
            return
        given = launch.plain(config.get("model"))
        _say(launch.evaluation_note(sub, self._ckpt_meta, {"model": given}, str(ckpt)))
        super()._parse_ckpt_path()

    def _config_dump(self) -> dict[str, Any]:
        dumped = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml"))
        dumped = dumped.get(self.subcommand, dumped) if self.subcommand else dumped
        return {k: v for k, v in dumped.items() if k not in launch.NOT_COMPARED}

    def instantiate_classes(self) -> None:  # noqa: D102
        if self.subcommand in ("fit", "validate", "test"):
            self._checked_datamodule = self._preflight(self.subcommand)
        super().instantiate_classes()
        if self._checked_datamodule is not None:
            self.datamodule = self._checked_datamodule  # the one whose splits were read and checked

    def _preflight(self, sub: str) -> RolloutDataModule:
        """Everything that can be checked without the weights (``lit_scsdpo.launch``)."""
        config = self.config[sub]
        launch.check_hardware(launch.plain(config.get("trainer") or {}), sub)
        weights_from, ckpt = config.get("weights_from"), config.get("ckpt_path")
        if weights_from and sub != "fit":
            raise launch.LaunchError(f"--weights_from is an option of fit (a new run); {sub} evaluates --ckpt_path")
        if weights_from and ckpt:
            raise launch.LaunchError("give --ckpt_path (resume the same run) or --weights_from (a new run from its "
                                     "weights), not both")
        if weights_from:
            launch.read_checkpoint_meta(str(weights_from), "--weights_from")
        self._run_config = self._config_dump()
        if sub == "fit" and ckpt and self._ckpt_meta is not None:
            for note in launch.check_resume(self._ckpt_meta, self._run_config, str(ckpt)):
                _say(note)
        data = config.get("data")
        plain_data = launch.plain(data) if data is not None else {}
        for name, values in [("data.sampling", plain_data.get("sampling")),
                             ("data.evaluation.sampling", (plain_data.get("evaluation") or {}).get("sampling"))]:
            if isinstance(values, dict):
                SamplingConfig.check_values(values, name)
        dm = _instantiate_datamodule(data)
        model = config.get("model")
        cls = _import(str(model.class_path)) if model is not None and model.get("class_path") else PolicyOptimization
        init_args = launch.plain(model.get("init_args") or {}) if model is not None else {}
        required = cls.required_group_size(init_args) if hasattr(cls, "required_group_size") else 1
        dm.check_before_weights(sub, required, cls.__name__)
        return dm

    def after_instantiate_classes(self) -> None:  # noqa: D102
        if self.model is None:
            return
        self.model.run_config = self._run_config
        weights_from = self.config[self.subcommand].get("weights_from") if self.subcommand else None
        if weights_from:
            from .checkpoints import load_checkpoint

            self.model.load_policy_weights(load_checkpoint(str(weights_from), with_optimizer=False)["state_dict"])
            _say(f"fit: a new run from the policy weights of {weights_from} (optimizer, schedule and sampler fresh)")

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
                # read once, before anything loaded (_parse_ckpt_path): the loops and the step
                state = self._ckpt_meta or launch.read_checkpoint_meta(str(ckpt))
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
        _STATE["training_started"] = True
        self._print_log_dir("training")

    def before_validate(self) -> None:  # noqa: D102
        _STATE["training_started"] = True

    def after_validate(self) -> None:  # noqa: D102
        self._print_log_dir("validation done")

    def before_test(self) -> None:  # noqa: D102
        _STATE["training_started"] = True

    def after_test(self) -> None:  # noqa: D102
        self._print_log_dir("test done")

    def after_fit(self) -> None:  # noqa: D102
        self._print_log_dir("done")
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or ""
        if ckpt and self.trainer.is_global_zero:
            print(f"[lit-scsdpo] last checkpoint: {ckpt}\n", flush=True)


def run(args: list[str] | None = None) -> RLCLI:
    """Parse ``args`` (default: the command line), run the subcommand, return the CLI object."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _silence_warnings()
    _quiet_progress_bars()
    return_freed_memory_to_os()
    return RLCLI(
        PolicyOptimization,
        RolloutDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=RunConfigFile,
        save_config_kwargs={"overwrite": True},
        parser_class=_Parser,
        auto_configure_optimizers=False,  # manual optimisation: model.init_args.optim
        args=args,
    )


def _quiet_progress_bars() -> None:
    """No weight-loading or split-generation bars: the CLI prints its own progress."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)

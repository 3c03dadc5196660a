"""``lit-scsdpo``: LightningCLI over the policy-optimisation modules and the rollout DataModule.

    lit-scsdpo fit --config configs/tiny/scsdpo.yaml
    lit-scsdpo validate --config configs/tiny/scsdpo.yaml --ckpt_path <ckpt>
    lit-scsdpo fit --print_config --config configs/tiny/sdpo.yaml

The module is chosen by class (``model.class_path``: ``lit_scsdpo.GRPO`` or ``lit_scsdpo.SDPO``
or your own subclass of ``PolicyOptimization``); SC-SDPO is SDPO plus the
``lit_scsdpo.callbacks.DifficultyWeighting`` callback. One training epoch is one rollout batch.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI

from .data import RolloutDataModule
from .module import PolicyOptimization

TRAINER_DEFAULTS = {
    "reload_dataloaders_every_n_epochs": 1,  # fresh on-policy rollouts every epoch
    "log_every_n_steps": 1,
    "num_sanity_val_steps": 0,
}


class RLCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:  # noqa: D102
        parser.add_argument("--threads", type=int, default=0,
                            help="torch CPU threads (0: leave torch's default)")

    def before_instantiate_classes(self) -> None:  # noqa: D102
        threads = self.config.get(self.subcommand, self.config).get("threads", 0)
        if threads:
            import torch

            torch.set_num_threads(int(threads))

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
    return RLCLI(
        PolicyOptimization,
        RolloutDataModule,
        subclass_mode_model=True,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The ``lit-scsdpo`` console script (returns None, so its exit status is 0 on success)."""
    run(args)


if __name__ == "__main__":
    main()

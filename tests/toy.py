"""A test task whose reward a random-init tiny model can earn: the arithmetic questions, but a
response is "correct" iff it contains a digit. Gives a spread of pass rates at G=4-8 so that
every branch of SDPO / SC-SDPO / GRPO runs in tests without a pretrained model."""

from typing import Any

from lit_scsdpo.data import EvaluationConfig
from lit_scsdpo.tasks import ArithmeticTask, Score


class DigitTask(ArithmeticTask):
    def score(self, completion: str, row: dict[str, Any]) -> Score:
        digits = [c for c in completion if c.isdigit()]
        ok = bool(digits)
        return Score(reward=float(ok), pred=digits[0] if ok else None,
                     feedback="" if ok else "no digit in your response", format_ok=ok)


class CrashingTask(ArithmeticTask):
    """A verifier that crashes on every third call: the run must survive and count it."""

    calls = 0

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        CrashingTask.calls += 1
        if CrashingTask.calls % 3 == 0:
            raise RuntimeError("verifier bug")
        return super().score(completion, row)


def fit_briefly(model, tmp_path, epochs: int, train_size: int = 16):
    """Fit ``model`` for a few epochs on DigitTask (B=4, G=4, 8 new tokens), no logger,
    no checkpoints, no validation; returns the trainer."""
    import lightning.pytorch as pl

    from lit_scsdpo import RolloutDataModule
    from lit_scsdpo.rollout import SamplingConfig

    dm = RolloutDataModule(DigitTask(train_size=train_size, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8),
                           evaluation=EvaluationConfig(samples=2))
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=epochs, reload_dataloaders_every_n_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, limit_val_batches=0)
    trainer.fit(model, dm)
    return trainer

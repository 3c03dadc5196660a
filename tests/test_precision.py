"""Precision and strategy defects from the scale-out review, each pinned by a test that failed
before its fix: bf16 weights that did not learn, half-precision training accepted silently,
FSDP1 accepted (its precision plugin refuses the norm clipping every step does), and activation
checkpointing that never ran (the policy trained in eval mode)."""

import lightning.pytorch as pl
import pytest
import torch

from lit_scsdpo import SDPO, OptimConfig, RolloutDataModule, sharding
from lit_scsdpo.assets import resolve_model_path
from lit_scsdpo.rollout import SamplingConfig

from .toy import DigitTask

MODEL = resolve_model_path("asset:tiny-qwen3")


def fit(model, precision="32-true", epochs=1, callbacks=()):
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=2, test_size=2), questions_per_step=2,
                           rollouts_per_question=4, micro_batch_questions=1, sampling=SamplingConfig(1.0, 1.0, 6))
    trainer = pl.Trainer(log_every_n_steps=1, accelerator="cpu", devices=1, precision=precision, max_epochs=epochs,
                         reload_dataloaders_every_n_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(model, dm)
    return trainer


def test_bf16_checkpoint_trains_fp32_master_weights_and_teacher():
    """Before: torch_dtype bfloat16 trained bf16 parameters; AdamW updates at lr 1e-5 rounded
    away (0 of 1,000 weights changed). Now the weights are upcast at fit (lossless for a bf16
    checkpoint) and bf16 is the compute dtype of bf16-mixed."""
    torch.manual_seed(0)
    model = SDPO(MODEL, torch_dtype="bfloat16", optim=OptimConfig(lr=1e-5, warmup_steps=0, weight_decay=0.0))
    start = {k: v.float().clone() for k, v in model.policy.state_dict().items()}
    fit(model, precision="bf16-mixed", epochs=2)
    assert {p.dtype for p in model.policy.parameters()} == {torch.float32}
    assert {p.dtype for p in model.teacher.weights.parameters()} == {torch.float32}
    assert model.optimizers().optimizer.defaults["fused"]  # AdamW's fused kernel (fp32 master weights)
    layer = model.policy.model.layers[0].mlp.up_proj.weight
    changed = (layer != start["model.layers.0.mlp.up_proj.weight"]).float().mean().item()
    assert changed > 0.9  # bf16 storage at lr 1e-5 changed ~0 of them


@pytest.mark.parametrize("precision", ["bf16-true"])
def test_half_precision_weights_are_refused_for_training(precision):
    model = SDPO(MODEL)
    with pytest.raises(ValueError, match="trainer.precision='bf16-true'.*bf16-mixed"):
        fit(model, precision=precision)


def test_fsdp1_strategy_is_refused_with_the_fsdp2_flag():
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ValueError, match="--trainer.strategy fsdp2"):
        sharding.check_strategy(FSDPStrategy())
    sharding.check_strategy(sharding.FSDP2Strategy())  # accepted


def test_fsdp2_is_a_trainer_strategy_flag():
    trainer = pl.Trainer(log_every_n_steps=1, accelerator="cpu", devices=2, strategy="fsdp2", logger=False)
    assert isinstance(trainer.strategy, sharding.FSDP2Strategy)
    assert trainer.strategy._tensor_parallel_size == 1


def test_decoder_layers_are_found_from_the_model():
    from transformers import AutoModelForCausalLM, GPT2Config

    qwen = AutoModelForCausalLM.from_pretrained(MODEL)
    assert {c.__name__ for c in sharding.decoder_layer_classes(qwen)} == {"Qwen3DecoderLayer"}
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    gpt2._no_split_modules = None  # the fallback: the longest list of identical blocks
    assert {c.__name__ for c in sharding.decoder_layer_classes(gpt2)} == {"GPT2Block"}


class _CountLayerForwards(pl.Callback):
    """Forwards of decoder layer 0's first projection with autograd on (the student forward, and
    its recompute in backward when checkpointing), per micro-batch. Inside the layer:
    transformers checkpoints the layer's ``forward``, so hooks on the layer itself run once
    either way; and the first op, as torch's recompute may stop early once it has what it needs."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_start(self, trainer, module) -> None:
        module.policy.model.layers[0].self_attn.q_proj.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        if torch.is_grad_enabled():
            self.counts[-1] += 1

    def on_train_batch_start(self, *args) -> None:
        self.counts.append(0)


@pytest.mark.parametrize("checkpointing, shared, forwards",
                         [(False, False, 1), (True, False, 2), (False, True, 2), (True, True, 3)])
def test_activation_checkpointing_recomputes_each_layer(checkpointing, shared, forwards):
    """Before: from_pretrained returns eval mode, Lightning keeps module modes, and transformers
    checkpoints only in train mode: ``gradient_checkpointing: true`` did nothing. The packed
    student is one forward (+1 recompute); the shared-prefix student is the prompts' forward,
    kept, and the responses' forward (+1 recompute: checkpointing stays on for the responses)."""
    counter = _CountLayerForwards()
    model = SDPO(MODEL, gradient_checkpointing=checkpointing)
    model.share_student_prefix = shared
    fit(model, callbacks=[counter])
    assert counter.counts and set(counter.counts) == {forwards}
    assert model.policy.training and not model.teacher.weights.training

"""Reliability (issue 11): exact resume, preemption by a real signal, skipped empty steps,
off-policy old log-probs, the EMA once per rollout batch, fresh rollouts with a plain Trainer,
early argument errors, faults counted not fatal. Each test fails on the code before the fix."""

import logging
import os
import signal
import time

import lightning.pytorch as pl
import pytest
import torch

from lit_scsdpo import GRPO, SDPO, OptimConfig, RolloutDataModule, interrupt
from lit_scsdpo.callbacks import DifficultyWeighting
from lit_scsdpo.callbacks.checkpoint import RunCheckpoint
from lit_scsdpo.config import DistillationConfig, GRPOConfig, RepromptConfig, TeacherConfig
from lit_scsdpo.data import EvaluationConfig
from lit_scsdpo.rollout import SamplingConfig
from lit_scsdpo.tasks import ArithmeticTask, Score

from .test_module import batch_of, make_rollouts
from .toy import DigitTask


class Recorder(pl.Callback):
    """(global step, train/loss, rollout/reward_mean, response-id hash) per epoch."""

    def __init__(self):
        self.rows = []

    def on_train_epoch_end(self, trainer, pl_module):
        m, r = trainer.logged_metrics, trainer.datamodule.current
        self.rows.append((trainer.global_step, float(m["train/loss"]), float(m["rollout/reward_mean"]),
                          hash(tuple(map(tuple, r.response_ids)))))


class SignalTask(DigitTask):
    """DigitTask whose verifier sends a real signal to this process at its ``at``-th call."""

    def __init__(self, at=None, signum=signal.SIGTERM, **kw):
        super().__init__(**kw)
        self.at, self.signum, self.calls = at, signum, 0

    def score(self, completion, row):
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().score(completion, row)


def fit(tmp, model_path, epochs, task=None, ckpt=None, every=2, updates=1):
    pl.seed_everything(0)
    model = SDPO(model_path, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    dm = RolloutDataModule(task or DigitTask(train_size=64, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, updates_per_batch=updates, micro_batch_questions=2,
                           sampling=SamplingConfig(1.0, 1.0, 8), evaluation=EvaluationConfig(samples=2))
    rec = Recorder()
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp, check_val_every_n_epoch=3, num_sanity_val_steps=-1,
                         callbacks=[rec, DifficultyWeighting(), RunCheckpoint(dirpath=str(tmp / "ck"),
                                                                              every_n_epochs=every)])
    trainer.fit(model, dm, ckpt_path=ckpt)
    return rec.rows, trainer, model


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_path, tmp_path_factory):
    return fit(tmp_path_factory.mktemp("a"), tiny_model_path, 6)[0]


def test_resume_is_exact(tiny_model_path, tmp_path, uninterrupted):
    """A run stopped after step 4 and resumed from last.ckpt logs the same losses, rewards and
    rollouts as the uninterrupted run (before: Lightning's second train_dataloader call on
    resume drew one extra batch, so every later step was one batch ahead)."""
    first = fit(tmp_path, tiny_model_path, 4)[0]
    assert first == uninterrupted[:4]
    resumed = fit(tmp_path, tiny_model_path, 6, ckpt=str(tmp_path / "ck" / "last.ckpt"))[0]
    assert resumed == uninterrupted[4:]
    assert sorted(os.listdir(tmp_path / "ck")) == ["last.ckpt"]  # one file per save, no temporaries


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_step_saves_last_completed_step_and_resumes_exactly(tiny_model_path, tmp_path, uninterrupted,
                                                                       signum):
    """A real SIGTERM/SIGINT while step 4's rollouts are being scored: the partial step is
    abandoned, the state at the end of step 3 is saved (not a checkpoint interval), the process
    exit status is 128+signal, and resuming reproduces the uninterrupted run exactly."""
    # 8 sanity-validation calls (4 questions × 2), then 16 per step: the 5th call of step 4
    task = SignalTask(at=8 + 3 * 16 + 5, signum=signum, train_size=64, val_size=4, test_size=4)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        fit(tmp_path, tiny_model_path, 6, task=task, every=100)
    assert info.value.code == 128 + signum
    assert isinstance(info.value, interrupt.Preempted)
    assert time.perf_counter() - t0 < 60
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["RolloutDataModule"]["draws"] == 3
    resumed = fit(tmp_path, tiny_model_path, 6, ckpt=str(tmp_path / "ck" / "last.ckpt"))[0]
    assert resumed == uninterrupted[3:]
    assert signal.getsignal(signal.SIGTERM) is not None and interrupt.stop_requested() is None


def test_signal_during_validation_keeps_the_step(tiny_model_path, tmp_path):
    """Signalled while validating after step 3's update: validation is skipped and step 3 saved."""
    task = SignalTask(at=8 + 3 * 16 + 3, train_size=64, val_size=4, test_size=4)  # the 3rd call of step 3's validation
    with pytest.raises(SystemExit) as info:
        fit(tmp_path, tiny_model_path, 6, task=task, every=100)
    assert info.value.code == 143
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["RolloutDataModule"]["draws"] == 3


def test_plain_trainer_gets_fresh_rollouts_every_epoch(tiny_model_path, tmp_path):
    """With a plain pl.Trainer (reload_dataloaders_every_n_epochs=0) each epoch used the same
    rollouts; now the DataModule makes Lightning reload, or refuses any other value."""
    model = GRPO(tiny_model_path)
    dm = RolloutDataModule(DigitTask(train_size=32, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8))
    seen = []  # the objects themselves: a freed object's id() can be reused by the next one

    class Seen(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.datamodule.current)

    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[Seen()])
    trainer.fit(model, dm)
    assert len({id(r) for r in seen}) == 3 and dm.sampler.draws == 3
    bad = pl.Trainer(log_every_n_steps=1, max_epochs=1, reload_dataloaders_every_n_epochs=2, logger=False, enable_checkpointing=False,
                     limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs must be 1"):
        bad.fit(GRPO(tiny_model_path), RolloutDataModule(DigitTask(train_size=8, val_size=2, test_size=2),
                                                         questions_per_step=4, rollouts_per_question=4))


@pytest.mark.parametrize("cls", [GRPO, SDPO])
def test_one_rollout_per_question_is_refused(tiny_model_path, tmp_path, cls):
    dm = RolloutDataModule(DigitTask(train_size=8, val_size=2, test_size=2), questions_per_step=4,
                           rollouts_per_question=1)
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(ValueError, match="data.rollouts_per_question must be >= 2"):
        trainer.fit(cls(tiny_model_path), dm)


class ZeroTask(DigitTask):
    """Every response succeeds: p̂ = 1 everywhere, so SC-SDPO's weights are all 0."""

    def score(self, completion, row):
        return Score(1.0, "1", "", True)


def test_step_with_nothing_to_learn_is_skipped(tiny_model_path, tmp_path):
    """All SC-SDPO weights 0: no AdamW step (weight decay, moments), no LR-schedule advance, no
    EMA; counted. Before: opt.step() ran and weight decay moved θ and the teacher."""
    model = SDPO(tiny_model_path, optim=OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=5))
    before = [p.detach().clone() for p in model.policy.parameters()]
    teacher_before = [p.detach().clone() for p in model.teacher.weights.parameters()]
    dm = RolloutDataModule(ZeroTask(train_size=16, val_size=2, test_size=2), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 6))
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[DifficultyWeighting()])
    trainer.fit(model, dm)
    assert trainer.global_step == 0 and model.accounting.counters["skipped_steps"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.policy.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, model.teacher.weights.parameters()))
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 0
    assert trainer.optimizers[0].state == {} or all(not s for s in trainer.optimizers[0].state.values())


def test_ema_once_per_rollout_batch_and_offpolicy_old_logprobs(tiny_model_path, tmp_path, monkeypatch):
    """updates_per_batch=2: two optimizer steps per rollout batch, one EMA update after the
    second (before: after each); SDPO's IS ratio uses the sampling log-probs (before: ≡ 1)."""
    from lit_scsdpo import losses as L

    updates, ratios = [], []
    real_ratio = L.importance_ratio

    def spy_ratio(logp, old, clip):
        ratios.append((logp.detach() - old).abs().max().item())
        return real_ratio(logp, old, clip)

    monkeypatch.setattr(L, "importance_ratio", spy_ratio)
    model = SDPO(tiny_model_path, optim=OptimConfig(lr=1e-2, warmup_steps=0))
    real_update = model.teacher.update
    monkeypatch.setattr(model.teacher, "update", lambda: (updates.append(model.trainer.global_step), real_update()))
    dm = RolloutDataModule(DigitTask(train_size=32, val_size=2, test_size=2), questions_per_step=4,
                           rollouts_per_question=4, updates_per_batch=2, micro_batch_questions=2,
                           sampling=SamplingConfig(1.0, 1.0, 8))
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, dm)
    assert trainer.global_step == 4 and updates == [2, 4]
    # the second step of a batch runs on updated weights: its ratio is not 1
    assert max(ratios) > 1e-4


def test_token_mean_normaliser_counts_only_rows_with_a_teacher(tiny_model_path):
    """A reprompt that cannot fit masks its row; the token-mean denominator must not count it
    (before: it counted every row of the self-distillation mask)."""
    from lit_scsdpo.teacher import self_distillation_mask

    model = SDPO(tiny_model_path, loss_agg_mode="token-mean",
                 reprompt=RepromptConfig(max_teacher_prompt_tokens=12))
    r = make_rollouts(model.tokenizer, [1, 1, 0, 0] + [1, 0, 0, 0])
    batch = batch_of(r, pad=model.tokenizer.pad_token_id)
    sd = self_distillation_mask(batch.step.rewards.tolist(), batch.step.group_ids.tolist(), [False] * 8)
    assert sum(sd) == 7  # every row but question 2's only success has a demonstration ...
    prompts = model.step_teacher_prompts(batch)[0]
    assert all(p is None for p in prompts)  # ... but no teacher prompt fits in 12 tokens
    assert model.step_sd_mask_lengths(batch).sum() == 0
    wide = SDPO(tiny_model_path, loss_agg_mode="token-mean")
    lengths = wide.step_sd_mask_lengths(batch)
    assert [bool(n) for n in lengths] == sd


def test_chunked_logits_refuse_soft_capped_models(tiny_model_path):
    from lit_scsdpo.policy import check_logits_are_head

    model = SDPO(tiny_model_path).policy
    check_logits_are_head(model)  # plain lm_head: fine
    head = model.get_output_embeddings()
    real_forward = model.forward

    def capped(*a, **k):
        out = real_forward(*a, **k)
        out.logits = 30 * torch.tanh(out.logits / 30) * 1.5
        return out

    model.forward = capped
    with pytest.raises(ValueError, match="logits_chunk_size"):
        check_logits_are_head(model)
    assert head is model.get_output_embeddings()


@pytest.mark.parametrize("kwargs,match", [
    (lambda: {"distillation": DistillationConfig(topk=0)}, "model.distillation.topk must be >= 1"),
    (lambda: {"distillation": DistillationConfig(alpha=2.0)}, r"model.distillation.alpha must be in \[0, 1\]"),
    (lambda: {"teacher": TeacherConfig(rate=1.5)}, "model.teacher.rate"),
    (lambda: {"distillation": DistillationConfig(is_clip=0.0)}, "model.distillation.is_clip"),
    (lambda: {"reprompt": RepromptConfig(max_teacher_prompt_tokens=0)}, "max_teacher_prompt_tokens"),
    (lambda: {"torch_dtype": "fp8"}, "torch_dtype"),
    (lambda: {"optim": OptimConfig(lr=-1.0)}, "model.optim.lr"),
    (lambda: {"grpo": GRPOConfig(eps_low=1.5)}, "model.grpo.eps_low"),
])
def test_arguments_fail_before_weights_load(kwargs, match):
    """A nonexistent model path proves that the check runs before any weights load (the grouped
    options fail where they are defined, before the module is even built)."""
    with pytest.raises(ValueError, match=match):
        SDPO("/nonexistent/model", **kwargs())


def test_bad_model_path_is_one_line():
    with pytest.raises(FileNotFoundError) as info:
        GRPO("/nonexistent/model")
    assert "model.model_name_or_path='/nonexistent/model'" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OSError) as info:
        GRPO("no-such-org-xyz/no-such-model")  # hub-id form; no network here
    assert "model.model_name_or_path" in str(info.value) and "\n" not in str(info.value)


class HangingTask(ArithmeticTask):
    def score(self, completion, row):
        if row["uid"].endswith("1"):
            time.sleep(30)
        if row["uid"].endswith("2"):
            raise KeyError("bug")
        return super().score(completion, row)


def test_verifier_faults_are_counted_and_logged_once(tiny_model_path, caplog):
    from .test_data import attach

    dm = attach(RolloutDataModule(HangingTask(train_size=40, val_size=2, test_size=2), questions_per_step=20,
                                  rollouts_per_question=2, sampling=SamplingConfig(1.0, 1.0, 4),
                                  score_timeout=0.2), GRPO(tiny_model_path))
    dm.setup("fit")
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="lit_scsdpo.data"):
        r = dm.rollout([dm.train_set[i] for i in range(20)], 2, dm.sampling)
    assert time.perf_counter() - t0 < 20
    assert r.stats["score_timeouts"] == 4 and r.stats["score_errors"] == 4  # uids ...01, ...11 and ...02, ...12
    assert len([m for m in caplog.messages if "took more than" in m]) == 1
    assert len([m for m in caplog.messages if "KeyError" in m]) == 1
    with pytest.raises(ValueError, match="data.score_timeout"):
        RolloutDataModule(DigitTask(), score_timeout=0)


DDP_SCRIPT = r'''
import os, sys, json
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
import lightning.pytorch as pl
from lit_scsdpo import GRPO, OptimConfig, RolloutDataModule
from lit_scsdpo.rollout import SamplingConfig
from tests.toy import DigitTask


class NaNOnRank1(GRPO):
    """A non-finite loss on rank 1 only, in the 2nd micro-batch of step 2."""
    calls = 0

    def compute_loss(self, batch):
        loss, metrics = super().compute_loss(batch)
        NaNOnRank1.calls += 1
        if self.global_rank == 1 and NaNOnRank1.calls == 4:
            loss = loss * float("nan")
        return loss, metrics


pl.seed_everything(0)
model = NaNOnRank1({model!r}, optim=OptimConfig(lr=1e-3, warmup_steps=0))
dm = RolloutDataModule(DigitTask(train_size=32, val_size=2, test_size=2), questions_per_step=4,
                       rollouts_per_question=4, micro_batch_questions=1, sampling=SamplingConfig(1.0, 1.0, 6))
trainer = pl.Trainer(log_every_n_steps=1, accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0)
trainer.fit(model, dm)
total = sum(p.detach().double().sum().item() for p in model.policy.parameters())
with open(os.path.join({out!r}, f"rank{{trainer.global_rank}}.json"), "w") as f:
    json.dump({{"step": trainer.global_step, "counters": model.accounting.counters, "params": total}}, f)
'''


def test_ddp_nonfinite_on_one_rank_skips_the_step_on_both(tiny_model_path, tmp_path):
    """Before: the rank with the NaN skipped its backward alone (DDP's gradient all-reduce then
    waits forever on the other rank) and the step still applied a partial update. Now both
    ranks skip the whole step and stay identical."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_SCRIPT.format(root=root, model=str(tiny_model_path), out=str(tmp_path)))
    env = {**os.environ, "PYTHONPATH": root, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [2, 2]  # 3 rollout batches, the NaN one skipped on both
    assert [r["counters"]["skipped_steps"] for r in ranks] == [1, 1]
    assert ranks[0]["params"] == ranks[1]["params"]


def test_consecutive_nonfinite_steps_stop_the_run_after_saving(tiny_model_path, tmp_path):
    """From step 3 on every loss is NaN: steps 3 and 4 are skipped, then the run stops with
    TrainingDiverged, and last.ckpt holds the last good state (step 2), not a later one."""
    from lit_scsdpo.module import TrainingDiverged

    class NaNFromStep3(GRPO):
        def compute_loss(self, batch):
            loss, metrics = super().compute_loss(batch)
            return (loss * float("nan") if self.trainer.current_epoch >= 2 else loss), metrics

    model = NaNFromStep3(tiny_model_path, max_nonfinite_steps=2, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    dm = RolloutDataModule(DigitTask(train_size=32, val_size=2, test_size=2), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 6))
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=10, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[RunCheckpoint(dirpath=str(tmp_path), every_n_epochs=100)])
    with pytest.raises(TrainingDiverged, match="model.max_nonfinite_steps=2"):
        trainer.fit(model, dm)
    ckpt = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and model.accounting.counters["skipped_steps"] == 2
    saved = ckpt["state_dict"]["policy.model.embed_tokens.weight"]
    assert torch.equal(saved, model.policy.model.embed_tokens.weight.detach())  # no update since step 2


def test_teacher_prompt_cache_is_not_reused_across_batches(tiny_model_path):
    """Two hand-made batches with the same step id: the second must get its own teacher
    prompts (found by the pin tests: the cache was keyed on the step id alone)."""
    model = SDPO(tiny_model_path)
    pad = model.tokenizer.pad_token_id
    _, active, _ = model.teacher_inputs(batch_of(make_rollouts(model.tokenizer, [1, 1, 0, 0]), pad=pad))
    assert active.tolist() == [True, True, True, True]
    _, active, _ = model.teacher_inputs(batch_of(make_rollouts(model.tokenizer, [0, 0, 0, 0]), pad=pad))
    assert active.tolist() == [False, False, False, False]


def test_checkpoints_stream_to_disk_atomically(tmp_path):
    """RunCheckpoint installs StreamingCheckpointIO: torch.save into a temporary file, then a
    rename. Lightning's TorchCheckpointIO serialises into an in-memory buffer first (the
    checkpoint's size again in RAM: +2 GB at 135M parameters, measured). A failing save leaves
    the previous checkpoint intact and no temporary file."""
    import tracemalloc

    from lightning.fabric.plugins import TorchCheckpointIO

    from lit_scsdpo.callbacks import RunCheckpoint
    from lit_scsdpo.callbacks.checkpoint import StreamingCheckpointIO

    trainer = pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RunCheckpoint(dirpath=str(tmp_path))])
    for cb in trainer.callbacks:
        if isinstance(cb, RunCheckpoint):
            cb.setup(trainer, pl.LightningModule(), "fit")
    assert type(trainer.strategy.checkpoint_io) is StreamingCheckpointIO

    state = {"w": torch.randn(8 * 1024 * 1024)}  # 32 MiB
    peaks = {}
    for io in (StreamingCheckpointIO(), TorchCheckpointIO()):
        tracemalloc.start()
        io.save_checkpoint(state, tmp_path / f"{type(io).__name__}.ckpt")
        peaks[type(io).__name__] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert torch.equal(torch.load(tmp_path / f"{type(io).__name__}.ckpt")["w"], state["w"])
    assert peaks["StreamingCheckpointIO"] < 4 < 32 < peaks["TorchCheckpointIO"], peaks

    target = tmp_path / "last.ckpt"
    StreamingCheckpointIO().save_checkpoint(state, target)
    with pytest.raises(Exception):
        StreamingCheckpointIO().save_checkpoint({"bad": lambda: 0}, target)  # a lambda cannot be pickled
    assert torch.equal(torch.load(target)["w"], state["w"])
    assert not list(tmp_path.glob("*.tmp"))

"""Evaluation and curriculum callbacks: values, and TensorBoard events read back."""

import csv
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_scsdpo import SDPO, DifficultyWeighting, RolloutDataModule
from lit_scsdpo.callbacks import CurriculumLogger, MajorityVoteEvaluation
from lit_scsdpo.callbacks.curriculum import colormap, effective_sample_size
from lit_scsdpo.config import DistillationConfig
from lit_scsdpo.data import EvaluationConfig, Rollouts
from lit_scsdpo.rollout import SamplingConfig
from lit_scsdpo.tasks import Score

from .toy import DigitTask


def test_effective_sample_size_and_stats():
    assert effective_sample_size(torch.ones(8)) == pytest.approx(8.0)
    assert effective_sample_size(torch.tensor([2.0, 2.0, 0.0, 0.0])) == pytest.approx(2.0)
    assert effective_sample_size(torch.zeros(3)) == 0.0
    cl = CurriculumLogger(pass_rate_bins=2)
    stats = cl.epoch_stats(torch.tensor([0.0, 0.25, 0.75, 1.0]), torch.tensor([0.0, 2.0, 2.0, 0.0]))
    assert stats["curriculum/frac_p0"] == 0.25 and stats["curriculum/frac_p1"] == 0.25
    assert stats["curriculum/frac_mixed"] == 0.5
    assert stats["curriculum/weight_by_p/0.000-0.500"] == pytest.approx(1.0)  # p̂ 0 and 0.25
    assert stats["curriculum/weight_by_p/0.500-1.000"] == pytest.approx(1.0)  # p̂ 0.75 and 1


def test_colormap_and_heatmaps():
    img = colormap(np.array([[0.0, 1.0], [np.nan, 0.5]]))
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert tuple(img[1, 0]) == (40, 40, 40)  # missing cell
    assert img[0, 1].sum() > img[0, 0].sum()  # bright = high pass rate
    cl = CurriculumLogger()
    cl.history = [
        {"epoch": 0, "step": 1, "uid": "a", "data_source": "L0", "p_hat": 1.0, "weight": 0.0},
        {"epoch": 0, "step": 1, "uid": "b", "data_source": "L1", "p_hat": 0.0, "weight": 0.0},
        {"epoch": 1, "step": 2, "uid": "a", "data_source": "L0", "p_hat": 0.5, "weight": 1.0},
    ]
    by_source, by_question = cl.heatmaps()
    assert by_source.shape == (2, 2) and by_source[0, 1] == 0.5 and np.isnan(by_source[1, 1])
    assert by_question.shape == (2, 2)
    assert by_question[0, 0] == 0.0 and by_question[1].tolist() == [1.0, 0.5]  # hard questions first


def rollouts_for_eval():
    # 2 questions × 4 samples, two sources
    rewards = [1, 0, 1, 1, 0, 0, 1, 0]
    preds = ["5", "4", "5", "5", None, "7", "3", "7"]
    scores = [Score(float(r), p, format_ok=p is not None) for r, p in zip(rewards, preds)]
    rows = [{"uid": "a", "data_source": "easy"}, {"uid": "b", "data_source": "hard"}]
    return Rollouts(rows, [[], []], [[1], [1]], [[1] * 3] * 8, [[0.0] * 3] * 8, [""] * 8, scores, 4)


def test_evaluation_values_by_hand():
    cb = MajorityVoteEvaluation(k=4)
    out = cb.compute(rollouts_for_eval(), ["easy", "hard"], torch.device("cpu"))
    assert out["easy"]["mean@4"] == pytest.approx(0.75) and out["hard"]["mean@4"] == pytest.approx(0.25)
    assert out["all"]["mean@4"] == pytest.approx(0.5)
    assert out["easy"]["maj@4_vote"] == 1.0  # "5" wins
    assert out["hard"]["maj@4_vote"] == 0.0  # "7" wins (twice), its first sample scores 0
    assert out["easy"]["pass@4"] == 1.0 and out["hard"]["pass@4"] == 1.0
    assert out["hard"]["format_rate"] == pytest.approx(0.75)
    assert out["all"]["response_length"] == pytest.approx(3.0)
    assert 0.0 <= out["hard"]["maj@4"] <= 1.0
    with pytest.raises(ValueError, match="data.evaluation.samples"):
        MajorityVoteEvaluation(k=8).compute(rollouts_for_eval(), ["easy", "hard"], torch.device("cpu"))


def read_events(log_dir):
    tags = {"scalars": set(), "histograms": set(), "images": set(), "tensors": set()}
    for ev in Path(log_dir).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"images": 0, "histograms": 0, "tensors": 0})
        acc.Reload()
        for kind in tags:
            tags[kind].update(acc.Tags().get(kind, []))
    return tags


def test_callbacks_write_tensorboard_events(tiny_model_path, tmp_path):
    torch.manual_seed(0)
    model = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10))
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=6, test_size=6, levels=[0, 1]),
                           questions_per_step=4, rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8),
                           evaluation=EvaluationConfig(samples=4, sampling=SamplingConfig(0.6, 0.95, 8)))
    curriculum = CurriculumLogger(heatmap_every_n_epochs=1)
    evaluation = MajorityVoteEvaluation()
    trainer = pl.Trainer(max_epochs=5, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=2,
                         logger=TensorBoardLogger(tmp_path, name="cb"), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                         callbacks=[DifficultyWeighting(), curriculum, evaluation])
    trainer.fit(model, dm)
    tags = read_events(tmp_path)
    for s in ["curriculum/frac_p0", "curriculum/frac_p1", "curriculum/frac_mixed", "curriculum/weight_ess",
              "val/all/mean@4", "val/all/maj@4", "val/all/maj@4_vote", "val/all/pass@4",
              "val/all/format_rate", "val/all/response_length", "val/arithmetic/L0/mean@4",
              "val/arithmetic/L1/maj@4", "val/all/best_mean@4"]:
        assert s in tags["scalars"], f"{s} missing; have {sorted(tags['scalars'])}"
    assert {"curriculum/pass_rate", "curriculum/weight"} <= tags["histograms"]
    assert {"curriculum/pass_rate_by_source", "curriculum/pass_rate_by_question"} <= tags["images"]
    assert any("curriculum/examples" in t for t in tags["tensors"])  # text summaries are tensors
    csv = Path(trainer.log_dir) / "curriculum.csv"
    lines = csv.read_text().splitlines()
    assert lines[0] == "epoch,step,uid,data_source,p_hat,weight" and len(lines) == 1 + 5 * 4
    assert len(curriculum.history) == 20
    # best-so-far is kept in the callback state (saved in checkpoints)
    assert evaluation.state_dict()["best"]["val/all/best_mean@4"] >= 0


def _has_text_pixels(img, rows, cols):
    """Greys (anti-aliased text): neither the white background, the black axes, nor a viridis colour."""
    region = img[rows, cols].reshape(-1, 3).astype(int)
    return bool(((region.min(1) < 200) & (region.max(1) > 0) & (region.max(1) - region.min(1) < 30)).any())


def test_heatmap_images_have_axes_and_colour_bar():
    from lit_scsdpo.callbacks.curriculum import render_heatmap

    values = np.array([[0.0, 0.5, 1.0, np.nan], [1.0, 1.0, 0.25, 0.0], [0.5, np.nan, 0.0, 1.0]])
    img = render_heatmap(values, ["1", "2", "3", "4"], ["L0", "L1", "L2"], y_title="data source")
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > 3 * 8 and img.shape[1] > 4 * 8  # cells drawn large, plus margins
    raw = colormap(values)
    # find the heatmap: the top-left cell's colour, scaled up; a black frame around it
    ys, xs = np.where((img == raw[0, 0]).all(-1))
    top, left = ys.min(), xs.min()
    assert (img[top - 1, left:left + 5] == 0).all() and (img[top:top + 5, left - 1] == 0).all()  # the axes
    assert _has_text_pixels(img, slice(0, None), slice(0, left - 6))  # y labels / title, left of the axis
    assert _has_text_pixels(img, slice(top + 3 * 4, None), slice(left, None))  # x labels below
    right = left
    while (img[top - 1, right] == 0).all():  # along the top of the frame
        right += 1
    assert right - left - 1 == 4 * (right - left - 1) // 4 >= 8  # four columns of equal width
    # colour bar right of the map: a vertical ramp from bright (p̂ = 1) at the top to dark (p̂ = 0)
    bright = colormap(np.array([[1.0]]))[0, 0]
    bar_cols = [x for x in range(right + 1, img.shape[1]) if (img[top, x] == bright).all()]
    assert bar_cols, "no colour bar"
    bottom = top
    while not (img[bottom + 1, bar_cols[0]] == 0).all():
        bottom += 1
    assert (img[bottom, bar_cols[0]] == colormap(np.array([[0.0]]))[0, 0]).all()
    assert bottom - top > 3 * 4  # as tall as the map

    cl = CurriculumLogger()
    cl.history = [
        {"epoch": 0, "step": 1, "uid": "a", "data_source": "L0", "p_hat": 1.0, "weight": 0.0},
        {"epoch": 1, "step": 2, "uid": "b", "data_source": "L1", "p_hat": 0.0, "weight": 0.0},
    ]
    by_source, by_question = cl.heatmap_images()
    assert by_source.shape[0] > 2 and by_source.shape[1] > 2 and by_question.shape[0] > 2


def test_heatmap_without_pillow_still_has_axes(monkeypatch):
    import sys

    from lit_scsdpo.callbacks.curriculum import render_heatmap

    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import ...` raises ImportError
    values = np.array([[0.0, 1.0], [0.5, np.nan]])
    img = render_heatmap(values, ["1", "2"], ["a", "b"], y_title="data source")
    ys, xs = np.where((img == colormap(values)[0, 0]).all(-1))  # the top-left cell (p̂ = 0)
    top, left = ys.min(), xs.min()
    assert (img[top:top + 5, left - 1] == 0).all()  # the y axis
    right = left
    while (img[top - 1, right] == 0).all():  # along the top of the frame
        right += 1
    assert right - left > 8
    bright = [x for x in range(right + 1, img.shape[1]) if (img[top, x] == colormap(values)[0, 1]).all()]
    assert bright, "no colour bar"
    assert not _has_text_pixels(img, slice(0, None), slice(0, left - 1))  # no text without Pillow


def test_evaluation_steps_baseline_and_test_stage(tiny_model_path, tmp_path, capsys):
    """val/* curves are at the optimizer step printed as `[validation] step N` (Lightning would
    use its count of micro-batches), the baseline before training is at step 0, and
    `trainer.test` logs test/<source>/... and prints the table."""
    torch.manual_seed(0)
    model = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10))
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=6, test_size=6, levels=[0, 1]),
                           questions_per_step=4, rollouts_per_question=4, micro_batch_questions=2,
                           sampling=SamplingConfig(1.0, 1.0, 8),
                           evaluation=EvaluationConfig(samples=4, sampling=SamplingConfig(0.6, 0.95, 8)))
    evaluation = MajorityVoteEvaluation()
    trainer = pl.Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=1,
                         num_sanity_val_steps=-1, logger=TensorBoardLogger(tmp_path, name="ev"),
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1, callbacks=[CurriculumLogger(heatmap_every_n_epochs=1), evaluation])
    trainer.fit(model, dm)
    out = capsys.readouterr().out
    assert "[validation] before training:" in out
    printed = [int(line.split("step ")[1].split(":")[0]) for line in out.splitlines()
               if line.startswith("[validation] step ")]
    assert printed == [1, 2]
    steps = {}
    for ev in Path(tmp_path).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in acc.Scalars(tag))
        for tag in acc.Tags()["images"]:
            assert all(e.width > 8 and e.height > 8 for e in acc.Images(tag))  # drawn with axes
    assert sorted(steps["val/all/mean@4"]) == [0, *printed]  # step 0: the baseline
    assert sorted(steps["val/arithmetic/L1/maj@4"]) == [0, *printed]
    assert sorted(steps["val/reward"]) == [0, *printed]  # the module's val metrics too
    assert sorted(steps["val/all/best_mean@4"]) == printed  # best-so-far: of the trained model only
    best = dict(evaluation.best)
    # each validation's per-question rows: successes out of k, averaging to the logged mean@k
    rows = list(csv.DictReader(open(Path(trainer.log_dir) / "val_per_question.csv")))
    by_step = {}
    for r in rows:
        assert 0 <= int(r["successes"]) <= int(r["k"]) == 4 and r["data_source"].startswith("arithmetic/")
        by_step.setdefault(int(r["step"]), []).append(int(r["successes"]) / 4)
    assert sorted(by_step) == [0, *printed] and all(len(v) == 6 for v in by_step.values())
    logged = {}
    for ev in Path(tmp_path).rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        if "val/all/mean@4" in acc.Tags()["scalars"]:
            logged.update({e.step: e.value for e in acc.Scalars("val/all/mean@4")})
    for step, values in by_step.items():
        assert sum(values) / len(values) == pytest.approx(logged[step], abs=1e-6)

    trainer.test(model, dm)
    out = capsys.readouterr().out
    assert "Evaluation per data source" in out and "arithmetic/L1" in out
    metrics = trainer.callback_metrics
    for key in ["test/all/mean@4", "test/all/maj@4", "test/all/pass@4", "test/arithmetic/L0/format_rate"]:
        assert key in metrics, f"{key} not logged; have {sorted(metrics)}"
    assert not any(k.startswith("test/") and "/best_" in k for k in metrics)
    assert evaluation.best == best  # the test run leaves the validation best alone


def test_step_progress_bar_counts_optimizer_steps(tiny_model_path, tmp_path):
    import io

    import rich

    from lit_scsdpo.callbacks import StepProgressBar

    torch.manual_seed(0)
    model = SDPO(tiny_model_path, distillation=DistillationConfig(topk=10))
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=2, micro_batch_questions=2,
                           sampling=SamplingConfig(1.0, 1.0, 6),
                           evaluation=EvaluationConfig(samples=2, sampling=SamplingConfig(1.0, 1.0, 6)))
    screen = io.StringIO()
    bar = StepProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 250})
    trainer = pl.Trainer(max_epochs=2, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=2,
                         num_sanity_val_steps=-1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1, callbacks=[bar, MajorityVoteEvaluation()])
    try:
        trainer.fit(model, dm)
    finally:
        rich.reconfigure()  # RichProgressBar reconfigures the global console
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.total, task.completed) == (2, 2)  # optimizer steps of the run, not batches of an epoch
    # sanity check, first rollout, step 1, rollout, step 2, validation, end
    assert bar.phases_seen == ["rollout", "validation", "rollout", "train", "rollout", "train", "validation", "done"]
    text = screen.getvalue()  # the last frame is drawn at the end (earlier ones depend on timing)
    assert "2/2 steps" in text and "s/step" in text and "eta 0:00:00" in bar.timing_text()
    assert "rollout/reward_mean" in text and "train/loss" in text and "val/all/mean@2" in text
    assert "v_num" not in text


def test_resumed_run_logs_its_first_validation_at_its_step(tiny_model_path, tmp_path, capsys):
    """On resume the sanity check evaluates the restored model: printed and logged at the
    step the run resumes from, not as "before training" at step 0."""

    def make():
        torch.manual_seed(0)
        dm = RolloutDataModule(DigitTask(train_size=16, val_size=4, test_size=4), questions_per_step=4,
                               rollouts_per_question=2, sampling=SamplingConfig(1.0, 1.0, 6),
                               evaluation=EvaluationConfig(samples=2, sampling=SamplingConfig(1.0, 1.0, 6)))
        return SDPO(tiny_model_path, distillation=DistillationConfig(topk=10)), dm

    def trainer(epochs, name):
        return pl.Trainer(max_epochs=epochs, reload_dataloaders_every_n_epochs=1, check_val_every_n_epoch=1,
                          num_sanity_val_steps=-1, logger=TensorBoardLogger(tmp_path, name=name),
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          log_every_n_steps=1, callbacks=[MajorityVoteEvaluation()])

    first = trainer(1, "first")
    first.fit(*make())
    first.save_checkpoint(tmp_path / "step1.ckpt")
    capsys.readouterr()
    trainer(2, "resumed").fit(*make(), ckpt_path=tmp_path / "step1.ckpt")
    out = capsys.readouterr().out
    assert "[validation] step 1 (resumed):" in out and "before training" not in out
    steps = []
    for ev in (tmp_path / "resumed").rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})
        acc.Reload()
        steps += [e.step for e in acc.Scalars("val/all/mean@2")]
    assert sorted(steps) == [1, 2]


def test_per_question_rows_written_after_the_checkpoint_are_cut_on_resume(tmp_path):
    """A run killed after a validation that followed its last checkpoint: the resumed run's
    first write keeps only the rows the checkpoint had counted, then appends."""
    from types import SimpleNamespace

    rollouts = SimpleNamespace(group_size=2, success_threshold=0.5, rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
                               rows=[{"uid": "a", "data_source": "s"}, {"uid": "b", "data_source": "s"}])
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), is_global_zero=True,
                              global_step=0)
    first = MajorityVoteEvaluation()
    for step in (0, 2):
        trainer.global_step = step
        first._append_per_question(trainer, rollouts)
        if step == 0:
            state = first.state_dict()  # the checkpoint: 2 rows counted
    trainer.global_step = 4
    first._append_per_question(trainer, rollouts)  # written, then the run is killed
    path = tmp_path / "val_per_question.csv"
    assert len(path.read_text().splitlines()) == 1 + 6

    resumed = MajorityVoteEvaluation()
    resumed.load_state_dict(state)
    trainer.global_step = 2  # the resumed run validates step 2 again
    resumed._append_per_question(trainer, rollouts)
    rows = list(csv.DictReader(open(path)))
    assert [(r["step"], r["question"], r["successes"]) for r in rows] == [
        ("0", "a", "1"), ("0", "b", "2"), ("2", "a", "1"), ("2", "b", "2")]
    assert resumed.state_dict()["per_question_rows"] == 4

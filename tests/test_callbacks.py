"""Evaluation and curriculum callbacks: values, and TensorBoard events read back."""

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
from lit_scsdpo.data import Rollouts
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
    with pytest.raises(ValueError, match="val_samples"):
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
    model = SDPO(tiny_model_path, topk=10)
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=6, test_size=6, levels=[0, 1]), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8), val_samples=4,
                           val_sampling=SamplingConfig(0.6, 0.95, 8))
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

"""benchmarks/weighting_study.py: the paired statistics by hand, the arms' configs as the real
CLI parses them, the report and figures, and one real (2-step) run read back."""

import argparse
import statistics
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import weighting_study as ws  # noqa: E402


def test_paired_statistics_by_hand():
    """d = (1, 3, -1, 2, 5) points: mean 2, sd sqrt(5)/100, t(4) = 2.776, half-width
    2.776 * 0.02236 / sqrt(5) = 0.02776. Flipping the signs of a subset S gives sum 10 - 2 S:
    |.| >= 10 for S in {}, {-1}, {1, -1} and their complements: p = 6/32."""
    a = {s: 0.5 + d / 100 for s, d in enumerate([1, 3, -1, 2, 5])}
    b = {s: 0.5 for s in range(5)}
    b[9] = 0.1  # an unpaired seed is ignored
    r = ws.paired(a, b)
    assert r["n"] == 5
    assert r["mean"] == pytest.approx(0.02)
    assert r["hi"] - r["mean"] == pytest.approx(2.776 * statistics.stdev([0.01, 0.03, -0.01, 0.02, 0.05]) / 5 ** 0.5)
    assert r["lo"] == pytest.approx(0.02 - 0.027760, abs=1e-5)
    assert r["p"] == pytest.approx(6 / 32)
    assert ws.verdict(r) == "not distinguishable from 0"
    shifted = ws.paired({s: v + 0.05 for s, v in a.items()}, b)  # every difference > 0
    assert shifted["lo"] > 0 and ws.verdict(shifted).startswith("higher") and shifted["p"] == pytest.approx(2 / 32)
    assert ws.paired({0: 1.0}, {0: 0.0}) is None and ws.verdict(None) == "n < 2"
    two = ws.paired({0: 1.0, 1: 1.1}, {0: 0.0, 1: 0.0})  # CI excludes 0, but 2 seeds: no verdict
    assert two["lo"] > 0 and ws.verdict(two) == "too few seeds for a verdict"


@pytest.mark.parametrize("arm", ["grpo", "scsdpo", "norm_none", "lambda"])
def test_arm_configs_as_the_cli_parses_them(arm, tmp_path, capsys, monkeypatch):
    """Algorithm file + worked.yaml + the arm's file: the worked asset and lengths, and the
    weighting appended to the algorithm file's callbacks (not replacing them)."""
    from lit_scsdpo.cli import run

    monkeypatch.setattr(sys, "argv", ["lit-scsdpo"])  # (pytest's own arguments)
    config = tmp_path / "arm.yaml"
    config.write_text(yaml.safe_dump(ws.arm_config(arm), allow_unicode=True))
    algo, weighting, model, _, _ = ws.ARMS[arm]
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(ROOT / "configs" / "tiny" / "base.yaml"),
             "--config", str(ROOT / "configs" / "tiny" / f"{algo}.yaml"),
             "--config", str(ROOT / "configs" / "tiny" / "worked.yaml"), "--config", str(config), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["init_args"]["model_name_or_path"] == "asset:tiny-qwen3-worked"
    assert cfg["data"]["sampling"]["max_new_tokens"] == 64 and cfg["data"]["evaluation"]["sampling"]["max_new_tokens"] == 64
    names = [c["class_path"].rsplit(".", 1)[1] for c in cfg["trainer"]["callbacks"]]
    assert "MajorityVoteEvaluation" in names and "RunCheckpoint" in names
    found = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"] == ws.WEIGHTING]
    assert found == ([] if weighting is None else [{**weighting, "floor": 0.0}])
    for key, value in model.items():
        assert cfg["model"]["init_args"][key] == value


def synthetic_run(arm, seed, shift):
    """What load_run returns, for 2 validations of 3 questions on 2 levels."""
    k = 8
    curves = {}
    for tag, start, final in [("all", 0.5, 0.6), ("arithmetic/L0", 0.7, 0.8), ("arithmetic/L1", 0.3, 0.4)]:
        curves[f"val/{tag}/mean@{k}"] = [(0, 0.0, start), (10, 5.0, final + shift), (20, 10.0, final + 2 * shift)]
        curves[f"val/{tag}/maj@{k}"] = [(0, 0.0, start), (20, 10.0, final + shift)]
    per_question = {0: {"q1": 0.0, "q2": 0.25, "q3": 0.75}, 20: {"q1": 0.125, "q2": 0.5 + shift, "q3": 1.0}}
    shares = {"frac_p0": [0.3] * 20, "frac_mixed": [0.6] * 20, "frac_p1": [0.1] * 20}
    ess = [(s, 0.8) for s in range(20)] if ws.ARMS[arm][1] is not None else []
    return {"arm": arm, "seed": seed, "curves": curves, "per_question": per_question, "shares": shares,
            "ess": ess, "step_seconds": 0.5}


def test_report_and_figures_from_runs(tmp_path):
    runs = [synthetic_run(arm, seed, shift)
            for seed in range(3) for arm, shift in [("grpo", 0.0), ("sdpo", 0.0), ("scsdpo", 0.01 * (seed + 1)),
                                                    ("exp1", -0.02)]]
    opts = argparse.Namespace(val_samples=8, steps=20, val_every=10, figures=tmp_path, parallel=2)
    text = ws.report(runs, opts)
    assert "| SC-SDPO (paper) | final mean@8 | 3 | +4.0 |" in text  # 2 x shift: 2, 4, 6 points
    assert "| exponent 1 (variance) | final mean@8 | 3 | -4.0 | [-4.0, -4.0] |" in text
    # against the paper's weighting: -4 - (2, 4, 6) = -6, -8, -10 points
    assert "| ablation − SC-SDPO |" in text
    assert "| exponent 1 (variance) | final mean@8 | 3 | -8.0 | [-13.0, -3.0] | 0.25 | lower (CI excludes 0) |" \
        in text
    assert "| L1 |" in text and "| 0 < p̂ ≤ 1/2 | 1.0 |" in text and "| p̂ = 0 | 1.0 |" in text
    names = ws.plots(runs, opts)
    assert set(names) == {"weighting_vs_step.png", "weighting_vs_time.png", "weighting_pass_rate_shares.png",
                          "weighting_ess.png", "weighting_paired.png"}
    assert all((tmp_path / n).stat().st_size > 10_000 for n in names)


@pytest.mark.slow
def test_a_real_run_is_read_back(tmp_path):
    """One 2-step SC-SDPO run through the study's runner (the real CLI, the worked asset):
    TensorBoard curves from step 0, the per-question CSV at each validation, p̂ shares and ESS."""
    opts = argparse.Namespace(out=tmp_path, steps=2, val_every=1, val_samples=2,
                              overrides=["--trainer.log_every_n_steps", "1", "--data.questions_per_step", "4", "--data.micro_batch_questions", "4",
                                         "--data.task.init_args.val_size", "10"])
    ws.run_one("scsdpo", 0, opts)
    run = ws.load_run(opts, "scsdpo", 0)
    assert [s for s, _, _ in run["curves"]["val/all/mean@2"]] == [0, 1, 2]
    assert sorted(run["per_question"]) == [0, 1, 2] and len(run["per_question"][0]) == 10
    start = run["curves"]["val/all/mean@2"][0][2]
    assert statistics.mean(run["per_question"][0].values()) == pytest.approx(start, abs=1e-6)
    assert len(run["shares"]["frac_mixed"]) == 2 and len(run["ess"]) == 2 and run["step_seconds"] > 0


def test_run_clock_cuts_pauses():
    """Events at 0, 10, 20, then after a 1000 s pause (a resumed run): 1020 -> 20 + MAX_GAP."""
    clock = ws.run_clock([100.0, 110.0, 120.0, 1120.0, 1130.0])
    assert [clock(w) for w in (100.0, 120.0, 1120.0, 1130.0)] == [0.0, 20.0, 20.0 + ws.MAX_GAP, 30.0 + ws.MAX_GAP]

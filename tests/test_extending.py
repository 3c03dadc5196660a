"""docs/extending.md's example subclass runs as documented."""

import re
from pathlib import Path

import pytest
import torch


from .test_module import batch_of, make_rollouts
from .toy import fit_briefly

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


@pytest.fixture(scope="module")
def RLOO():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)[0]
    namespace = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace["RLOO"]


def test_rloo_value_and_gradient_sign(RLOO, tiny_model_path):
    m = RLOO(tiny_model_path, loss_agg_mode="seq-mean-token-sum")
    r = make_rollouts(m.tokenizer, [1, 0, 0, 0])
    batch = batch_of(r, pad=m.tokenizer.pad_token_id)
    loss, metrics = m.compute_loss(batch)
    # advantages: [1, -1/3, -1/3, -1/3]; loss = -Σ_i A_i Σ_t logp_it / 4 sequences
    logp = m.student_forward(batch).logp.detach()
    seq = (logp * batch.response_mask).sum(1)
    expected = -(seq[0] - seq[1:].sum() / 3) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["adv_abs_mean"] == pytest.approx(0.5)
    loss.backward()
    with torch.no_grad():
        for p in m.policy.parameters():
            p -= 0.1 * p.grad
    after = (m.student_forward(batch).logp.detach() * batch.response_mask).sum(1)
    assert after[0] - seq[0] > 0  # the rewarded response became more likely


def test_own_options_are_a_checked_group_and_the_base_options_pass_through(tiny_model_path):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)[1]
    namespace = {}
    exec(compile(code, str(DOC), "exec"), namespace)
    ScaledRLOO, LeaveOneOut = namespace["ScaledRLOO"], namespace["LeaveOneOut"]
    m = ScaledRLOO(tiny_model_path, rloo=LeaveOneOut(scale=0.5), loss_agg_mode="token-mean")
    assert (m.rloo.scale, m.loss_agg_mode, m.hparams["loss_agg_mode"]) == (0.5, "token-mean", "token-mean")
    with pytest.raises(ValueError, match="model.rloo.scale must be > 0"):
        LeaveOneOut(scale=0)


def test_rloo_trains_with_the_trainer(RLOO, tiny_model_path, tmp_path):
    trainer = fit_briefly(RLOO(tiny_model_path), tmp_path, epochs=2, train_size=32)
    assert trainer.global_step == 2
    assert "train/adv_abs_mean" in trainer.logged_metrics

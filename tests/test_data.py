"""RolloutDataModule: question sampling and its state, whole groups, robust scoring."""

from types import SimpleNamespace

import pytest
import torch

from lit_scsdpo import GRPO, RolloutDataModule
from lit_scsdpo.rollout import HFGenerateEngine, SamplingConfig
from lit_scsdpo.tasks import ArithmeticTask

from .toy import CrashingTask, DigitTask


def attach(dm, module):
    dm.trainer = SimpleNamespace(lightning_module=module, global_rank=0, world_size=1)
    return dm


def test_sampling_without_replacement_and_resumable_state():
    task = ArithmeticTask(train_size=10, val_size=6, test_size=6)
    dm = RolloutDataModule(task, questions_per_step=4, seed=3)
    dm.setup("fit")
    drawn = [dm.sampler.next_questions(len(dm.train_set), 0, 1) for _ in range(5)]
    first_pass = sum(drawn, [])[:10]
    assert sorted(first_pass) == list(range(10))  # every question once before any repeats
    state = dm.state_dict()
    more = [dm.sampler.next_questions(len(dm.train_set), 0, 1) for _ in range(3)]
    resumed = RolloutDataModule(task, questions_per_step=4, seed=3)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert [resumed.sampler.next_questions(len(resumed.train_set), 0, 1) for _ in range(3)] == more


def test_argument_validation():
    task = ArithmeticTask(train_size=10, val_size=6, test_size=6)
    with pytest.raises(ValueError, match="data.questions_per_step"):
        RolloutDataModule(task, questions_per_step=6, updates_per_batch=4)
    with pytest.raises(ValueError, match="data.rollouts_per_question"):
        RolloutDataModule(task, rollouts_per_question=0)
    with pytest.raises(ValueError, match="sampling.top_p"):
        SamplingConfig(top_p=0.0)


@pytest.fixture(scope="module")
def grpo(tiny_model_path):
    return GRPO(tiny_model_path)


def test_rollouts_whole_groups_and_stats(grpo):
    torch.manual_seed(0)
    dm = attach(RolloutDataModule(DigitTask(train_size=32, val_size=6, test_size=6), questions_per_step=6,
                                  rollouts_per_question=4, updates_per_batch=2, micro_batch_questions=2,
                                  sampling=SamplingConfig(1.0, 1.0, 10)), grpo)
    dm.setup("fit")
    loader = dm.train_dataloader()
    batches = list(loader)
    assert dm.current.num_questions == 6 and len(dm.current.response_ids) == 24
    # 2 optimizer steps of 3 questions, micro-batches of 2 + 1 questions
    assert [b.num_sequences for b in batches] == [8, 4, 8, 4]
    assert [b.last_in_step for b in batches] == [False, True, False, True]
    for b in batches:
        assert b.num_sequences % 4 == 0
        assert (b.group_ids.view(-1, 4) == b.group_ids.view(-1, 4)[:, :1]).all()  # whole groups
        assert b.step.rewards.numel() == 12
        # prompt | response layout: response tokens sit right after the prompt columns
        assert torch.equal(b.input_ids[:, b.prompt_width:] * b.response_mask.long(),
                           b.response_ids * b.response_mask.long())
        assert (b.sampler_logprobs <= 0).all()
    p_hat = dm.current.rewards.mean(1)
    assert dm.current.stats["pass_rate_mean"] == pytest.approx(p_hat.mean().item())
    assert 0 <= dm.current.stats["frac_p0"] <= 1 and dm.current.stats["gen_tokens_per_s"] > 0
    # weights set after the plan is built are used (lazy collation)
    dm.current.question_weights = torch.arange(6, dtype=torch.float32)
    b0 = next(iter(loader))
    assert b0.question_weights.tolist() == [0.0] * 4 + [1.0] * 4


def test_batch_transfer_moves_tensors_and_shares_the_rest(grpo):
    """The module's ``transfer_batch_to_device`` moves the tensors of a RolloutBatch (and of its
    StepInfo) and shares lists and strings: Lightning's generic mover deep-copied them (~9 ms a
    step) and gave the teacher-prompt cache new message objects for every micro-batch."""
    torch.manual_seed(0)
    dm = attach(RolloutDataModule(DigitTask(train_size=16, val_size=6, test_size=6), questions_per_step=2,
                                  rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 6)), grpo)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    moved = grpo.transfer_batch_to_device(b, torch.device("cpu"), 0)
    assert type(moved).__name__ == "RolloutBatch" and moved is not b
    assert moved.messages is b.messages and moved.step.messages is b.step.messages and moved.uids is b.uids
    for name in ("input_ids", "attention_mask", "response_ids", "rewards", "question_weights"):
        assert torch.equal(getattr(moved, name), getattr(b, name)), name
    assert torch.equal(moved.step.rewards, b.step.rewards) and moved.prompt_width == b.prompt_width
    assert moved.input_ids.device.type == "cpu" and moved.stats is b.stats


def test_crashing_verifier_is_counted_not_fatal(grpo):
    dm = attach(RolloutDataModule(CrashingTask(train_size=16, val_size=6, test_size=6), questions_per_step=4,
                                  rollouts_per_question=3, sampling=SamplingConfig(1.0, 1.0, 6)), grpo)
    dm.setup("fit")
    dm.train_dataloader()
    assert dm.current.stats["score_errors"] == 4  # every third of 12 calls
    assert len(dm.current.scores) == 12


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_engine_logprobs_match_the_policy(grpo, top_p):
    """The sampler's per-token log-probs (recorded step by step from the raw logits) equal the
    trainer's recomputation at the sampling temperature (ratio ≈ 1), with top-p too."""
    torch.manual_seed(1)
    engine = HFGenerateEngine(batch_size=8)
    engine.update_weights(grpo.policy)
    prompt = grpo.tokenizer("What is 1+2?", add_special_tokens=False)["input_ids"]
    gens = engine.generate([prompt, prompt[:5]], n=2, sampling=SamplingConfig(0.7, top_p, 8))
    assert gens.prompt_index == [0, 0, 1, 1] and len(gens.response_ids) == 4
    for i, resp in enumerate(gens.response_ids):
        p = [prompt, prompt[:5]][gens.prompt_index[i]]
        with torch.no_grad():
            logits = grpo.policy(input_ids=torch.tensor([p + resp])).logits[0, len(p) - 1 : -1] / 0.7
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(resp)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(gens.logprobs[i]), ref, atol=1e-4)

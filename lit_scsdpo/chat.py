"""Chat rendering shared by the student prompts and the teacher reprompts.

Both sides go through :func:`render_prompt`, so the chat template and its kwargs
(``enable_thinking``) are identical for student and teacher (pitfalls 11). The template is
rendered to text and then tokenised without extra special tokens, which gives the same ids
across transformers 4.x and 5.x (whose ``apply_chat_template(tokenize=True)`` return types
differ).
"""

from __future__ import annotations

import re
from typing import Any

THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], enable_thinking: bool = False) -> list[int]:
    """Token ids of ``messages`` under the chat template, ending with the generation prompt."""
    if not messages:
        raise ValueError("render_prompt: empty message list")
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=enable_thinking
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks (SDPO's ``remove_thinking_from_demonstration``)."""
    return THINK_BLOCK.sub("", text)

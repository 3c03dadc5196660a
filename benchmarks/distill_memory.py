"""Peak extra memory of the SDPO distillation loss: chunked vs materialised logits.

One sequence of ``T`` response positions, vocabulary ``V`` (Qwen3: 151,936), forward and
backward of the top-100 + tail JSD loss. Each configuration runs in its own subprocess; the
figure is the rise of the process's peak resident memory (VmHWM, reset through
``/proc/self/clear_refs``) over its resident memory just before the loss is computed, i.e.
the memory that the loss itself needs on top of the inputs and the two LM heads.

The hidden size is small (default 256) because it changes the FLOPs, not the ``[T, V]``
buffers this measures. Linux only (reads /proc).

    python benchmarks/distill_memory.py --seq 1024 2048 4096 8192 --unchunked-max 4096
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(seq: int, vocab: int, hidden: int, chunk: int | None, topk: int) -> dict:
    import torch

    from lit_scsdpo.losses import chunked_distillation_loss, distillation_loss

    torch.manual_seed(0)
    torch.set_num_threads(2)
    head_s = torch.nn.Linear(hidden, vocab, bias=False)
    head_t = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    hs = torch.randn(seq, hidden, requires_grad=True)
    ht = torch.randn(seq, hidden)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    t0 = time.perf_counter()
    if chunk is None:
        with torch.no_grad():
            t_logits = head_t(ht)
        loss = distillation_loss(head_s(hs), t_logits, topk=topk).mean()
    else:
        loss = chunked_distillation_loss(hs, head_s, ht, head_t, chunk_size=chunk, topk=topk).mean()
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    return {
        "T": seq,
        "V": vocab,
        "chunk": chunk,
        "extra_peak_GiB": round((peak - before) / 2**20, 3),
        "seconds": round(seconds, 1),
        "loss": float(loss),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--topk", type=int, default=100)
    ap.add_argument("--unchunked-max", type=int, default=4096,
                    help="largest T to run unmaterialised-logits mode (it needs ~3 GiB per 1k T)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    rows = []
    for seq in args.seq:
        for chunk in ([None] if seq <= args.unchunked_max else []) + [args.chunk]:
            spec = dict(seq=seq, vocab=args.vocab, hidden=args.hidden, chunk=chunk, topk=args.topk)
            out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"T={row['T']:>6} V={row['V']} chunk={str(row['chunk']):>5}: "
                  f"extra peak {row['extra_peak_GiB']:7.3f} GiB  ({row['seconds']} s)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Build the embedded default's tiny pretrained reasoner: ``lit_scsdpo/assets/tiny-qwen3``.

A ~1M-parameter Qwen3 (hidden 128, 4 layers, tied embeddings; ~4 MB fp32 safetensors) with
the package's char-level tokenizer and a Qwen-style chat template, supervised on procedural
arithmetic (``lit_scsdpo.tasks.ArithmeticTask`` levels 0-4) so that RL has something to do:

* **plain examples** ``What is <expr>?`` → ``<answer>N</answer>`` whose label is corrupted
  with a level-dependent probability (``--noise``: ±1, ±10 or one digit changed). The
  sampled (T = 1) distribution is thus spread out while its mode stays correct: greedy
  accuracy well above sampled accuracy, which on-policy RL can close by sharpening. Level 0
  is nearly clean, so some questions are saturated (p̂ = 1) from the start.
* **reprompt examples** in the exact SDPO teacher format (the question, ``Correct
  solution:`` and a correct sibling answer, ``Correctly solve the original question.``)
  with the correct target, so the self-teacher is far better than the student.

Validation and test questions of the default task are never trained on. Deterministic for a
given seed and thread count. Prints start-of-RL measurements and writes them, with the
command, to the asset's README.md.

    python scripts/build_tiny_asset.py                       # ~10-15 min on 2 free cores
    python scripts/build_tiny_asset.py --steps 5 --eval-questions 0 --out /tmp/x   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_scsdpo.chat import render_prompt  # noqa: E402
from lit_scsdpo.rollout import HFGenerateEngine, SamplingConfig  # noqa: E402
from lit_scsdpo.tasks import ArithmeticTask  # noqa: E402
from lit_scsdpo.tasks.arithmetic import sample_expression, worked_solution  # noqa: E402
from lit_scsdpo.teacher import Reprompt  # noqa: E402
from lit_scsdpo.tiny import build_char_tokenizer, build_tiny_qwen3  # noqa: E402

DEFAULT_OUT = ROOT / "lit_scsdpo" / "assets" / "tiny-qwen3"
LEVELS = [0, 1, 2, 3, 4]
#: label-noise probability per level (plain examples only)
NOISE = {0: 0.05, 1: 0.35, 2: 0.35, 3: 0.40, 4: 0.45}


def corrupt(value: int, rng: random.Random) -> int:
    """A plausible wrong answer: ±1 (40 %), ±10 (30 %) or one digit changed (30 %)."""
    while True:
        u = rng.random()
        if u < 0.4:
            wrong = value + rng.choice((-1, 1))
        elif u < 0.7:
            wrong = value + rng.choice((-10, 10))
        else:
            digits = list(str(abs(value)))
            i = rng.randrange(len(digits))
            digits[i] = str(rng.choice([d for d in range(10) if str(d) != digits[i]]))
            wrong = int("".join(digits)) * (-1 if value < 0 else 1)
        if wrong != value:
            return wrong


def held_out_expressions(task: ArithmeticTask) -> set[str]:
    return {r["question"] for split in ("validation", "test") for r in task.rows(split)}


def response_text(expr: str, answer: int, worked: bool) -> str:
    """The target response: ``<answer>N</answer>``, or a worked solution ending in ``N`` first."""
    return f"{worked_solution(expr, final=answer)}\n<answer>{answer}</answer>" if worked else f"<answer>{answer}</answer>"


def make_example(tok, rng, held_out, noise, levels, reprompt: bool, worked: bool = False,
                 teacher_noise: float = 0.0):
    level = rng.choice(levels)
    while True:
        expr, value = sample_expression(level, rng)
        if f"What is {expr}?" not in held_out:
            break
    question = f"What is {expr}?"
    if reprompt:
        demo = response_text(expr, value, worked)
        messages = Reprompt(system=[], prompt=question, demonstration=demo).messages()
        # a harder teacher: even shown a correct solution it is wrong with probability
        # teacher_noise x the level's noise (more often on the hard levels, as the student)
        wrong = teacher_noise > 0 and rng.random() < teacher_noise * noise[level]  # (no draw at 0: same stream)
        answer = corrupt(value, rng) if wrong else value
    else:
        messages = [{"role": "user", "content": question}]
        answer = corrupt(value, rng) if rng.random() < noise[level] else value
    prompt = render_prompt(tok, messages)
    target = tok(response_text(expr, answer, worked), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt, target


def collate(examples, pad_id):
    width = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, t) in enumerate(examples):  # right padding: default position ids are right
        seq = p + t
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, len(p) : len(seq)] = torch.tensor(t)
        mask[i, : len(seq)] = 1
    return ids, labels, mask


def train(args) -> tuple:
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = build_char_tokenizer()
    model = build_tiny_qwen3(tok, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                             intermediate_size=512, max_position_embeddings=256, seed=args.seed)
    model.train()
    task = ArithmeticTask(levels=LEVELS)
    held_out = held_out_expressions(task)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = min(50, max(1, args.steps // 10))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, args.steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = [make_example(tok, rng, held_out, NOISE, LEVELS, False, args.worked_solution)
                 for _ in range(args.batch_plain)]
        batch += [make_example(tok, rng, held_out, NOISE, LEVELS, True, args.worked_solution, args.teacher_noise)
                  for _ in range(args.batch_reprompt)]
        ids, labels, mask = collate(batch, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - t0:6.0f}s", flush=True)
    model.eval()
    return tok, model, task, time.perf_counter() - t0


def measure(tok, model, task, n_questions: int, G: int = 8, seed: int = 1, worked: bool = False) -> dict:
    """Start-of-RL numbers: student (T=1, G samples + greedy) and self-teacher (reprompt with
    the correct answer as the sibling demonstration) on fresh training-distribution questions,
    plus the validation split."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    engine = HFGenerateEngine(batch_size=256)
    engine.update_weights(model)
    held_out = held_out_expressions(task)
    per_level = max(1, n_questions // len(LEVELS))
    rows = []
    for level in LEVELS:
        for _ in range(per_level):
            while True:
                expr, value = sample_expression(level, rng)
                if f"What is {expr}?" not in held_out:
                    break
            rows.append({"question": f"What is {expr}?", "answer": str(value), "level": level, "expr": expr})

    def accuracy(prompts, rows_, n, temperature):
        gens = engine.generate(prompts, n, SamplingConfig(temperature, 1.0, 64 if worked else 16))
        texts = tok.batch_decode(gens.response_ids, skip_special_tokens=True)
        r = torch.tensor([task.score(t, rows_[gens.prompt_index[i]]).reward for i, t in enumerate(texts)])
        return r.view(len(prompts), n)

    student_prompts = [render_prompt(tok, task.messages(r)) for r in rows]
    teacher_prompts = [render_prompt(tok, Reprompt([], r["question"],
                                                   response_text(r["expr"], int(r["answer"]), worked)).messages())
                       for r in rows]
    s = accuracy(student_prompts, rows, G, 1.0)
    greedy = accuracy(student_prompts, rows, 1, 0.0)
    t = accuracy(teacher_prompts, rows, G, 1.0)
    p = s.mean(1)
    failed = s < 1  # the rollouts a teacher is asked about: where the student failed
    levels = torch.tensor([r["level"] for r in rows])
    val_rows = task.rows("validation")
    v = accuracy([render_prompt(tok, task.messages(r)) for r in val_rows], val_rows, G, 1.0)
    v_levels = torch.tensor([r["level"] for r in val_rows])
    return {
        "questions": len(rows), "G": G,
        "student_mean@8": round(s.mean().item(), 4),
        "student_greedy": round(greedy.mean().item(), 4),
        "frac_0<p<1": round(((p > 0) & (p < 1)).float().mean().item(), 4),
        "frac_p=0": round((p == 0).float().mean().item(), 4),
        "frac_p=1": round((p == 1).float().mean().item(), 4),
        "teacher_mean@8": round(t.mean().item(), 4),
        "teacher_minus_student_points": round(100 * (t.mean() - s.mean()).item(), 1),
        "teacher_mean@8_by_level": {f"L{lv}": round(t[levels == lv].mean().item(), 3) for lv in LEVELS},
        "teacher_mean@8_on_questions_with_a_failure": round(t[failed.any(1)].mean().item(), 4),
        "student_mean@8_by_level": {f"L{lv}": round(s[levels == lv].mean().item(), 3) for lv in LEVELS},
        "greedy_by_level": {f"L{lv}": round(greedy[levels == lv].mean().item(), 3) for lv in LEVELS},
        "validation_mean@8": round(v.mean().item(), 4),
        "validation_mean@8_by_level": {f"L{lv}": round(v[v_levels == lv].mean().item(), 3) for lv in LEVELS},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-plain", type=int, default=96)
    ap.add_argument("--batch-reprompt", type=int, default=32)
    ap.add_argument("--eval-questions", type=int, default=300)
    ap.add_argument("--worked-solution", action="store_true",
                    help="targets are a worked solution then the answer (longer responses; write to another --out)")
    ap.add_argument("--teacher-noise", type=float, default=0.0,
                    help="reprompt targets are corrupted with probability this x the level's label noise: a "
                         "self-teacher that is wrong on some questions even given a correct demonstration "
                         "(0: an oracle that copies the demonstrated answer)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok, model, task, seconds = train(args)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    report = {"train_seconds": round(seconds, 1), "steps": args.steps, "threads": args.threads,
              "worked_solution": args.worked_solution, "teacher_noise": args.teacher_noise,
              "parameters": sum(p.numel() for p in model.parameters())}
    if args.eval_questions > 0:
        report.update(measure(tok, model, task, args.eval_questions, worked=args.worked_solution))
    print(json.dumps(report, indent=2))
    if args.out.resolve().parent == DEFAULT_OUT.parent:  # a shipped asset: write its card
        write_card(args, report)


def write_card(args, report) -> None:
    cmd = f"python scripts/build_tiny_asset.py --steps {args.steps} --seed {args.seed} --threads {args.threads}"
    if args.out.resolve() != DEFAULT_OUT.resolve():
        cmd += f" --out lit_scsdpo/assets/{args.out.name}"
    if args.worked_solution:
        cmd += " --worked-solution"
    if args.teacher_noise:
        cmd += f" --teacher-noise {args.teacher_noise}"
    if args.worked_solution:
        what = ("Responses are a worked solution (one step per partial result) then the answer, ~20-35 tokens, "
                "so per-token credit has room.")
    else:
        what = "Responses are the bare answer, ~5-8 tokens."
    if args.teacher_noise:
        teacher = (f"The reprompt targets are wrong with probability {args.teacher_noise} x the level's noise: "
                   f"shown a correct solution, the self-teacher is still wrong on some questions, more on the "
                   f"hard levels (`teacher_mean@8_by_level` below).")
    else:
        teacher = ("The self-teacher mostly *copies* the demonstrated answer: at this scale it is an oracle,\n"
                   "not a model that reasons better with a hint.")
    text = f"""# {args.out.name}: a tiny pretrained reasoner shipped with lit_scsdpo

Built by `{cmd}` (deterministic for a given seed and thread count). A Qwen3 causal LM
(hidden 128, 4 layers, 4 heads, 2 KV heads, tied embeddings, {report['parameters']:,}
parameters, fp32 safetensors) with a char-level tokenizer and a Qwen-style chat template.
Supervised on arithmetic levels {LEVELS} with label noise {NOISE} and on SDPO-format
reprompt examples; see the script's docstring. {what}

{teacher}

Start-of-RL measurements (fresh training-distribution questions, G=8, T=1):

```json
{json.dumps(report, indent=2)}
```
"""
    (args.out / "README.md").write_text(text)


if __name__ == "__main__":
    main()

"""Procedural multi-step integer arithmetic with a difficulty knob.

The task the tiny end-to-end runs learn on: short, verifiable, with a controllable difficulty.
Each *level* is a finite space of expressions, built from *forms* (operand digit counts and
operator choices):

====  ================================  =====================  ===========
Level Form                              Example                Expressions
====  ================================  =====================  ===========
L0    1-digit + 1-digit                 ``3+4``                100
L1    2-digit ± 1-digit                 ``45-3``               1,800
L2    2-digit + 2-digit                 ``23+45``              8,100
L3    2-digit − 2-digit (may be < 0)    ``34-56``              8,100
L4    1-digit × 1-digit, 2-digit × 1    ``7*8``, ``45*3``      1,000
L5    2-digit ± 2-digit ± 1-digit       ``34-56+7``            324,000
====  ================================  =====================  ===========

"1-digit" means 0-9 and "2-digit" 10-99. Questions are drawn uniformly from a level's
expression space. The user prompt is exactly ``f"What is {expr}?"`` (no spaces inside the
expression) and the gold ``answer`` the integer value as a string (``"-22"``); a completion
must give it as ``<answer>-22</answer>``.

Splits are deterministic functions of ``seed`` and the sizes. Validation and test questions
are drawn first (per level, disjoint from each other, no repeats); train then draws from the
rest of each level's space, so no held-out expression ever appears in train. Train repeats an
expression only once the level's remaining space is exhausted (only small levels such as L0
with large ``train_size``).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from .base import Score, extract_tagged_answer

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["ArithmeticTask", "LEVELS", "level_size", "expression_at", "sample_expression"]

SPLITS = ("train", "validation", "test")

_ONE = (0, 9)  # 1-digit operand range (inclusive)
_TWO = (10, 99)  # 2-digit operand range (inclusive)


@dataclass(frozen=True)
class _Form:
    """Operands drawn from ``ranges`` (inclusive), joined by one operator of each ``ops`` entry."""

    ranges: tuple[tuple[int, int], ...]
    ops: tuple[tuple[str, ...], ...]

    @property
    def radices(self) -> list[int]:
        # mixed-radix digits: operand 0, op 0, operand 1, op 1, ..., operand n-1
        out = []
        for i, (lo, hi) in enumerate(self.ranges):
            out.append(hi - lo + 1)
            if i < len(self.ops):
                out.append(len(self.ops[i]))
        return out

    @property
    def size(self) -> int:
        return math.prod(self.radices)

    def decode(self, index: int) -> tuple[list[int], list[str]]:
        operands: list[int] = []
        ops: list[str] = []
        for pos, radix in enumerate(self.radices):
            index, digit = divmod(index, radix)
            if pos % 2 == 0:
                operands.append(self.ranges[pos // 2][0] + digit)
            else:
                ops.append(self.ops[pos // 2][digit])
        return operands, ops


#: The forms of each difficulty level (see the module docstring).
LEVELS: dict[int, tuple[_Form, ...]] = {
    0: (_Form((_ONE, _ONE), (("+",),)),),
    1: (_Form((_TWO, _ONE), (("+", "-"),)),),
    2: (_Form((_TWO, _TWO), (("+",),)),),
    3: (_Form((_TWO, _TWO), (("-",),)),),
    4: (_Form((_ONE, _ONE), (("*",),)), _Form((_TWO, _ONE), (("*",),))),
    5: (_Form((_TWO, _TWO, _ONE), (("+", "-"), ("+", "-"))),),
}


def _check_level(level: int) -> None:
    if level not in LEVELS:
        raise ValueError(f"levels: unknown level {level!r}; known levels are {sorted(LEVELS)}")


def level_size(level: int) -> int:
    """Number of distinct expressions of ``level``."""
    _check_level(level)
    return sum(form.size for form in LEVELS[level])


def _evaluate(operands: list[int], ops: list[str]) -> int:
    """Integer value with the usual precedence (``*`` before ``+``/``-``, left to right)."""
    terms = [operands[0]]
    signs = [1]
    for op, value in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= value
        else:
            terms.append(value)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


def expression_at(level: int, index: int) -> tuple[str, int]:
    """The ``index``-th expression of ``level`` (``0 <= index < level_size(level)``) and its
    value. A bijection between indices and expression strings."""
    size = level_size(level)
    if not 0 <= index < size:
        raise ValueError(f"index {index} out of range for level {level} (size {size})")
    for form in LEVELS[level]:
        if index < form.size:
            operands, ops = form.decode(index)
            expr = str(operands[0]) + "".join(op + str(v) for op, v in zip(ops, operands[1:]))
            return expr, _evaluate(operands, ops)
        index -= form.size
    raise AssertionError("unreachable")


_EXPR_RE = re.compile(r"^(\d+)([+\-*])(\d+)(?:([+\-])(\d+))?$")


def worked_solution(expr: str, final: Optional[int] = None) -> str:
    """A short worked solution of ``expr`` (an expression of these levels), one step per line
    segment, e.g. ``23+45: 20+40=60, 3+5=8, 60+8=68``; ``45*3: 40*3=120, 5*3=15, 120+15=135``;
    ``94-85: 94-80=14, 14-5=9``; ``34-56+7: 34-56=-22, -22+7=-15``. With ``final`` the last
    step states that (possibly wrong) result instead: used to write noisy training targets
    whose chain is consistent up to the last step. Used to make responses longer than the
    bare answer, so that per-token credit has room (scripts/build_tiny_asset.py)."""
    m = _EXPR_RE.match(expr)
    if m is None:
        raise ValueError(f"worked_solution: not an expression of the arithmetic levels: {expr!r}")
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    steps: list[tuple[str, int]] = []
    if m.group(4):  # a ± b ± c: two steps
        x = a + b if op == "+" else a - b
        c = int(m.group(5))
        steps = [(f"{a}{op}{b}", x), (f"{x}{m.group(4)}{c}", x + c if m.group(4) == "+" else x - c)]
    elif op == "*" and a >= 10 and b < 10:  # tens and units
        t, u = a - a % 10, a % 10
        steps = [(f"{t}*{b}", t * b), (f"{u}*{b}", u * b), (f"{t * b}+{u * b}", a * b)]
    elif op == "+" and a >= 10 and b >= 10:
        ta, tb, ua, ub = a - a % 10, b - b % 10, a % 10, b % 10
        steps = [(f"{ta}+{tb}", ta + tb), (f"{ua}+{ub}", ua + ub), (f"{ta + tb}+{ua + ub}", a + b)]
    elif op == "-" and a >= 10 and b >= 10:
        tb, ub = b - b % 10, b % 10
        steps = [(f"{a}-{tb}", a - tb), (f"{a - tb}-{ub}", a - b)]
    else:  # one step: 1-digit operands, 2-digit ± 1-digit, 1x1 products
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        return f"{expr}={value if final is None else final}"
    if final is not None:
        steps[-1] = (steps[-1][0], final)
    return f"{expr}: " + ", ".join(f"{lhs}={rhs}" for lhs, rhs in steps)


def sample_expression(level: int, rng: random.Random) -> tuple[str, int]:
    """A uniformly random expression of ``level`` and its value."""
    return expression_at(level, rng.randrange(level_size(level)))


def _sample_indices(rng: random.Random, size: int, k: int, exclude: set[int]) -> list[int]:
    """``k`` distinct indices from ``range(size)`` minus ``exclude`` (requires enough room)."""
    draw = rng.sample(range(size), min(size, k + len(exclude)))
    out = [i for i in draw if i not in exclude][:k]
    assert len(out) == k
    return out


def _spread(total: int, n: int) -> list[int]:
    """Split ``total`` into ``n`` near-equal counts, the first ones taking the remainder."""
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


_INT_RE = re.compile(r"[+-]?[0-9]+")
_ANY_INT_RE = re.compile(r"-?[0-9]+")  # answer_format last_number: "12+7=19" -> 19, "3-5=-2" -> -2
_MAX_FEEDBACK_PRED = 100


def _canonical_int(text: str) -> str:
    """``"+015"`` -> ``"15"``, ``"-0"`` -> ``"0"``; by string, as ``int()`` refuses over 4300 digits."""
    sign, digits = (text[0], text[1:]) if text[0] in "+-" else ("", text)
    digits = digits.lstrip("0") or "0"
    return ("-" if sign == "-" and digits != "0" else "") + digits


class ArithmeticTask:
    """Procedural integer arithmetic (levels L0-L5, see :mod:`lit_scsdpo.tasks.arithmetic`).

    Args:
        levels: Difficulty levels to draw questions from (0-5): L0 1-digit + 1-digit, L1
            2-digit ± 1-digit, L2 2-digit + 2-digit, L3 2-digit - 2-digit, L4 1x1 or 2x1-digit
            product, L5 2-digit ± 2-digit ± 1-digit.
        train_size: Number of training questions, spread evenly over the levels.
        val_size: Number of validation questions, spread evenly over the levels.
        test_size: Number of test questions, spread evenly over the levels.
        seed: Seed of the question generator; the splits are a deterministic function of it.
        system_prompt: If given, a system message with this text precedes each question.
        name: Task name, the prefix of ``uid`` and ``data_source`` (``"{name}/L{level}"``).
        answer_format: ``tags`` (default): the answer is the last ``<answer>...</answer>``;
            ``last_number``: the last integer anywhere in the response (no format needed: how a
            small general instruct model such as SmolLM2-135M earns rewards before RL, 29 % at
            T = 0.7 on L0-L1 against 0 % with tags).
    """

    def __init__(
        self,
        levels: list[int] = [0, 1, 2, 3, 4, 5],  # noqa: B006 - copied, never mutated
        train_size: int = 4096,
        val_size: int = 120,
        test_size: int = 120,
        seed: int = 0,
        system_prompt: Optional[str] = None,
        name: str = "arithmetic",
        answer_format: str = "tags",
    ) -> None:
        if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
            raise ValueError(f"levels: expected a list of levels from {sorted(LEVELS)}, got {levels!r}")
        levels = list(levels)
        if not levels:
            raise ValueError("levels: must name at least one level")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int):
                raise ValueError(f"levels: expected integers, got {level!r}")
            _check_level(level)
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels: duplicate entries in {levels}")
        for field, value in (("train_size", train_size), ("val_size", val_size),
                             ("test_size", test_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field}: must be an integer >= 0, got {value!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt: must be a string or None, got {type(system_prompt).__name__}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string, got {name!r}")
        if answer_format not in ("tags", "last_number"):
            raise ValueError(f"answer_format: must be 'tags' or 'last_number', got {answer_format!r}")

        self.levels = levels
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.system_prompt = system_prompt
        self.name = name
        self.answer_format = answer_format

        n = len(levels)
        self._counts = {
            "train": dict(zip(levels, _spread(train_size, n))),
            "validation": dict(zip(levels, _spread(val_size, n))),
            "test": dict(zip(levels, _spread(test_size, n))),
        }
        for level in levels:
            size = level_size(level)
            held_out = self._counts["validation"][level] + self._counts["test"][level]
            if held_out > size:
                raise ValueError(
                    f"val_size/test_size: level {level} has only {size} distinct expressions "
                    f"but {self._counts['validation'][level]} validation + "
                    f"{self._counts['test'][level]} test questions were requested"
                )
            if held_out == size and self._counts["train"][level] > 0:
                raise ValueError(
                    f"val_size/test_size: validation and test use all {size} expressions of "
                    f"level {level}, none is left for train"
                )
        self._rows: Optional[dict[str, list[dict[str, Any]]]] = None

    # ------------------------------------------------------------------ data generation
    def _rng(self, *parts: object) -> random.Random:
        # str seeds are hashed with SHA-512 by `random`: stable across runs and processes
        return random.Random("/".join(map(str, (self.seed, *parts))))

    def _row(self, split: str, level: int, index: int) -> dict[str, Any]:
        expr, value = expression_at(level, index)
        return {"uid": "", "data_source": f"{self.name}/L{level}",
                "question": f"What is {expr}?", "answer": str(value), "level": level}

    def _generate(self) -> dict[str, list[dict[str, Any]]]:
        rows: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
        for level in self.levels:
            size = level_size(level)
            n_val = self._counts["validation"][level]
            n_test = self._counts["test"][level]
            n_train = self._counts["train"][level]
            # held-out first: validation does not depend on test_size or train_size
            val = _sample_indices(self._rng("validation", level), size, n_val, set())
            test = _sample_indices(self._rng("test", level), size, n_test, set(val))
            held_out = set(val) | set(test)
            rng = self._rng("train", level)
            unique = min(n_train, size - len(held_out))
            train = _sample_indices(rng, size, unique, held_out)
            if n_train > unique:  # the level's remaining space is exhausted: repeat
                train += rng.choices(train, k=n_train - unique)
            for split, indices in (("validation", val), ("test", test), ("train", train)):
                rows[split].extend(self._row(split, level, i) for i in indices)
        self._rng("train", "shuffle").shuffle(rows["train"])
        for split in SPLITS:
            for i, row in enumerate(rows[split]):
                row["uid"] = f"{self.name}/{split}/{i:06d}"
        return rows

    def rows(self, split: str) -> list[dict[str, Any]]:
        """The rows of ``split`` as plain dicts (generated once, then cached)."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        if self._rows is None:
            self._rows = self._generate()
        return [dict(r) for r in self._rows[split]]

    # ------------------------------------------------------------------ Task protocol
    def load(self, split: str) -> "datasets.Dataset":
        """``split`` as a ``datasets.Dataset`` with columns ``uid``, ``data_source``,
        ``question``, ``answer`` and ``level``."""
        import datasets

        features = datasets.Features({
            "uid": datasets.Value("string"),
            "data_source": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "level": datasets.Value("int64"),
        })
        rows = self.rows(split)
        if not rows:
            return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        return datasets.Dataset.from_list(rows, features=features)

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """An optional system message, then ``{"role": "user", "content": row["question"]}``."""
        out = []
        if self.system_prompt is not None:
            out.append({"role": "system", "content": self.system_prompt})
        out.append({"role": "user", "content": row["question"]})
        return out

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        """Reward 1.0 iff the last ``<answer>...</answer>`` (``answer_format: last_number``: the
        last integer in the text) holds the gold integer.

        The answer may carry a sign and surrounding whitespace (``<answer> +15 </answer>``);
        anything else (``15.0``, ``1,000``, words) is wrong. ``Score.pred`` is the canonical
        integer string when the answer parses as an integer (``"+015"`` -> ``"15"``, so that
        majority votes agree), the stripped raw text otherwise. The feedback never states the
        gold answer.
        """
        if self.answer_format == "last_number":
            numbers = _ANY_INT_RE.findall(completion)
            raw = numbers[-1] if numbers else None
            if raw is None:
                return Score(0.0, None, "Your response did not contain a number.", False)
        else:
            raw = extract_tagged_answer(completion)
        if raw is None:
            return Score(0.0, None,
                         "Your response did not contain an <answer>...</answer> tag.", False)
        pred = _canonical_int(raw) if _INT_RE.fullmatch(raw) else raw
        if pred == str(int(row["answer"])):
            return Score(1.0, pred, "", True)
        shown = raw if len(raw) <= _MAX_FEEDBACK_PRED else raw[:_MAX_FEEDBACK_PRED] + "..."
        return Score(0.0, pred, f"Your answer was {shown}, which is incorrect.", True)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(levels={self.levels}, train_size={self.train_size}, "
                f"val_size={self.val_size}, test_size={self.test_size}, seed={self.seed}, "
                f"name={self.name!r})")

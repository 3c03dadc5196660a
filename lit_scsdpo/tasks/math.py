"""Math word problems with a symbolic verifier (`math-verify`), e.g. MATH, MATH-500, GSM8K, AIME.

Optional dependency: ``pip install 'lit-scsdpo[math]'`` (HuggingFace's ``math-verify``, which
brings sympy and an ANTLR LaTeX parser). See docs/math.md.

**Data.** :meth:`MathTask.load` reads a split from a *source*: a local JSON-lines / JSON,
parquet or CSV file, a local folder written by ``Dataset.save_to_disk`` (or a folder of data
files), or a Hugging Face Hub id. A ``:split`` suffix picks a split (``"HuggingFaceH4/MATH-500:test"``,
``"/data/math_dd:train"``); without it the task's split name is used. Every source goes through
the same code path: all rows are decoded and checked (a non-empty problem, a usable gold answer,
unique ids), and the first bad row stops the load with a one-line ``ValueError`` naming the task,
the source, the row (0-based, and the 1-based line for JSON lines) and the field. Field names
are configurable (defaults ``problem`` / ``answer``, as in MATH-500, AIME and DeepScaleR). A gold
answer may be a bare answer (``"\\frac{1}{2}"``, ``72``), a worked solution ending in
``\\boxed{...}`` (MATH's ``solution``: the last box is the gold) or GSM8K's ``"... #### 72"`` (the
text after the last ``####``). The loaded rows have ``uid``, ``data_source``, ``problem`` and
``answer`` (the normalised gold text).

**Scoring.** The final answer is the content of the *last* ``\\boxed{...}`` (or ``\\fbox{...}``,
braces balanced, ``\\{`` / ``\\}`` escaped) or ``<answer>...</answer>``, whichever opens last;
only the last opener of each kind counts, so a truncated last attempt (``\\boxed{4`` at the end)
is no answer. Surrounding ``$...$``, ``\\(...\\)`` or ``\\[...\\]`` are dropped. No answer (or an
empty one): reward 0, ``pred`` None, ``format_ok`` False. Otherwise gold and prediction are
parsed with math-verify's ``parse`` and compared with its ``verify`` (numbers and fractions,
``0.5`` = ``\\frac{1}{2}`` = ``50\\%``, symbolic equality, intervals, sets, tuples, matrices,
equations such as ``x = 3``); ``pred`` is the extracted text, feedback never contains the gold.

**The time limit** (``timeout`` seconds per :meth:`MathTask.score` call, default 5). sympy can
take arbitrarily long (``\\boxed{9^{9^{9^{9^{9}}}}}``), so every call has one deadline covering
the parses of both answers and the comparison. Design:

* math-verify's own time-outs are *switched off* (``parsing_timeout=None``,
  ``timeout_seconds=None``). They use ``signal.alarm`` with whole seconds, one alarm per parse
  and per compared pair (so a call could run several times the limit), swallow their own
  time-out, fail with ``ValueError`` outside the main thread, and, worst, end with
  ``signal.alarm(0)``: ``alarm`` and ``setitimer(ITIMER_REAL)`` share the process's single
  real-time timer, so the first math-verify call inside :class:`lit_scsdpo.data.SafeScorer`
  (which arms ``ITIMER_REAL`` around every score call) would *cancel* the SafeScorer's timer
  for the rest of the call, or replace a shorter one with a longer one.
* In the main thread of a POSIX process (where training runs and SafeScorer's own alarm
  applies) the task arms its own ``SIGALRM`` deadline that **composes** with an outer timer
  (:func:`run_with_deadline`): it reads the outer timer's remaining time, arms
  ``min(timeout, remaining)``, and on the way out restores the outer handler and re-arms the
  outer timer with what is left of it (a microsecond if it ran out meanwhile, so the outer
  handler fires right after, where it was meant to). The outer deadline is therefore never
  cancelled nor extended. The handler raises a ``BaseException`` subclass, so the many
  ``except Exception`` clauses in sympy, latex2sympy and math-verify cannot swallow it.
  With the defaults (task 5 s < ``data.score_timeout`` 10 s) the task's own limit fires first:
  the completion scores 0 with its ``pred`` kept and is counted in :attr:`MathTask.timeouts`
  (logged once); if the outer limit is the shorter one, SafeScorer's time-out fires as usual
  and is counted in ``rollout/score_timeouts``.
* Where a signal cannot be used (a non-main thread, a platform without ``setitimer``, a
  SIGALRM handler not installed from Python) or with ``isolation="process"``, the comparison
  runs in a persistent worker process (``python -c``, importing math-verify but not torch,
  started on first use, ~1 s). The worker applies the same deadline in its own main thread
  and answers; if it does not answer within ``timeout + 1`` s (a computation stuck in C that
  no signal interrupts) or the wait is interrupted (e.g. by SafeScorer's alarm), it is killed
  and a fresh one is started on the next call. ``isolation="process"`` therefore gives a hard
  bound even in the main thread, at ~0.3 ms of IPC per call; calls from several threads share
  one worker, one at a time.

Answers longer than ``max_answer_chars`` (default 1000) are not parsed at all: they score 0
with ``format_ok`` True (a 100k-character expression costs nothing). ``timeout=None`` disables
the limit (and runs in the calling thread).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from .base import Score

if TYPE_CHECKING:  # pragma: no cover - typing only
    import datasets

__all__ = ["DEFAULT_PROMPT", "MathTask", "MathScoring", "equivalent", "extract_final_answer", "gold_answer_text",
           "run_with_deadline", "signal_deadline_usable"]

log = logging.getLogger(__name__)

_SPLITS = ("train", "validation", "test")
T = TypeVar("T")

#: The default user prompt (Qwen2.5-Math / DeepSeek-R1 wording); ``{problem}`` is replaced.
DEFAULT_PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."

_MAX_FEEDBACK_PRED = 100
_WORKER_GRACE_S = 1.0  # the worker's own deadline answers first; this is the hard-kill margin
_NO_ANSWER = "Your response did not contain a final answer in \\boxed{...} or <answer>...</answer>."


# ---------------------------------------------------------------------------- extraction
_BOX_OPENERS = ("\\boxed{", "\\fbox{")
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


def _closing_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the group that starts right after ``text[start - 1] == "{"``;
    -1 if it is never closed. A backslash escapes the next character (``\\{``, ``\\}``,
    ``\\\\``), as in TeX. Linear time."""
    depth, i, n = 1, start, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _strip_delimiters(text: str) -> str:
    text = text.strip()
    for left, right in _DELIMITERS:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            return text[len(left):len(text) - len(right)].strip()
    return text


def _last_final(text: str) -> Optional[str]:
    """The raw content of the last ``\\boxed{}`` / ``\\fbox{}`` / ``<answer>`` (see the module docstring)."""
    box_at, opener = max((text.rfind(o), o) for o in _BOX_OPENERS)
    tag_at = text.rfind("<answer>")
    if box_at < 0 and tag_at < 0:
        return None
    if box_at > tag_at:
        content_at = box_at + len(opener)
        end = _closing_brace(text, content_at)
    else:
        content_at = tag_at + len("<answer>")
        end = text.find("</answer>", content_at)
    return None if end < 0 else text[content_at:end]


def extract_final_answer(text: str) -> Optional[str]:
    """The final answer of ``text``: the content of the last ``\\boxed{...}`` / ``\\fbox{...}``
    or ``<answer>...</answer>`` (whichever opens last), math delimiters and whitespace
    stripped; ``None`` when there is none, the last opener is not closed, or it is empty.

    >>> extract_final_answer("\\\\boxed{1} wait, <answer> $\\\\frac{1}{2}$ </answer>")
    '\\\\frac{1}{2}'
    >>> extract_final_answer("<answer>2</answer> so \\\\boxed{\\\\{1, 2\\\\}}")
    '\\\\{1, 2\\\\}'
    >>> extract_final_answer("\\\\boxed{3} and finally \\\\boxed{4") is None
    True
    """
    raw = _last_final(text)
    if raw is None:
        return None
    answer = _strip_delimiters(raw)
    return answer or None


def gold_answer_text(value: Any) -> Optional[str]:
    """The gold answer text of a dataset value; None when unusable (see :class:`MathTask`).

    Numbers become their text (``18.0`` -> ``"18"``), GSM8K's ``"... #### 72"`` becomes ``"72"``
    and a solution with ``\\boxed{...}`` its last box; math delimiters are stripped.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or abs(value) == float("inf"):  # NaN, inf
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if "####" in text:
        text = text.rpartition("####")[2]
    elif any(o in text for o in _BOX_OPENERS) or "<answer>" in text:
        boxed = extract_final_answer(text)
        if boxed is not None:
            text = boxed
    text = _strip_delimiters(text)
    return text or None


# ---------------------------------------------------------------------------- time limit
class _Deadline(BaseException):
    """Raised by :func:`run_with_deadline`'s SIGALRM handler. A ``BaseException``, so that the
    ``except Exception`` clauses of sympy / latex2sympy / math-verify cannot swallow it."""


def signal_deadline_usable() -> bool:
    """Whether :func:`run_with_deadline` can be used here: a POSIX ``setitimer``, the main
    thread, and a SIGALRM disposition it can restore (installed from Python, or the default)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return signal.getsignal(signal.SIGALRM) is not None
    except ValueError:  # pragma: no cover - a sub-interpreter
        return False


def run_with_deadline(fn: Callable[[], T], seconds: float) -> tuple[bool, Optional[T]]:
    """``(True, fn())``, or ``(False, None)`` when ``fn`` ran past ``seconds`` (interrupted by
    ``SIGALRM``). Main thread only (:func:`signal_deadline_usable`).

    Composes with an outer ``ITIMER_REAL`` timer (e.g. :class:`lit_scsdpo.data.SafeScorer`'s):
    arms ``min(seconds, outer remaining)``, then restores the outer handler and re-arms the
    outer timer with its remaining time (at least 1 µs, so an outer deadline that passed while
    ``fn`` ran still fires, right after this returns). Exceptions of ``fn`` propagate.
    """
    previous = signal.getsignal(signal.SIGALRM)
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    started = time.monotonic()
    limit = seconds if outer_left <= 0 else min(seconds, outer_left)

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, max(limit, 1e-6))
            try:
                return True, fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Deadline:
            return False, None
    finally:
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            left = outer_left - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-6), outer_interval)


# ---------------------------------------------------------------------------- math-verify
class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its time-out is off; here that is the design, not a risk."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_mv: Optional[dict[str, Any]] = None


def _math_verify() -> dict[str, Any]:
    """math-verify's ``parse`` / ``verify`` and the extraction config (imported once)."""
    global _mv
    if _mv is None:
        try:
            from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
        except ImportError as exc:
            raise ImportError("MathTask needs the optional dependency math-verify: "
                              "pip install 'lit-scsdpo[math]'") from exc
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("math-verify")
        except PackageNotFoundError:  # pragma: no cover - imported from a source tree
            found = None
        if found is not None and tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < (0, 8):
            # before 0.8, parsing_timeout=None reached signal.alarm(None): a TypeError that
            # math-verify swallows, so every answer would silently score 0
            raise ImportError(f"MathTask needs math-verify >= 0.8 (found {found}): "
                              "pip install 'lit-scsdpo[math]'")
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
        # the answer is already isolated and wrapped in \boxed{}: LaTeX first, then a plain
        # expression (``2**3``); a string fallback lets identical unparseable answers match
        config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
        _mv = {"parse": parse, "verify": verify, "config": config}
        # the first parses build the ANTLR parser and import sympy modules lazily (~0.5 s):
        # do it now, outside any deadline, or the first answers of a run could time out
        for pred, gold in _WARM_UP:
            equivalent(pred, gold)
    return _mv


_WARM_UP = (("1", "1"), ("0.5", "\\frac{1}{2}"), ("[1,2)", "(1,2)"), ("x^2+2x+1", "(x+1)^2"),
            ("\\{1,2\\}", "\\{2,1\\}"), ("x = 3", "3"), ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "(1,2)"))


def _parse(answer: str) -> list:
    mv = _math_verify()
    return mv["parse"]("\\boxed{" + answer + "}", extraction_config=mv["config"],
                       fallback_mode="first_match", extraction_mode="any_match", parsing_timeout=None)


def equivalent(pred: str, gold: str) -> bool:
    """Whether the answer texts ``pred`` and ``gold`` are equal by math-verify (no time limit:
    callers wrap it, see the module docstring). Never raises an ``Exception``."""
    try:
        gold_parsed = _parse(gold)
        pred_parsed = _parse(pred)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(_math_verify()["verify"](gold_parsed, pred_parsed, timeout_seconds=None))
    except Exception:  # noqa: BLE001 - math-verify catches most; RecursionError, MemoryError, ...
        return False


def _verdict(pred: str, gold: str, timeout: Optional[float]) -> str:
    """``"correct"`` / ``"wrong"`` / ``"timeout"``, in this thread (signal deadline if set)."""
    if timeout is None:
        return "correct" if equivalent(pred, gold) else "wrong"
    done, same = run_with_deadline(lambda: equivalent(pred, gold), timeout)
    return "timeout" if not done else ("correct" if same else "wrong")


# ---------------------------------------------------------------------------- worker process
# Runs `_serve` without importing `lit_scsdpo/__init__.py` (torch, lightning: seconds):
# the two packages are stubbed with their real paths, so only tasks/base.py and this file load.
_BOOTSTRAP = """\
import sys, types
if sys.path and sys.path[0] == "":
    del sys.path[0]  # not the caller's working directory: nothing there may shadow a module
for name, path in (("lit_scsdpo", sys.argv[1]), ("lit_scsdpo.tasks", sys.argv[2])):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from lit_scsdpo.tasks.math import _serve
_serve()
"""


def _serve() -> None:  # pragma: no cover - runs in the worker process (tested through MathTask)
    """The worker's loop: one JSON request per stdin line, one JSON reply per line."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not corrupt the protocol
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's; stdin EOF ends us

    def reply(obj: dict) -> None:
        proto.write(json.dumps(obj).encode("ascii") + b"\n")
        proto.flush()

    try:
        _math_verify()
    except ImportError as exc:
        reply({"ready": False, "error": str(exc)})
        return
    reply({"ready": True})
    use_signal = signal_deadline_usable()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        timeout = request["timeout"] if use_signal else None  # else the parent's kill bounds it
        try:
            status = _verdict(request["pred"], request["gold"], timeout)
        except BaseException:  # noqa: BLE001 - MemoryError and the like: answer, keep serving
            status = "error"
        reply({"id": request["id"], "status": status})


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except Exception:  # noqa: BLE001 - best effort
        pass
    try:
        proc.stdin.close()  # stdout is the reader thread's: it closes it at EOF
    except Exception:  # noqa: BLE001
        pass


def _pump(stream: Any, lines: "queue.Queue[Optional[bytes]]") -> None:
    try:
        for line in stream:
            lines.put(line)
    finally:
        lines.put(None)  # EOF: the worker exited
        stream.close()


class _Worker:
    """A persistent ``python -c`` process that runs :func:`_verdict`; see the module docstring."""

    def __init__(self, startup_timeout: float = 120.0) -> None:
        self.startup_timeout = startup_timeout
        self._lock = threading.Lock()
        self._proc: Optional[subprocess.Popen] = None
        self._lines: Optional[queue.Queue] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._next_id = 0
        self._pid = os.getpid()
        self.starts = 0  # processes started (tests, diagnostics)

    def _start(self) -> None:
        tasks_dir = os.path.dirname(os.path.abspath(__file__))
        package_dir = os.path.dirname(tasks_dir)
        proc = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, package_dir, tasks_dir],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True,
                         name="math-verify-worker-reader").start()
        self._proc, self._lines = proc, lines
        self._finalizer = weakref.finalize(self, _stop, proc)
        self.starts += 1
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = b""
        except BaseException:
            self.close()
            raise
        ready = json.loads(line) if line else {}
        if not ready.get("ready"):
            self.close()
            why = ready.get("error") or f"no answer within {self.startup_timeout} s or it exited"
            raise RuntimeError(f"MathTask: the math-verify worker process did not start: {why}")

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # calls _stop(proc) once
        self._proc = self._lines = self._finalizer = None

    def check(self, pred: str, gold: str, timeout: float) -> str:
        """``"correct"`` / ``"wrong"`` / ``"timeout"`` / ``"error"`` from the worker; a worker
        that overruns ``timeout`` by more than a second is killed (restarted on the next call)."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the worker (and its pipes) is the parent's
                if self._finalizer is not None:
                    self._finalizer.detach()  # never kill the parent's worker from here
                self._proc = self._lines = self._finalizer = None
                self._pid = os.getpid()
            if self._proc is None or self._proc.poll() is not None:
                self.close()
                self._start()
            self._next_id += 1
            request = {"id": self._next_id, "pred": pred, "gold": gold, "timeout": timeout}
            try:
                self._proc.stdin.write(json.dumps(request).encode("ascii") + b"\n")
                self._proc.stdin.flush()
                line = self._lines.get(timeout=timeout + _WORKER_GRACE_S)
            except queue.Empty:  # stuck where no signal reaches: kill it
                self.close()
                return "timeout"
            except OSError:  # it died (BrokenPipeError)
                self.close()
                return "error"
            except BaseException:  # e.g. SafeScorer's alarm: its answer would be stale, drop it
                self.close()
                raise
            reply = json.loads(line) if line else {}
            if reply.get("id") != self._next_id:
                self.close()
                return "error"
            return str(reply["status"])


# ---------------------------------------------------------------------------- loading
def _one_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _split_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"path_or_id:split"`` -> ``(path_or_id, split)``; an existing path is taken whole."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    head, _, tail = spec.rpartition(":")
    if head and tail and not any(c in tail for c in "/\\"):
        return head, tail
    return spec, None


def _json_lines_path(path: str) -> bool:
    """JSON lines (line numbers make sense), rather than one JSON document."""
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                return not line.lstrip().startswith(b"[")
    return False


def _line_of(path: str, index: int) -> Optional[int]:
    """1-based line of the ``index``-th row of a JSON-lines file (blank lines are skipped)."""
    with open(path, "rb") as f:
        n = -1
        for line_no, line in enumerate(f, 1):
            if line.strip():
                n += 1
                if n == index:
                    return line_no
    return None


def _json_problem(path: str) -> Optional[str]:
    """Why a JSON-lines file the ``datasets`` loader refused is unreadable, if a re-read says
    (None for a JSON document, ``[...]``, whose problem the loader's message describes)."""
    rows = 0
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if rows == 0 and line.lstrip().startswith(b"["):
                return None
            try:
                value = json.loads(line.decode("utf-8"))
            except (ValueError, RecursionError) as err:
                return f"is not JSON lines: {_one_line(err)} (line {line_no})"
            if not isinstance(value, dict):
                return f"is not JSON lines: expected a JSON object, got {type(value).__name__} (line {line_no})"
            rows += 1
    return "is empty (no rows)" if rows == 0 else None


def _bad(field: str, value: Any, expected: str, what: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"field {field!r} is missing or empty (expected {what}, {expected})"
    if isinstance(value, str):  # a gold answer with nothing in it: "####", "\\boxed{}"
        return f"field {field!r} holds no answer: {value[:80]!r} (expected {what}, {expected})"
    return f"field {field!r} must be {expected} ({what}), got {type(value).__name__}"


@dataclass
class MathScoring:
    """How :class:`MathTask` compares answers (see the module docstring for the time limit).

    Attributes:
        timeout: seconds per :meth:`MathTask.score` call (parsing both answers and comparing
            them); None: no limit. Keep it below ``data.score_timeout``.
        isolation: ``"auto"``: a SIGALRM deadline in the main thread, a worker process in
            other threads; ``"process"``: always the worker process (a hard bound, even on a
            computation stuck in C).
        max_answer_chars: a longer extracted answer is not parsed and scores 0 (None: no cap).
    """

    timeout: Optional[float] = 5.0
    isolation: str = "auto"
    max_answer_chars: Optional[int] = 1000

    def __post_init__(self) -> None:
        timeout, limit = self.timeout, self.max_answer_chars
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                    or not 0 < timeout < float("inf")):
            raise ValueError(f"scoring.timeout: must be a number of seconds > 0 or None, got {timeout!r}")
        if self.isolation not in ("auto", "process"):
            raise ValueError(f"scoring.isolation: must be 'auto' or 'process', got {self.isolation!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"scoring.max_answer_chars: must be an integer >= 1 or None, got {limit!r}")


class MathTask:
    """Math problems scored by math-verify (see :mod:`lit_scsdpo.tasks.math`).

    Args:
        test_source: where the test split comes from: a local ``.jsonl`` / ``.json`` /
            ``.parquet`` / ``.csv`` file, a local folder (``Dataset.save_to_disk`` or data
            files), or a Hub id; ``:split`` picks a split (``"HuggingFaceH4/MATH-500:test"``).
        train_source: the train split's source (None: evaluation only).
        validation_source: the validation split's source (None: the test source, as in the
            papers, which validate on the test set).
        hub_config: the dataset configuration of Hub sources (``"main"`` for ``openai/gsm8k``).
        problem_field: the column holding the problem text (``question`` for GSM8K).
        answer_field: the column holding the gold answer: a bare answer, a number, a solution
            ending in ``\\boxed{}`` (MATH's ``solution``) or GSM8K's ``... #### 72``.
        id_field: a column of unique ids for the ``uid`` (e.g. MATH-500's ``unique_id``);
            None: the row index.
        source_field: a column whose value buckets the metrics (``data_source`` becomes
            ``"{name}/{value}"``, e.g. ``level`` or ``subject``); None: ``name``.
        prompt: the user message; ``{problem}`` is replaced by the problem (default: the
            problem, then "Please reason step by step, and put your final answer within
            \\boxed{}.").
        system_prompt: an optional system message.
        scoring: the time limit, its isolation and the answer-length cap
            (:class:`MathScoring`: 5 s, ``auto``, 1000 characters).
        name: the task name, prefix of ``uid`` and ``data_source``.
    """

    def __init__(
        self,
        test_source: str,
        train_source: Optional[str] = None,
        validation_source: Optional[str] = None,
        hub_config: Optional[str] = None,
        problem_field: str = "problem",
        answer_field: str = "answer",
        id_field: Optional[str] = None,
        source_field: Optional[str] = None,
        prompt: str = DEFAULT_PROMPT,
        system_prompt: Optional[str] = None,
        scoring: MathScoring = MathScoring(),
        name: str = "math",
    ) -> None:
        for field, value, optional in (("test_source", test_source, False), ("train_source", train_source, True),
                                       ("validation_source", validation_source, True),
                                       ("hub_config", hub_config, True), ("problem_field", problem_field, False),
                                       ("answer_field", answer_field, False), ("id_field", id_field, True),
                                       ("source_field", source_field, True), ("name", name, False)):
            if not (optional and value is None) and (not isinstance(value, str) or not value):
                raise ValueError(f"{field}: must be a non-empty string{' or None' if optional else ''}, got {value!r}")
        if not isinstance(prompt, str) or "{problem}" not in prompt:
            raise ValueError(f"prompt: must be a string containing {{problem}}, got {prompt!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise ValueError(f"system_prompt: must be a string or None, got {type(system_prompt).__name__}")
        _math_verify()  # fail now, with the install hint, rather than at the first score
        self.test_source = test_source
        self.train_source = train_source
        self.validation_source = validation_source
        self.hub_config = hub_config
        self.problem_field, self.answer_field = problem_field, answer_field
        self.id_field, self.source_field = id_field, source_field
        self.prompt, self.system_prompt = prompt, system_prompt or None
        self.scoring = scoring
        self.timeout = None if scoring.timeout is None else float(scoring.timeout)
        self.isolation = scoring.isolation
        self.max_answer_chars = scoring.max_answer_chars
        self.name = name
        self.timeouts = 0  # score calls that hit this task's time limit
        self._worker: Optional[_Worker] = None

    # ------------------------------------------------------------------ loading
    def _source(self, split: str) -> tuple[Optional[str], str]:
        if split == "train":
            return self.train_source, "train"
        if split == "validation" and self.validation_source is not None:
            return self.validation_source, "validation"
        return self.test_source, "test"

    def _read(self, spec: str, default_split: str) -> tuple[Any, str, Optional[str]]:
        """``(dataset, where, json_lines_path)`` of a source (see the class docstring)."""
        import datasets

        path, split = _split_spec(spec)
        split = split or default_split
        if os.path.isfile(path):
            builder = _FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
            if builder is None:
                raise ValueError(f"task {self.name!r}: {path} is not a supported file "
                                 f"(expected one of {', '.join(_FILE_BUILDERS)})")
            try:
                ds = datasets.load_dataset(builder, data_files=path, split="train")
            except Exception as exc:  # noqa: BLE001 - empty, bad JSON, bad parquet
                why = _json_problem(path) if builder == "json" else None
                raise ValueError(f"task {self.name!r}: {path} "
                                 f"{why or 'could not be read: ' + _one_line(exc.__cause__ or exc)}") from exc
            lines = path if builder == "json" and _json_lines_path(path) else None
            return ds, path, lines
        if os.path.isdir(path):
            try:
                ds = datasets.load_from_disk(path)
            except FileNotFoundError:  # not a save_to_disk folder: a folder of data files
                try:
                    ds = datasets.load_dataset(path, split=split)
                except Exception as exc:  # noqa: BLE001
                    raise ValueError(f"task {self.name!r}: {path} could not be read (split {split!r}): "
                                     f"{_one_line(exc)}") from exc
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f"task {self.name!r}: {path} has no split {split!r} "
                                     f"(it has {', '.join(ds)}); pick one with '{path}:<split>'")
                ds = ds[split]
            return ds, path, None
        if path.startswith((".", "/", "~")) or os.path.splitext(path)[1].lower() in _FILE_BUILDERS:
            raise FileNotFoundError(f"task {self.name!r}: source not found: {path}")
        ds = datasets.load_dataset(path, name=self.hub_config, split=split)  # the Hub
        return ds, f"{path} (split {split!r})", None

    def _check(self, row: dict[str, Any], columns: list[str]) -> tuple[Optional[str], Optional[str]]:
        """``(gold answer text, None)`` or ``(None, what is wrong with row)``."""
        for field, role in ((self.problem_field, "problem_field"), (self.answer_field, "answer_field"),
                            (self.id_field, "id_field"), (self.source_field, "source_field")):
            if field is not None and field not in columns:
                return None, (f"field {field!r} is missing (the rows have {', '.join(map(repr, columns))}; "
                              f"set {role} to the right column)")
        problem = row.get(self.problem_field)
        if not isinstance(problem, str) or not problem.strip():
            return None, _bad(self.problem_field, problem, "a non-empty string", "the problem")
        value = row.get(self.answer_field)
        gold = gold_answer_text(value)
        if gold is None:
            return None, _bad(self.answer_field, value, "a non-empty string or a finite number", "the gold answer")
        for field in (self.id_field, self.source_field):
            key = None if field is None else row.get(field)
            if field is not None and (isinstance(key, bool) or not isinstance(key, (str, int))
                                      or (isinstance(key, str) and not key.strip())):
                return None, _bad(field, key, "a non-empty string or an integer",
                                  "an id" if field == self.id_field else "the metrics bucket")
        return gold, None

    def load(self, split: str) -> "datasets.Dataset":
        """``split`` with columns ``uid``, ``data_source``, ``problem`` and ``answer`` (the gold
        answer text), every row checked.

        Raises:
            FileNotFoundError: a local source does not exist.
            ValueError: (one line naming the task, the source and, for a bad row, its 0-based
                index, its 1-based line for JSON lines, and the field) the source is unreadable
                or empty, or a row is unusable.
        """
        import datasets

        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {_SPLITS}")
        spec, default_split = self._source(split)
        if spec is None:
            raise ValueError(f"task {self.name!r} has no {split} source (set {split}_source)")
        ds, where, lines = self._read(spec, default_split)
        try:  # decode every value now, so that no row fails later in a consumer
            rows = list(ds)
        except Exception as exc:  # noqa: BLE001 - odd Arrow structs
            raise ValueError(f"task {self.name!r}: {where} could not be decoded: {_one_line(exc)}") from exc
        if not rows:
            raise ValueError(f"task {self.name!r}: {where} is empty (no rows)")
        columns = list(ds.column_names)
        out: dict[str, list[str]] = {"uid": [], "data_source": [], "problem": [], "answer": []}
        seen: dict[str, int] = {}
        for i, row in enumerate(rows):
            gold, problem = self._check(row, columns)
            key = str(row[self.id_field]) if self.id_field is not None and problem is None else str(i)
            if problem is None and key in seen:
                problem = f"field {self.id_field!r} value {key!r} repeats row {seen[key]} (ids must be unique)"
            if problem is not None:
                line = _line_of(lines, i) if lines else None
                at = f"row {i} (0-based" + (f", line {line})" if line else ")")
                raise ValueError(f"task {self.name!r}: {where} {at}: {problem}")
            seen[key] = i
            out["uid"].append(f"{self.name}/{split}/{key}")
            out["data_source"].append(self.name if self.source_field is None
                                      else f"{self.name}/{row[self.source_field]}")
            out["problem"].append(row[self.problem_field])
            out["answer"].append(gold)
        features = datasets.Features({k: datasets.Value("string") for k in out})
        return datasets.Dataset.from_dict(out, features=features)

    # ------------------------------------------------------------------ Task protocol
    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        """An optional system message, then the prompt with ``{problem}`` filled in."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": self.prompt.replace("{problem}", row["problem"])}]

    def verdict(self, pred: str, gold: str) -> str:
        """``"correct"``, ``"wrong"``, ``"timeout"`` or ``"error"`` (the worker failed) for the
        answer texts ``pred`` and ``gold``, under this task's time limit."""
        if self.timeout is None:
            return _verdict(pred, gold, None)
        if self.isolation == "auto" and signal_deadline_usable():
            return _verdict(pred, gold, self.timeout)
        if self._worker is None:
            self._worker = _Worker()
        return self._worker.check(pred, gold, self.timeout)

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        """Reward 1.0 iff the final answer (the last ``\\boxed{}`` or ``<answer>``) equals the
        gold answer by math-verify, within ``timeout`` seconds; ``pred`` is the answer text.
        It never raises on any completion (only on a row without a usable gold answer);
        feedback never contains the gold answer."""
        pred = extract_final_answer(completion)
        if pred is None:
            return Score(0.0, None, _NO_ANSWER, False)
        if self.max_answer_chars is not None and len(pred) > self.max_answer_chars:
            return Score(0.0, pred, f"Your final answer is too long to check ({len(pred)} characters).", True)
        gold = gold_answer_text(row["answer"])  # load() did this already; rows built elsewhere may not
        if gold is None:
            raise ValueError(f"task {self.name!r}: row uid={row.get('uid')} has no usable gold answer: "
                             f"{str(row['answer'])[:80]!r}")
        status = self.verdict(pred, gold)
        if status == "correct":
            return Score(1.0, pred, "", True)
        if status == "timeout":
            self.timeouts += 1
            if self.timeouts == 1:
                log.warning("task %r: checking an answer took more than %s s (row uid=%s); scored 0 (further "
                            "time-outs are counted in MathTask.timeouts, not logged)",
                            self.name, self.timeout, row.get("uid"))
            return Score(0.0, pred, "Your final answer could not be checked within the time limit.", True)
        if status == "error":
            return Score(0.0, pred, "Your final answer could not be checked.", True)
        shown = pred if len(pred) <= _MAX_FEEDBACK_PRED else pred[:_MAX_FEEDBACK_PRED] + "..."
        return Score(0.0, pred, f"Your final answer {shown} is incorrect.", True)

    # ------------------------------------------------------------------ housekeeping
    def close(self) -> None:
        """Stop the worker process, if one was started (it also stops with the task)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles start their own worker
        state = dict(self.__dict__)
        state["_worker"] = None
        return state

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(test_source={self.test_source!r}, train_source={self.train_source!r}, "
                f"timeout={self.timeout}, isolation={self.isolation!r}, name={self.name!r})")

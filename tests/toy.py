"""A test task whose reward a random-init tiny model can earn: the arithmetic questions, but a
response is "correct" iff it contains a digit. Gives a spread of pass rates at G=4-8 so that
every branch of SDPO / SC-SDPO / GRPO runs in tests without a pretrained model."""

from typing import Any

from lit_scsdpo.tasks import ArithmeticTask, Score


class DigitTask(ArithmeticTask):
    def score(self, completion: str, row: dict[str, Any]) -> Score:
        digits = [c for c in completion if c.isdigit()]
        ok = bool(digits)
        return Score(reward=float(ok), pred=digits[0] if ok else None,
                     feedback="" if ok else "no digit in your response", format_ok=ok)


class CrashingTask(ArithmeticTask):
    """A verifier that crashes on every third call: the run must survive and count it."""

    calls = 0

    def score(self, completion: str, row: dict[str, Any]) -> Score:
        CrashingTask.calls += 1
        if CrashingTask.calls % 3 == 0:
            raise RuntimeError("verifier bug")
        return super().score(completion, row)

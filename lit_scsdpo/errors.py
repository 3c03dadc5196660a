"""One-line errors: what a launch that cannot work shows instead of a traceback.

The console script (:mod:`lit_scsdpo.entry`) and the CLI (:mod:`lit_scsdpo.cli`) both use
these: the real cause pulled out of the argument parser's wrapping, and jsonargparse's long
reports shortened to the line that says what is wrong. ``LIT_SCSDPO_TRACEBACK=1`` shows the
full traceback (and the parser's full message) instead.
"""

from __future__ import annotations

import re
import traceback
from typing import Optional

TRACEBACK_ENV = "LIT_SCSDPO_TRACEBACK"


def root_cause(exc: BaseException) -> BaseException:
    """``exc``, or, when the argument parser wrapped it (jsonargparse reports an error in a
    class's ``__init__`` as a 70-line "Union" report), the first exception of its chain that
    was not raised inside the parser."""
    seen: list[BaseException] = []
    e: Optional[BaseException] = exc
    while e is not None and e not in seen and len(seen) < 32:
        frames = traceback.extract_tb(e.__traceback__)
        if not frames or "jsonargparse" not in frames[-1].filename:
            return e
        seen.append(e)
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return exc


def one_line(exc: BaseException) -> str:
    cause = root_cause(exc)
    text = (str(cause).strip().splitlines() or [""])[0].strip()
    plain = isinstance(cause, (ValueError, OSError, ImportError)) and text
    return text if plain else f"{type(cause).__name__}: {text}".rstrip(": ")


def condense_parser_message(message: str) -> str:
    """The line of a jsonargparse error that says what is wrong."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    key = re.search(r'Parser key "([^"]+)"', message)
    unknown = re.search(r'No action for key "([^"]+)"', message)
    if unknown:
        where = f" under {key.group(1)}" if key else ""
        return f"unknown option {unknown.group(1)!r}{where} (misspelt, or not an argument of the class given)"
    skip = ("Does not validate against", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType'>",
            "Parser key")
    detail = [ln.lstrip("- ") for ln in lines if not ln.startswith(skip)]
    head = f"{key.group(1)}: " if key else ""
    if detail:
        specific = [d for d in detail if not d.startswith("Problem with given class_path")]
        return head + (specific[-1] if specific else detail[0])
    return lines[0] if lines else "invalid arguments"

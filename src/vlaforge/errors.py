"""vlaforge's own error type for bad input, and the "did you mean" hint its messages share.

`InputError` means "what the user gave is wrong": a missing or malformed file, a flag out of range, a
checkpoint that does not fit the environment. Its message names the file, key or shape and says what to
do. The `vlaforge` command reports these as one line with exit status 2; every other exception (an
internal bug, a CUDA out-of-memory) keeps its traceback.

It subclasses `ValueError` so that library callers who catch `ValueError` keep working.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad input from the user: the message names what was wrong and what to do about it."""


def closest(value: object, choices: Iterable[object]) -> str | None:
    """The choice `value` most likely meant: an exact case-insensitive match first, then difflib's closest
    (cutoff 0.6); None when nothing is close."""
    names = [str(c) for c in choices]
    text = str(value)
    same_case = [n for n in names if n.lower() == text.lower()]
    if same_case:
        return same_case[0]
    close = difflib.get_close_matches(text.lower(), [n.lower() for n in names], n=1)
    return next((n for n in names if close and n.lower() == close[0]), None)


def did_you_mean(value: object, choices: Iterable[object]) -> str:
    """'; did you mean 'x'?' for the closest choice, or '' when none is close."""
    best = closest(value, choices)
    return f"; did you mean {best!r}?" if best is not None else ""


__all__ = ["InputError", "closest", "did_you_mean"]

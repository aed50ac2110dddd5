"""vlaforge's own error type for bad input.

`InputError` means "what the user gave is wrong": a missing or malformed file, a flag out of range, a
checkpoint that does not fit the environment. Its message names the file, key or shape and says what to
do. The `vlaforge` command reports these as one line with exit status 2; every other exception (an
internal bug, a CUDA out-of-memory) keeps its traceback.

It subclasses `ValueError` so that library callers who catch `ValueError` keep working.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: the message names what was wrong and what to do about it."""


__all__ = ["InputError"]

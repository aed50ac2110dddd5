"""Third-party warnings held back while a command runs, then printed once each after its output.

A library's FutureWarning printed in the middle of a progress bar breaks the bar and repeats on every
worker batch. `deferred_warnings` records the warnings raised from outside vlaforge while the command
runs and prints each distinct one (category and message) once, on one line, when the command ends;
vlaforge's own warnings are shown as usual.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

_PACKAGE = str(Path(__file__).resolve().parent)


def _third_party(filename: str) -> bool:
    return not str(Path(filename).resolve()).startswith(_PACKAGE)


@contextmanager
def deferred_warnings(stream: TextIO | None = None) -> Iterator[dict[tuple[str, str], str]]:
    """Records third-party warnings while the block runs; prints each distinct one once at its end.

    Yields the record: (category, first line of the message) -> the package that raised it.
    """
    seen: dict[tuple[str, str], str] = {}
    with warnings.catch_warnings():  # restores showwarning and the filters on the way out
        shown = warnings.showwarning

        def record(message: Any, category: type, filename: str, lineno: int, *rest: Any, **kw: Any) -> None:
            if not _third_party(filename):
                shown(message, category, filename, lineno, *rest, **kw)
                return
            text = (str(message).strip().splitlines() or [""])[0]
            seen.setdefault((category.__name__, text), _package_of(filename))

        warnings.showwarning = record
        try:
            yield seen
        finally:
            out = stream or sys.stderr
            for (category, text), package in seen.items():
                print(f"warning (shown once, raised in {package}): {category}: {text}", file=out)


def _package_of(filename: str) -> str:
    """'.../site-packages/transformers/x.py' -> 'transformers'."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return Path(filename).stem


__all__ = ["deferred_warnings"]

"""``metrics.jsonl``: the append-only log of every training command (train, rl, idm, latent, worldmodel).

One JSON object per line, appended as the run goes. A process killed while writing leaves its last line
cut short, and a reader (the UI following a run) can meet a line still being written; both read as "not a
row yet" here rather than as an error. A resumed run drops the rows logged after the checkpoint it resumes
from (they are logged again), and any torn line with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlaforge.atomic import write_text

FILE = "metrics.jsonl"


def append(path: str | Path, row: dict[str, Any]) -> None:
    """Appends one row (a JSON object) as a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics log; blank, torn or non-object lines are left out. [] when there is no file."""
    path = Path(path)
    return _rows(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else []


def _rows(lines: list[str]) -> list[dict[str, Any]]:
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def keep_only(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrites the log (atomically) with the rows `keep` accepts, dropping torn lines; untouched when every
    line is a row it keeps (or there is no file)."""
    path = Path(path)
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [r for r in _rows(lines) if keep(r)]
    if len(kept) != len(lines):
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))

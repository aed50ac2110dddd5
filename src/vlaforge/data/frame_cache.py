"""Decoded-frame caches: one uint8 memmap per camera and size, built once per node under a file lock.

Both dataset readers (LeRobot v3 videos, RLDS encoded images) decode a camera's frames once, at the
training resolution, into ``<cache_dir>/<stem>.u8`` (raw uint8, C order, the shape in the sidecar) with a
JSON sidecar ``<stem>.json`` fingerprinting the source files and the size. A cache is fresh when its byte
size and its sidecar match; otherwise it is rebuilt.

Design choices:

- Several processes (torchrun ranks) opening a missing cache at once: the first takes an exclusive
  `fcntl.flock` on ``<stem>.lock`` and builds; the others block on the lock, then find it fresh. No
  process group is needed, and a node decodes once.
- Atomic (`vlaforge.atomic`): the data is written under a temporary name and renamed into place before
  the sidecar is written (also atomically), so a crash mid-build leaves no cache that looks fresh.
- The cache holds raw bytes plus a JSON sidecar: nothing is pickled, and the memmap is shared by the page
  cache of every process reading it.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from vlaforge.atomic import atomic_write, write_json


class BuildLock:
    """An exclusive `fcntl.flock` on `path` while a cache is built: one process per node builds, the others
    wait for it and then find the cache fresh. Opening the lock file raises `OSError` in a read-only place.
    """

    def __init__(self, path: Path, what: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+")  # noqa: SIM115 (held until __exit__)
        self.what = what

    def __enter__(self) -> BuildLock:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            tqdm.write(f"waiting for another process to build {self.what}")
            fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def cached_frames(
    cache_dir: Path,
    stem: str,
    shape: tuple[int, ...],
    fingerprint: dict[str, Any],
    build: Callable[[np.memmap], None],
    built: list[str] | None = None,
) -> np.memmap:
    """The read-only uint8 memmap `cache_dir/stem.u8` of `shape`, built by `build(out)` when not fresh.

    Args:
        cache_dir: the cache directory (created when missing).
        stem: file stem, e.g. "observation.images.corner2.64x64".
        shape: the array's shape, e.g. (N, h, w, 3).
        fingerprint: JSON-able description of the source (files, sizes, mtimes, resize rule); a cache whose
            sidecar differs is rebuilt.
        build: fills the writable memmap it is given (every element).
        built: when given, `stem` is appended to it when this call built the cache.
    """
    data_path = cache_dir / f"{stem}.u8"
    side_path = cache_dir / f"{stem}.json"
    nbytes = int(np.prod(shape))

    def fresh() -> bool:
        try:
            return data_path.stat().st_size == nbytes and json.loads(side_path.read_text()) == fingerprint
        except (OSError, json.JSONDecodeError):
            return False

    if not fresh():
        with BuildLock(cache_dir / f"{stem}.lock", f"the frame cache {data_path}"):
            if not fresh():  # nobody built it while we waited
                side_path.unlink(missing_ok=True)
                with atomic_write(data_path) as tmp:
                    out = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
                    build(out)
                    out.flush()
                    del out
                write_json(side_path, fingerprint, indent=None)  # last: it marks the data complete
                if built is not None:
                    built.append(stem)
    return np.memmap(data_path, dtype=np.uint8, mode="r", shape=shape)


def file_fingerprint(paths: list[Path], root: Path) -> list[list[Any]]:
    """[[path relative to root, size, mtime_ns], ...]: changes when any file is replaced or edited."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.relative_to(root)), st.st_size, st.st_mtime_ns])
    return out

"""The sha256 of a model's weights, as `vlaforge eval` records and `vlaforge serve` announces it.

A sharded checkpoint (Hugging Face's `model-0000i-of-0000n.safetensors` with an index) is hashed over all of
its shards' bytes in order, never over its index: the index names tensors and shards, so every fine-tune of
one model has the same one. Hashing 15 GB takes about a minute, so the result is cached in a small JSON file
beside the weights, keyed by each shard's name, size and mtime_ns (what `make` and `rsync` trust); a
directory we cannot write to is hashed every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from vlaforge.atomic import write_json

CACHE_FILE = ".vlaforge-sha256.json"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """The sha256 (hex) of one file's bytes."""
    return sha256_files([path], block=block)


def sha256_files(paths: Sequence[str | Path], block: int = 1 << 20) -> str:
    """The sha256 (hex) of the files' bytes one after the other (for one file: its own sha256)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(block):
                h.update(chunk)
    return h.hexdigest()


def _key(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"name": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def weights_sha256(paths: Sequence[str | Path]) -> str:
    """`sha256_files(paths)`, cached in `CACHE_FILE` beside the first file (see the module docstring)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no weight files to hash")
    cache = paths[0].parent / CACHE_FILE
    entry = ",".join(p.name for p in paths)
    key = _key(paths)
    try:
        entries = json.loads(cache.read_text())["entries"]
        if entries[entry]["files"] == key:
            return str(entries[entry]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        entries = {}
    digest = sha256_files(paths)
    if _key(paths) != key:  # a shard changed while it was read: answer, but remember nothing
        return digest
    if not isinstance(entries, dict):
        entries = {}
    entries[entry] = {"files": key, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only checkpoint: hash it again next time
        write_json(cache, {"entries": entries})
    return digest


__all__ = ["CACHE_FILE", "sha256_file", "sha256_files", "weights_sha256"]

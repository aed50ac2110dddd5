"""The `model_sha256` a server announces is the hash of the weights themselves (every shard, in order), so
two fine-tunes of one model never share it; it is cached beside the weights, recomputed when a shard
changes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vlaforge.serve.server import openvla_sha256
from vlaforge.weights_hash import sha256_file

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def _checkpoint(root: Path, seed: int) -> Path:
    """An OpenVLA-style directory: the index of a sharded checkpoint and two shards of `seed`'s bytes."""
    root.mkdir(parents=True)
    index = {"metadata": {"total_size": 2048}, "weight_map": {"a.weight": SHARDS[0], "b.weight": SHARDS[1]}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    rng = np.random.default_rng(seed)
    for name in SHARDS:
        (root / name).write_bytes(rng.bytes(1024))
    return root


def _concatenated(root: Path) -> str:
    return hashlib.sha256(b"".join((root / n).read_bytes() for n in SHARDS)).hexdigest()


def test_two_finetunes_with_one_index_have_different_hashes(tmp_path):
    a, b = _checkpoint(tmp_path / "a", 0), _checkpoint(tmp_path / "b", 1)
    assert sha256_file(a / "model.safetensors.index.json") == sha256_file(b / "model.safetensors.index.json")
    assert openvla_sha256(a) != openvla_sha256(b)
    assert openvla_sha256(a) == _concatenated(a)  # every shard's bytes, in the index's order
    single = tmp_path / "single"
    single.mkdir()
    (single / "model.safetensors").write_bytes(b"weights")
    assert openvla_sha256(single) == hashlib.sha256(b"weights").hexdigest()


def test_the_hash_is_cached_and_recomputed_when_a_shard_changes(tmp_path):
    from vlaforge.weights_hash import CACHE_FILE

    root = _checkpoint(tmp_path / "ckpt", 0)
    first = openvla_sha256(root)
    cache = json.loads((root / CACHE_FILE).read_text())
    assert first in json.dumps(cache) and all(name in json.dumps(cache) for name in SHARDS)
    # Same name, size and mtime: the cache answers (the bytes are not read again).
    shard = root / SHARDS[1]
    stat = shard.stat()
    shard.write_bytes(bytes(1024))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert openvla_sha256(root) == first
    # A new mtime (or size): hashed again, and the cache rewritten.
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = openvla_sha256(root)
    assert second == _concatenated(root) != first
    shard.write_bytes(bytes(1000))
    assert openvla_sha256(root) == _concatenated(root) != second
    assert _concatenated(root) in (root / CACHE_FILE).read_text()


def _writable(root: Path) -> bool:
    try:
        (root / "probe").write_bytes(b"")
    except OSError:
        return False
    (root / "probe").unlink()
    return True


def test_a_read_only_checkpoint_is_hashed_without_a_cache(tmp_path):
    from vlaforge.weights_hash import CACHE_FILE

    root = _checkpoint(tmp_path / "ro", 2)
    root.chmod(0o555)
    immutable = False
    if _writable(root) and shutil.which("chattr"):  # root ignores the mode; an immutable directory it cannot
        immutable = subprocess.run(["chattr", "+i", str(root)], capture_output=True).returncode == 0
    try:
        read_only = not _writable(root)
        assert openvla_sha256(root) == _concatenated(root)
        if read_only:
            assert not (root / CACHE_FILE).exists()
            assert sorted(p.name for p in root.iterdir()) == sorted([*SHARDS, "model.safetensors.index.json"])
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(root)], check=True)
        root.chmod(0o755)
    if not read_only:
        pytest.skip("this machine cannot make a directory read-only for this user")

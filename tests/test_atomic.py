"""The one atomic writer: a file or directory appears whole, or the previous version stays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlaforge import atomic
from vlaforge.atomic import StagedDir, atomic_dir, atomic_write, write_json


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert _leftovers(tmp_path) == []


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"old")
    with pytest.raises(ValueError), atomic_write(path) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("disk full")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "x"):
        pass
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_atomic_dir_swaps_a_whole_directory(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "old-shard.safetensors").write_bytes(b"old")
    with atomic_dir(out, overwrite=True) as d:
        (d / "new-shard.safetensors").write_bytes(b"new")
        (d / "sub").mkdir()
        (d / "sub" / "f").write_text("x")
        assert not (out / "new-shard.safetensors").exists()  # nothing visible before the swap
    assert sorted(p.name for p in out.iterdir()) == ["new-shard.safetensors", "sub"]
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_keeps_the_old_directory(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    with pytest.raises(OSError), atomic_dir(out, overwrite=True) as d:
        (d / "model-00001.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    with atomic_dir(out) as d:  # an empty directory may be filled
        (d / "f").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(out):
        pass
    assert (out / "f").read_text() == "1"


def test_staged_dir_commit_and_abort(tmp_path):
    s = StagedDir(tmp_path / "ds")
    (s.path / "meta").mkdir()
    s.abort()
    assert not (tmp_path / "ds").exists() and _leftovers(tmp_path) == []
    s = StagedDir(tmp_path / "ds")
    (s.path / "info.json").write_text("{}")
    assert s.commit() == tmp_path / "ds"
    assert (tmp_path / "ds" / "info.json").is_file()
    with pytest.raises(RuntimeError):
        s.commit()


def test_every_file_and_directory_is_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    with atomic_dir(tmp_path / "out") as d:
        (d / "a").write_text("1")
        (d / "b").mkdir()
        (d / "b" / "c").write_text("2")
    staged = str(tmp_path / f".out.tmp-{os.getpid()}")
    for rel in ("/a", "/b/c", "/b", ""):
        assert staged + rel in synced, (rel, synced)
    assert str(tmp_path) in synced  # the rename itself


def test_a_process_killed_mid_write_leaves_the_old_version(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "weights").write_bytes(b"v1")
    code = f"""
import os
from vlaforge.atomic import atomic_dir
with atomic_dir({str(out)!r}, overwrite=True) as d:
    (d / "weights").write_bytes(b"v2-partial")
    os._exit(9)  # killed before the swap
"""
    rc = subprocess.run([sys.executable, "-c", code]).returncode
    assert rc == 9
    assert (out / "weights").read_bytes() == b"v1"

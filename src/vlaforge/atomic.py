"""Crash-safe writes: a file or a directory appears whole under its final name, or not at all.

Everything vlaforge saves goes through here: checkpoints, policies, exports, datasets, indexes and
caches. One policy for all of them: write under a temporary sibling name, fsync the data and its
directory, `os.replace` onto the final name, fsync the parent. A directory that already exists is
swapped with the new one in one `renameat2(RENAME_EXCHANGE)` where the kernel has it (Linux >= 3.15),
else moved aside then replaced; the old copy is deleted only once the new one is in place, so a crash or
a full disk leaves the old or the new version, never a mix and never nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def fsync_file(path: str | Path) -> None:
    """Flushes a file's data to disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flushes a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except (
        OSError
    ):  # some filesystems refuse fsync on directories; their renames are then as durable as it gets
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsyncs every file under `root` (symlinks are not followed), then every directory, deepest first."""
    for dirpath, _, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                fsync_file(p)
        fsync_dir(dirpath)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two existing paths (Linux renameat2); False where the call is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0  # EINVAL / ENOSYS (filesystem or kernel without it): fall back


def replace_path(staged: str | Path, final: str | Path) -> None:
    """Puts the complete `staged` file or directory at `final`, replacing what is there.

    `final`'s previous content stays until the new one is in place and is then deleted; the parent
    directory is fsynced. `staged` must be on the same filesystem (a sibling)."""
    staged, final = Path(staged), Path(final)
    if not (final.exists() or final.is_symlink()):
        os.replace(staged, final)
    elif final.is_dir() and not final.is_symlink():
        if _exchange(staged, final):  # `staged` now holds the old directory
            fsync_dir(final.parent)
            shutil.rmtree(staged, ignore_errors=True)
            return
        old = _sibling(final, "old")
        _remove(old)
        os.replace(final, old)  # a crash here leaves the old copy as .NAME.old-PID beside it
        os.replace(staged, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    else:
        os.replace(staged, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside `path` to write one file to; on a normal exit the file is fsynced
    and renamed onto `path`, on an exception it is removed and `path` is left as it was.

        with atomic_write(out / "model.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    _remove(tmp)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_write({path}): nothing was written to {tmp}")
        fsync_file(tmp)
        replace_path(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Writes `data` to `path` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Writes `obj` as JSON (with a final newline) to `path` atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


class StagedDir:
    """A directory built under a temporary sibling name and put in place whole by `commit()`.

    For writers with a lifecycle of their own (open, add episodes, finalise); `atomic_dir` wraps it for a
    `with` block. `path` is the staging directory to write into; `final` the name it gets.
    """

    def __init__(self, final: str | Path, *, overwrite: bool = False):
        self.final = Path(final)
        if not overwrite and (self.final.is_symlink() or _non_empty(self.final)):
            raise FileExistsError(f"{self.final} already exists")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.path = _sibling(self.final, "tmp")
        _remove(self.path)
        self.path.mkdir()
        self.done = False

    def commit(self) -> Path:
        """fsyncs the staged tree and swaps it in at `final` (replacing what was there)."""
        if self.done:
            raise RuntimeError(f"{self.final}: staged directory already committed or aborted")
        fsync_tree(self.path)
        replace_path(self.path, self.final)
        self.done = True
        return self.final

    def abort(self) -> None:
        """Removes the staged tree; `final` is left as it was."""
        if not self.done:
            shutil.rmtree(self.path, ignore_errors=True)
            self.done = True


def _non_empty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yields an empty staging directory beside `path`; on a normal exit it replaces `path` whole, on an
    exception it is removed and `path` is left as it was.

    Raises:
        FileExistsError: `path` exists and is not an empty directory, and `overwrite` is false (callers
            check first and give the user their own message).
    """
    staged = StagedDir(path, overwrite=overwrite)
    try:
        yield staged.path
    except BaseException:
        staged.abort()
        raise
    staged.commit()


__all__ = [
    "StagedDir",
    "atomic_dir",
    "atomic_write",
    "fsync_dir",
    "fsync_file",
    "fsync_tree",
    "replace_path",
    "write_bytes",
    "write_json",
    "write_text",
]

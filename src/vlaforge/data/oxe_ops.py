"""The op vocabulary Open X-Embodiment standardisations are written in (`vlaforge.data.oxe_table`).

A spec is a comma-separated list of parts concatenated along the last axis: a step feature (flat RLDS key
without ``steps/``), optionally sliced, then ops in order (``action[-1:]|clip(0,1)|invert``), or a constant
run (``zeros(3)``). The ops re-state OpenVLA's helpers (openvla/openvla @ c8f03f4, prismatic/vla/datasets/
rlds/utils/data_utils.py: binarize_gripper_actions, invert_gripper_actions, rel2abs_gripper_actions;
tensorflow_graphics' euler.from_quaternion) in numpy. The grammar and each op's rule: docs/oxe.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vlaforge.errors import InputError


def clip(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values clipped to [lo, hi]."""
    return np.clip(x, lo, hi)


def invert(x: np.ndarray) -> np.ndarray:
    """1 - x: a gripper stored as 1 = closed becomes 1 = open."""
    return 1.0 - x


def binarize(x: np.ndarray, lo: float = 0.05, hi: float = 0.95) -> np.ndarray:
    """OpenVLA's binarisation of a continuous gripper (data_utils.py), per column of (T, n).

    A value above `hi` is open (1), below `lo` closed (0); a value in between takes the state of the next
    step that is open or closed. Values in between that reach the episode's end keep the last raw value.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    t = np.arange(len(x))
    for c in range(x.shape[1] if len(x) else 0):
        col = x[:, c]
        decided = (col > hi) | (col < lo)
        nxt = np.minimum.accumulate(np.where(decided, t, len(col))[::-1])[::-1]  # next decided step, or T
        settled = (col[np.minimum(nxt, len(col) - 1)] > hi).astype(np.float32)
        out[:, c] = np.where(nxt < len(col), settled, col[-1])
    return out


def rel2abs(x: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Relative gripper commands (+1 close, -1 open, |x| <= threshold hold) to 1 = open / 0 = closed.

    Each step holds the last command given; before the first command the gripper is taken to be in the
    opposite state (it is assumed the first command changes something), and open when there is none.
    """
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    t = np.arange(len(x))
    for c in range(x.shape[1]):
        cmd = np.where(x[:, c] < -threshold, 1, np.where(x[:, c] > threshold, -1, 0))  # +1 open, -1 close
        given = np.flatnonzero(cmd)
        start = -cmd[given[0]] if len(given) else 1
        last = np.maximum.accumulate(np.where(cmd != 0, t, -1))
        state = np.where(last >= 0, cmd[np.maximum(last, 0)], start)
        out[:, c] = state / 2.0 + 0.5
    return out


def quat2euler(q: np.ndarray) -> np.ndarray:
    """(T, 4) quaternions (x, y, z, w) to (T, 3) roll, pitch, yaw, as tensorflow_graphics computes them.

    Angles about x, y, z with R = Rz(yaw) Ry(pitch) Rx(roll); at pitch = +-pi/2 (gimbal lock) yaw is 0.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise InputError(f"quat2euler needs 4 values (x, y, z, w) per step; got {q.shape[-1]}")
    x, y, z, w = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    c = lambda v: np.clip(v, -1.0, 1.0)  # noqa: E731
    r00, r10 = c(1 - 2 * (y * y + z * z)), c(2 * (x * y + w * z))
    r20, r21, r22 = c(2 * (x * z - w * y)), c(2 * (y * z + w * x)), c(1 - 2 * (x * x + y * y))
    r01, r02 = c(2 * (x * y - w * z)), c(2 * (x * z + w * y))
    pitch = -np.arcsin(r20)
    general = np.stack([np.arctan2(r21, r22), pitch, np.arctan2(r10, r00)], -1)
    s = np.where(r20 >= 0, 1.0, -1.0)
    gimbal = np.stack([np.arctan2(-s * r01, -s * r02), -s * np.pi / 2, np.zeros_like(x)], -1)
    return np.where((np.abs(np.abs(r20) - 1.0) < 1e-6)[:, None], gimbal, general).astype(np.float32)


def unzip_f32(x: Any) -> np.ndarray:
    """(T, n) float32 from T zlib-compressed byte strings of float32 values (kuka's state)."""
    rows = [np.frombuffer(zlib.decompress(bytes(b)), dtype=np.float32) for b in x]
    return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


# name -> (function, number of float arguments); the function takes (T, n) and returns (T, m)
PART_OPS: dict[str, tuple[Callable[..., np.ndarray], tuple[int, ...]]] = {
    "clip": (clip, (2,)),
    "invert": (invert, (0,)),
    "binarize": (binarize, (0, 2)),
    "rel2abs": (rel2abs, (0, 1)),
    "quat2euler": (quat2euler, (0,)),
    "unzip_f32": (unzip_f32, (0,)),
}
EPISODE_OPS = {"skip_first": 0, "relabel": 1, "drop_still": 0}  # name -> number of key arguments


@dataclasses.dataclass(frozen=True)
class Op:
    """One op: its name and arguments (numbers for part ops, a feature key for ``relabel``)."""

    name: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return self.name + (f"({','.join(f'{a:g}' if isinstance(a, float) else a for a in self.args)})"
                            if self.args else "")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Part:
    """A run of output dims: a step feature (sliced on its last axis) or a constant, then ops in order.

    Attributes:
        key: the step feature without ``steps/`` ("action/world_vector"); None for a constant run.
        index: a slice (start, stop) of the last axis, (i,) for one element, or None for all of it.
        width: a constant run's number of dims.
        value: a constant run's value.
        ops: part ops applied in order.
    """

    key: str | None
    index: tuple[int | None, ...] | None = None
    width: int = 0
    value: float = 0.0
    ops: tuple[Op, ...] = ()

    def __str__(self) -> str:
        if self.key is None:
            return f"{'ones' if self.value == 1 else 'zeros'}({self.width})"
        idx = ""
        if self.index is not None:
            idx = f"[{self.index[0]}]" if len(self.index) == 1 else \
                "[" + ":".join("" if i is None else str(i) for i in self.index) + "]"  # fmt: skip
        return self.key + idx + "".join(f"|{op}" for op in self.ops)


_PART_RE = re.compile(r"^(?P<key>[A-Za-z0-9_/]+)(?:\[(?P<idx>-?\d*(?::-?\d*)?)\])?(?P<ops>(?:\|[^|]+)*)$")
_CONST_RE = re.compile(r"^(?P<what>zeros|ones)\((?P<n>\d+)\)$")
_OP_RE = re.compile(r"^(?P<name>[a-z0-9_]+)(?:\((?P<args>[^()]*)\))?$")


def parse_op(text: str, vocabulary: Mapping[str, Any], where: str) -> Op:
    m = _OP_RE.match(text.strip())
    if not m or m["name"] not in vocabulary:
        close = difflib.get_close_matches(text.strip(), list(vocabulary), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise InputError(f"{where}: unknown op {text.strip()!r}{hint} (ops: {', '.join(vocabulary)})")
    raw = [a.strip() for a in m["args"].split(",")] if m["args"] else []
    if vocabulary is EPISODE_OPS:
        if len(raw) != EPISODE_OPS[m["name"]]:
            raise InputError(f"{where}: {m['name']} takes {EPISODE_OPS[m['name']]} feature key(s)")
        return Op(m["name"], tuple(raw))
    if len(raw) not in PART_OPS[m["name"]][1]:
        raise InputError(f"{where}: {m['name']} takes {' or '.join(map(str, PART_OPS[m['name']][1]))} args")
    try:
        return Op(m["name"], tuple(float(a) for a in raw))
    except ValueError:
        raise InputError(f"{where}: {text.strip()!r} has a non-numeric argument") from None


def parse_parts(spec: str, where: str = "spec") -> tuple[Part, ...]:
    """Parses an action or state spec ("action[:6], action[-1:]|clip(0,1)|invert") into parts.

    Raises:
        InputError: a part or op that does not parse (naming `where` and the vocabulary).
    """
    parts = []
    for text in re.split(r",\s*(?![^()]*\))", spec.strip()):
        if m := _CONST_RE.match(text):
            parts.append(Part(None, width=int(m["n"]), value=1.0 if m["what"] == "ones" else 0.0))
            continue
        m = _PART_RE.match(text)
        if not m:
            raise InputError(f"{where}: cannot parse {text!r}; a part is KEY[a:b]|op|op, zeros(n) or ones(n)")
        index = None
        if m["idx"] is not None:
            bits = m["idx"].split(":")
            index = tuple(int(b) if b else None for b in bits)
            if len(bits) == 1 and index[0] is None:
                raise InputError(f"{where}: empty index in {text!r}")
        ops = tuple(parse_op(o, PART_OPS, where) for o in m["ops"].split("|")[1:])
        if any(op.name == "unzip_f32" for op in ops[1:]):
            raise InputError(f"{where}: unzip_f32 reads the stored bytes, so it comes first ({text!r})")
        parts.append(Part(m["key"], index, ops=ops))
    return tuple(parts)

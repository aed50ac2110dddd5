"""Malformed messages for both wire decoders (the serving tests and `bench/bench_serve.py` use them).

`malformed_msgpack(valid, n, seed)` and `malformed_json(valid, n, seed)` return `n` cases each, a reproducible
mix of: random bytes; a valid message truncated or with bytes flipped; and hand-made bad messages (object,
string, void, complex, big-endian or unknown dtypes; negative, huge, fractional or too many dimensions;
data shorter or longer than the shape; arrays whose data is not bytes; missing or extra keys; images of
the wrong dtype, size or layout; NaN / inf / wrong-size states; empty, non-string or huge instructions;
msgpack extension types and timestamps; deep nesting; huge maps; pickle payloads; invalid JSON, base64
and UTF-8; JSON NaN constants). A case is `(payload bytes, must_fail)`: `must_fail` is False only where a
mutation may have left the message valid (a flipped byte inside the image data is still an image).

`costly_msgpack()` and `costly_json()` name the messages that are small on the wire but costly to decode
naively (millions of empty containers, deep nesting, long arrays): a 4 MB msgpack message of empty lists
once took 291 MB and 2 s to decode. The tests and the bench time each one and measure its memory.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from vlaforge.serve.codec import encode_json, encode_msgpack

BAD_DTYPES = ("O", "|O", "<U8", "|S4", "|V4", ">f4", ">i8", "<c8", "<M8[s]", "f16", "float128", "", "x" * 300)
_NOT_EXECUTED = "vlaforge-fuzz-pickle-was-executed"


class _Evil:
    """Unpickling this would run `print`; a decoder that unpickles fails the fuzz tests loudly."""

    def __reduce__(self):
        return (print, (_NOT_EXECUTED,))


def _msgpack_array(data: Any, dtype: Any, shape: Any, bytes_keys: bool = True) -> dict:
    k = (lambda s: s.encode()) if bytes_keys else (lambda s: s)
    return {k("__ndarray__"): True, k("data"): data, k("dtype"): dtype, k("shape"): shape}


def _json_array(payload: Any, dtype: Any, shape: Any) -> dict:
    return {"__numpy__": payload, "dtype": dtype, "shape": shape}


def _structured(
    valid: dict[str, Any], array: Callable[..., dict], encode_bytes: Callable[[bytes], Any]
) -> list[Any]:
    """Hand-made bad messages, as Python objects (the caller packs them)."""
    img = next(v for v in valid.values() if isinstance(v, np.ndarray) and v.ndim == 3)
    img_key = next(k for k, v in valid.items() if v is img)
    state_key = next((k for k, v in valid.items() if isinstance(v, np.ndarray) and v.ndim == 1), None)
    text_key = next(k for k, v in valid.items() if isinstance(v, str))
    raw = img.tobytes()

    def with_(key: str, value: Any) -> dict:
        out = {k: (encode_arr(v) if isinstance(v, np.ndarray) else v) for k, v in valid.items()}
        out[key] = value
        return out

    def encode_arr(a: np.ndarray) -> dict:
        return array(encode_bytes(a.tobytes()), a.dtype.str, list(a.shape))

    def without(key: str) -> dict:
        out = with_(key, None)
        del out[key]
        return out

    cases: list[Any] = []
    for dt in BAD_DTYPES:
        cases.append(with_(img_key, array(encode_bytes(raw), dt, list(img.shape))))
    for shape in (
        [-1, 64, 3],
        [2**40, 2**40, 3],
        [1.5, 2, 3],
        [[64], 64, 3],
        "64,64,3",
        [64] * 9,
        None,
        [0, 0, 3],
    ):
        cases.append(with_(img_key, array(encode_bytes(raw), "|u1", shape)))
    cases += [
        with_(img_key, array(encode_bytes(raw[:-1]), "|u1", list(img.shape))),
        with_(img_key, array(encode_bytes(raw + b"\0"), "|u1", list(img.shape))),
        with_(img_key, array(encode_bytes(b""), "|u1", [1_000_000, 1_000_000, 3])),
        with_(img_key, array(12345, "|u1", list(img.shape))),
        with_(img_key, array([1, 2, 3], "|u1", [3])),
        with_(img_key, {"__ndarray__": True, "dtype": "|u1", "shape": [1]}),
        with_(img_key, encode_arr(img.astype(np.float32))),
        with_(img_key, encode_arr(img[:, :, :2].copy())),
        with_(img_key, encode_arr(np.ascontiguousarray(img.transpose(2, 0, 1)))),
        with_(img_key, encode_arr(np.zeros((img.shape[0] + 1, img.shape[1], 3), np.uint8))),
        with_(img_key, encode_arr(img[0])),
        with_(img_key, "an image"),
        with_(img_key, [[1, 2, 3]]),
        without(img_key),
        without(text_key),
        with_(text_key, ""),
        with_(text_key, "   "),
        with_(text_key, 42),
        with_(text_key, ["open", "the drawer"]),
        with_(text_key, "x" * 100_000),
        with_(text_key, None),
        with_("prompt" if text_key != "prompt" else "instruction", "two instructions"),
        [1, 2, 3],
        "observation",
        42,
        None,
        {},
    ]
    if state_key is not None:
        s = valid[state_key]
        cases += [
            with_(state_key, encode_arr(np.full_like(s, np.nan))),
            with_(state_key, encode_arr(np.full_like(s, np.inf))),
            with_(state_key, encode_arr(np.full(s.shape, 1e300, np.float64))),
            with_(state_key, encode_arr(np.zeros(s.shape[0] + 1, s.dtype))),
            with_(state_key, encode_arr(np.zeros((1, s.shape[0]), s.dtype))),
            with_(state_key, encode_arr(np.zeros(s.shape, bool))),
            with_(state_key, "zeros"),
            with_(state_key, [0.0, "a"]),
            without(state_key),
        ]
    return cases


def _nested(depth: int) -> Any:
    obj: Any = 1
    for _ in range(depth):
        obj = [obj]
    return obj


def malformed_msgpack(valid: dict[str, Any], n: int, seed: int = 0) -> list[tuple[bytes, bool]]:
    """`n` malformed msgpack-numpy messages derived from the valid observation `valid` (see module doc)."""
    rng = np.random.default_rng(seed)
    good = encode_msgpack(valid)
    fixed: list[bytes] = [encode_msgpack(c) for c in _structured(valid, _msgpack_array, lambda b: b)]
    fixed += [
        msgpack.packb(_structured(valid, lambda *a: _msgpack_array(*a, bytes_keys=False), lambda b: b)[0]),
        msgpack.packb({"x": msgpack.ExtType(1, b"abc")}),
        msgpack.packb({"x": msgpack.Timestamp(0)}, datetime=False),
        msgpack.packb({1: "int key"}),
        msgpack.packb({"x": _nested(200)}),
        msgpack.packb({f"k{i}": i for i in range(5000)}),
        msgpack.packb({"__npgeneric__": True, "data": "nan", "dtype": "<f8"}),
        msgpack.packb({"__npgeneric__": True, "data": 1, "dtype": "O"}),
        pickle.dumps({"image": _Evil()}),
        pickle.dumps(_Evil(), protocol=0),
        good + b"\0",
        b"",
        b"\xc1",
    ]
    cases: list[tuple[bytes, bool]] = [(b, True) for b in fixed]
    while len(cases) < n:
        kind = rng.integers(4)
        if kind == 0:
            cases.append((rng.bytes(int(rng.integers(0, 300))), True))  # too short to hold an image
        elif kind == 1:
            cases.append((good[: int(rng.integers(0, len(good)))], True))
        elif kind == 2:
            b = bytearray(good)
            for i in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
                b[i] = int(rng.integers(256))
            cases.append((bytes(b), False))
        else:
            cases.append((fixed[int(rng.integers(len(fixed)))], True))
    return cases[:n]


def malformed_json(valid: dict[str, Any], n: int, seed: int = 0) -> list[tuple[bytes, bool]]:
    """`n` malformed json-numpy bodies derived from the valid observation `valid` (see module doc)."""
    rng = np.random.default_rng(seed)
    good = encode_json(valid).encode()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    fixed: list[bytes] = [json.dumps(c).encode() for c in _structured(valid, _json_array, b64)]
    img_key = next(k for k, v in valid.items() if isinstance(v, np.ndarray) and v.ndim == 3)
    fixed += [
        json.dumps({img_key: _json_array("!!!not base64!!!", "|u1", [64, 64, 3])}).encode(),
        json.dumps({img_key: _json_array(123, "|u1", [1])}).encode(),
        json.dumps({img_key: _json_array("A" * 4_000_000, "|u1", [8192, 8192, 3])}).encode(),
        json.dumps({img_key: _json_array(b64(b"\0" * 8), "<f8", [])}).encode(),  # a scalar image
        b'{"state": [NaN, 1, 2]}',
        b'{"state": [Infinity]}',
        b'{"state": [1e999, 0, 0, 0, 0, 0], "instruction": "x"}',
        b'{"state": [' + b"9" * 5000 + b"]}",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": 1,}',
        b"\xff\xfe{}",
        b'{"instruction": "\xc3\x28"}',
        b'{"encoded": 5}',
        b'{"encoded": "{\\"image\\": 1}"}',
        b'{"encoded": "not json"}',
        pickle.dumps({"image": _Evil()}),
        good[:-1],
        b"",
        b"null",
    ]
    cases: list[tuple[bytes, bool]] = [(b, True) for b in fixed]
    while len(cases) < n:
        kind = rng.integers(4)
        if kind == 0:
            cases.append((rng.bytes(int(rng.integers(0, 300))), True))  # never a JSON object with an image
        elif kind == 1:
            cases.append((good[: int(rng.integers(0, len(good)))], True))
        elif kind == 2:
            b = bytearray(good)
            for i in rng.integers(0, len(b), size=int(rng.integers(1, 8))):
                b[i] = int(rng.integers(32, 127))
            cases.append((bytes(b), False))
        else:
            cases.append((fixed[int(rng.integers(len(fixed)))], True))
    return cases[:n]


def costly_msgpack(mb: float = 4.0) -> dict[str, bytes]:
    """Messages of about `mb` MB whose naive decoding costs far more than their size (name -> bytes)."""
    n = int(mb * 2**20)
    return {
        "empty_lists": msgpack.packb([[[]] * 1024] * max(n // 1027, 1)),  # 1 byte per list, 4096 per level
        "empty_maps": msgpack.packb({"x": [[{}] * 4096] * max(n // 4099, 1)}),
        "deep_lists": b"\x91" * 1000 + b"\xc0",  # [[[...[nil]...]]], 1000 levels (msgpack's own limit: 1024)
        "deep_maps": b"\x81\xa1k" * 1000 + b"\xc0",
        "long_array_header": b"\xdd\xff\xff\xff\xff" + b"\xc0" * 1024,  # claims 4 billion entries
        "many_small_ints": msgpack.packb([list(range(4096))] * max(n // 12_000, 1)),
        "many_short_strings": msgpack.packb([["ab"] * 4096] * max(n // 12_300, 1)),
    }


def costly_json(mb: float = 4.0) -> dict[str, bytes]:
    """JSON bodies of about `mb` MB whose naive decoding costs far more than their size (name -> bytes)."""
    n = int(mb * 2**20)
    return {
        "empty_lists": b"[" + b"[]," * (n // 3) + b"[]]",
        "empty_objects": b'{"x": [' + b"{}," * (n // 3) + b"{}]}",
        "nested_empty_lists": b"[" + b",".join([b"[" + b"[]," * 1023 + b"[]]"] * max(n // 3073, 1)) + b"]",
        "deep_lists": b"[" * 100_000 + b"]" * 100_000,
        "deep_objects": b'{"k":' * 50_000 + b"1" + b"}" * 50_000,
        "long_array": b"[" + b"0," * (n // 2) + b"0]",
        "long_string_array": b'["' + b'","'.join([b"a"] * (n // 4)) + b'"]',
    }


__all__ = ["BAD_DTYPES", "costly_json", "costly_msgpack", "malformed_json", "malformed_msgpack"]

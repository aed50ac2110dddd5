"""Strict wire codecs for the two serving protocols: msgpack-numpy (openpi) and json-numpy (OpenVLA).

Both formats carry numpy arrays as small dicts:

- msgpack-numpy, as `openpi-client` packs them: `{"__ndarray__": True, "data": <bin>, "dtype": "<f4",
  "shape": [H, W, 3]}` (openpi-client writes these four keys as msgpack *bin*, i.e. Python bytes; both bytes
  and str keys are accepted here, and replies use bytes keys so that openpi-client reads them), and numpy
  scalars as `{"__npgeneric__": True, "data": <number>, "dtype": "<f8"}`;
- json-numpy (the `json-numpy` package OpenVLA's deploy server patches into `json`): `{"__numpy__": <base64>,
  "dtype": "<f4", "shape": [7]}`; an empty shape is a scalar.

The decoders trust nothing that comes over the wire. The known failure modes of other servers are an object
dtype reaching numpy (a crash, or worse), pickle payloads (remote code execution), unbounded messages and
arrays whose declared shape does not match their bytes. Here:

- only bool, int, uint and float dtypes of a fixed table are built (no object, string, void, structured or
  big-endian dtype ever reaches `np.dtype`);
- `prod(shape) * itemsize == len(data)` is checked before an array is made, every dimension and the array's
  bytes are capped, and so are the message's bytes, nesting depth, container lengths and total number of
  values (`WireLimits`); the values and the depth are counted on the raw bytes before anything is built, so
  a message of millions of empty containers (4 MB of msgpack once took 291 MB and 2 s) costs milliseconds;
- nothing is unpickled, msgpack extension types (timestamps included) are refused, JSON's NaN/Infinity
  constants are refused;
- every failure is a `DecodeError` (an `InputError`) whose message says what was wrong and where.

This module imports numpy and msgpack only: the robot-side client (`vlaforge.client`) uses it too.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from vlaforge.errors import InputError

# The dtypes that may cross the wire, by every spelling the two encoders produce (`dtype.str` for openpi,
# numpy's `dtype_to_descr` for json-numpy, which is the same for these) plus the plain names.
_ALLOWED = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
_ALLOWED += ("float16", "float32", "float64")
DTYPES: dict[str, np.dtype] = {}
for _name in _ALLOWED:
    _dt = np.dtype(_name)
    _code = _dt.str[1:]  # "f4", "u1", "b1"
    for _spelling in (_name, _dt.str, "<" + _code, "|" + _code, "=" + _code):
        DTYPES[_spelling] = _dt.newbyteorder("<") if _dt.itemsize > 1 else _dt
del _name, _dt, _code, _spelling


class DecodeError(InputError):
    """A message that does not decode under the wire rules (its text says what and where)."""


@dataclass(frozen=True)
class WireLimits:
    """Caps on what a decoder accepts.

    Attributes:
        max_message_bytes: bytes of one whole message (a websocket message or an HTTP body).
        max_array_bytes: bytes of one array's data.
        max_ndim: dimensions of one array.
        max_dim: size of one dimension.
        max_items: entries of one list or map.
        max_depth: nesting depth of maps and lists.
        max_objects: values in one message, containers, keys and scalars all counted (an observation has
            a few dozen; an array is one bytes value, not one per element).
    """

    max_message_bytes: int = 32 * 2**20
    max_array_bytes: int = 32 * 2**20
    max_ndim: int = 4
    max_dim: int = 8192
    max_items: int = 4096
    max_depth: int = 8
    max_objects: int = 10_000


def _too_many(limits: WireLimits, what: str) -> DecodeError:
    return DecodeError(
        f"{what} holds more than {limits.max_objects} values (every list, map, key and number counts); at "
        f"most {limits.max_objects} are accepted: send arrays as numpy arrays, not as lists of numbers"
    )


def _dtype(value: Any, where: str) -> np.dtype:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str) or value not in DTYPES:
        shown = value if isinstance(value, str) else type(value).__name__
        raise DecodeError(
            f"{where}: dtype {str(shown)[:40]!r} is not accepted; send one of bool, uint8..uint64, "
            f"int8..int64, float16/32/64 (little-endian, e.g. '<f4', '|u1')"
        )
    return DTYPES[value]


def _shape(value: Any, limits: WireLimits, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise DecodeError(f"{where}: shape must be a list of integers; got {str(value)[:60]}")
    if len(value) > limits.max_ndim:
        raise DecodeError(f"{where}: {len(value)} dimensions; at most {limits.max_ndim} are accepted")
    if any(d < 0 or d > limits.max_dim for d in value):
        raise DecodeError(f"{where}: shape {list(value)} has a dimension outside [0, {limits.max_dim}]")
    return tuple(value)


def _array(data: Any, dtype: np.dtype, shape: tuple[int, ...], limits: WireLimits, where: str) -> np.ndarray:
    """The array of `data` after the size checks (a read-only view of the message's bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{where}: array data must be bytes; got {type(data).__name__}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > limits.max_array_bytes:
        raise DecodeError(
            f"{where}: shape {list(shape)} of {dtype} is {nbytes} bytes; at most {limits.max_array_bytes} "
            f"are accepted (the server's --max-message-mb)"
        )
    if nbytes != len(data):
        raise DecodeError(
            f"{where}: shape {list(shape)} of {dtype} needs {nbytes} bytes of data; the message has "
            f"{len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _str_keys(d: dict, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(k, bytes):
            try:
                k = k.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError(f"{where}: a map key is not UTF-8") from None
        if not isinstance(k, str):
            raise DecodeError(f"{where}: map keys must be strings; got {type(k).__name__}")
        if k in out:
            raise DecodeError(f"{where}: key {k[:60]!r} appears twice")
        out[k] = v
    return out


def _check_tree(obj: Any, limits: WireLimits, where: str, depth: int = 0) -> None:
    """Walks a decoded message: only plain JSON-like values and accepted arrays, bounded depth."""
    if depth > limits.max_depth:
        raise DecodeError(f"{where}: nested deeper than {limits.max_depth} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(v, limits, f"{where}/{k}"[:200], depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_tree(v, limits, f"{where}[{i}]"[:200], depth + 1)
    elif isinstance(obj, np.ndarray):
        if obj.dtype not in DTYPES.values():  # cannot happen through the hooks; kept as the invariant
            raise DecodeError(f"{where}: dtype {obj.dtype} is not accepted")
    elif obj is not None and not isinstance(obj, (str, bytes, bool, int, float, np.generic)):
        raise DecodeError(f"{where}: values of type {type(obj).__name__} are not accepted")


# ------------------------------------------------------------------ msgpack-numpy (openpi)
def _msgpack_hook(limits: WireLimits):
    def hook(d: dict) -> Any:
        keys = set(d)
        if "__ndarray__" in keys or b"__ndarray__" in keys:
            d = _str_keys(d, "array")
            if set(d) != {"__ndarray__", "data", "dtype", "shape"}:
                raise DecodeError(
                    f"an array must have exactly the keys __ndarray__, data, dtype, shape; got {sorted(d)}"
                )
            dtype = _dtype(d["dtype"], "array")
            return _array(d["data"], dtype, _shape(d["shape"], limits, "array"), limits, "array")
        if "__npgeneric__" in keys or b"__npgeneric__" in keys:
            d = _str_keys(d, "scalar")
            if set(d) != {"__npgeneric__", "data", "dtype"}:
                raise DecodeError(
                    f"a numpy scalar must have the keys __npgeneric__, data, dtype; got {sorted(d)}"
                )
            dtype, value = _dtype(d["dtype"], "scalar"), d["data"]
            if not isinstance(value, (bool, int, float)):
                raise DecodeError(f"a numpy scalar's data must be a number; got {type(value).__name__}")
            try:
                return np.array(value).astype(dtype, casting="same_kind")[()]
            except (TypeError, ValueError, OverflowError):
                raise DecodeError(f"scalar {str(value)[:40]} does not fit dtype {dtype}") from None
        return _str_keys(d, "map")

    return hook


# Bytes that follow a msgpack type byte: fixed sizes, and (size of the length field, bytes after it) for the
# types whose length is written in the message (str, bin, ext). The msgpack spec: github.com/msgpack/msgpack.
_MSGPACK_FIXED = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_MSGPACK_FIXED |= {0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}  # fixext: type byte + data
_MSGPACK_SIZED = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0)}
_MSGPACK_SIZED |= {0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}  # ext: length, then a type byte
_MSGPACK_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # (length bytes, per entry)


def _scan_msgpack(data: bytes | bytearray | memoryview, limits: WireLimits) -> None:
    """Counts a message's values and nesting depth on its bytes, before msgpack builds anything.

    Strings and binaries are skipped by their length, so the cost is one step per value, and the scan
    stops at `limits.max_objects`. A malformed message is left for msgpack to refuse with its own words.
    """
    view = memoryview(data).cast("B")
    n, pos, count = len(view), 0, 0
    left, stack = 1, []  # values still expected at this level; those of the enclosing levels
    while pos < n:
        b = view[pos]
        pos += 1
        count += 1
        if count > limits.max_objects:
            raise _too_many(limits, "the message")
        children = 0
        if 0x80 <= b <= 0x8F:
            children = 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            children = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
        elif b in _MSGPACK_FIXED:
            pos += _MSGPACK_FIXED[b]
        elif b in _MSGPACK_SIZED:
            size, extra = _MSGPACK_SIZED[b]
            pos += size + extra + int.from_bytes(view[pos : pos + size], "big")
        elif b in _MSGPACK_CONTAINERS:
            size, per = _MSGPACK_CONTAINERS[b]
            children = per * int.from_bytes(view[pos : pos + size], "big")
            pos += size
        elif b == 0xC1:
            return  # never used by msgpack: unpackb says so
        left -= 1
        if children:
            stack.append(left)
            left = children
            if len(stack) > limits.max_depth + 1:  # + 1: an array is a map one level below its key
                raise DecodeError(f"the message is nested deeper than {limits.max_depth} levels")
        while left == 0 and stack:
            left = stack.pop()
        if left == 0:
            return


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def decode_msgpack(data: bytes | bytearray | memoryview, limits: WireLimits = WireLimits()) -> Any:
    """A msgpack-numpy message -> Python values with numpy arrays (read-only views of `data`).

    Raises:
        DecodeError: the message is too large, not msgpack, or breaks a rule of the module docstring.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected a binary msgpack message; got {type(data).__name__}")
    if len(data) > limits.max_message_bytes:
        raise DecodeError(
            f"message of {len(data)} bytes; at most {limits.max_message_bytes} are accepted "
            f"(the server's --max-message-mb)"
        )
    _scan_msgpack(data, limits)
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_hook=_msgpack_hook(limits),
            ext_hook=_refuse_ext,
            max_str_len=limits.max_message_bytes,
            max_bin_len=limits.max_message_bytes,
            max_array_len=limits.max_items,
            max_map_len=limits.max_items,
            max_ext_len=1024,  # so that the hook (or the tree walk, for timestamps) names what it refuses
        )
    except DecodeError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
        raise DecodeError(f"not a valid msgpack message ({type(e).__name__}: {str(e)[:120]})") from None
    _check_tree(obj, limits, "message")
    return obj


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.str not in DTYPES:
            raise TypeError(f"arrays of dtype {obj.dtype} are not sent")
        return {
            b"__ndarray__": True,
            b"data": obj.tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        if obj.dtype.str not in DTYPES:
            raise TypeError(f"scalars of dtype {obj.dtype} are not sent")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"values of type {type(obj).__name__} are not sent")


def encode_msgpack(obj: Any) -> bytes:
    """Python values with numpy arrays -> msgpack-numpy bytes, readable by openpi-client's `unpackb`."""
    return msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)


# ------------------------------------------------------------------ json-numpy (OpenVLA)
def _json_hook(limits: WireLimits):
    def hook(d: dict) -> Any:
        if "__numpy__" not in d:
            if len(d) > limits.max_items:
                raise DecodeError(f"a JSON object has {len(d)} keys; at most {limits.max_items}")
            return d
        if set(d) != {"__numpy__", "dtype", "shape"}:
            raise DecodeError(
                f"a json-numpy array must have the keys __numpy__, dtype, shape; got {sorted(d)}"
            )
        payload = d["__numpy__"]
        if not isinstance(payload, str):
            raise DecodeError(f"json-numpy '__numpy__' must be a base64 string; got {type(payload).__name__}")
        dtype = _dtype(d["dtype"], "json-numpy array")
        shape = _shape(d["shape"], limits, "json-numpy array")
        if len(payload) // 4 * 3 > limits.max_array_bytes + 3:  # checked before decoding anything
            raise DecodeError(
                f"json-numpy array of about {len(payload) // 4 * 3} bytes; at most {limits.max_array_bytes}"
            )
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("json-numpy '__numpy__' is not valid base64") from None
        if shape == ():  # json-numpy writes numpy scalars with an empty shape
            if len(raw) != dtype.itemsize:
                raise DecodeError(
                    f"json-numpy scalar of {dtype} needs {dtype.itemsize} bytes; got {len(raw)}"
                )
            return np.frombuffer(raw, dtype=dtype)[0]
        return _array(raw, dtype, shape, limits, "json-numpy array")

    return hook


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"JSON constant {name} is not accepted (send finite numbers)")


def decode_json(body: bytes | str, limits: WireLimits = WireLimits()) -> Any:
    """A json-numpy document (an HTTP body) -> Python values with numpy arrays.

    Raises:
        DecodeError: the body is too large, not UTF-8 JSON, or breaks a rule of the module docstring.
    """
    if len(body) > limits.max_message_bytes:
        raise DecodeError(
            f"body of {len(body)} bytes; at most {limits.max_message_bytes} are accepted "
            f"(the server's --max-message-mb)"
        )
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else str(body)
    except UnicodeDecodeError as e:
        raise DecodeError(f"not a valid JSON document (the body is not UTF-8: {str(e)[:120]})") from None
    # Every JSON value past the first opens a container or follows a comma: counting those three characters
    # (in C, also inside strings, which only errs towards refusing) bounds the values before any is built.
    if text.count("[") + text.count("{") + text.count(",") >= limits.max_objects:
        raise _too_many(limits, "the body")
    try:
        obj = json.loads(text, object_hook=_json_hook(limits), parse_constant=_refuse_constant)
    except DecodeError:
        raise
    except RecursionError:
        raise DecodeError(f"the body is nested deeper than {limits.max_depth} levels") from None
    except (ValueError, TypeError, OverflowError) as e:
        raise DecodeError(f"not a valid JSON document ({type(e).__name__}: {str(e)[:120]})") from None
    _check_tree(obj, limits, "body")
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.str not in DTYPES:
            raise TypeError(f"arrays of dtype {obj.dtype} are not sent")
        arr = np.ascontiguousarray(obj)
        return {
            "__numpy__": base64.b64encode(arr.tobytes()).decode(),
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
        }
    raise TypeError(f"values of type {type(obj).__name__} are not sent")


def encode_json(obj: Any) -> str:
    """Python values with numpy arrays -> a json-numpy document (what `json_numpy.loads` reads back)."""
    return json.dumps(obj, default=_json_default, allow_nan=False)


__all__ = [
    "DTYPES",
    "DecodeError",
    "WireLimits",
    "decode_json",
    "decode_msgpack",
    "encode_json",
    "encode_msgpack",
]

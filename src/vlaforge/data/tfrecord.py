"""TFRecord files and `tf.train.Example` messages without TensorFlow: the base of the RLDS reader.

An RLDS / TFDS shard (DESIGN.md, "RLDS / TFDS on disk") is a TFRecord file whose records are serialized
`tf.train.Example` protos, one per episode; this module reads and writes both in pure Python + numpy.
Sources: TensorFlow's TFRecord guide and `tensorflow/core/lib/io/record_{writer,reader}.cc` (framing),
RFC 3720 B.4 (CRC-32C), `tensorflow/core/example/{example,feature}.proto` and protobuf's encoding guide
(the Example). The formats, byte by byte, and the error policy: docs/rlds.md.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vlaforge.atomic import atomic_write
from vlaforge.errors import InputError

# ---------------------------------------------------------------------------------------------------------
# CRC-32C
# ---------------------------------------------------------------------------------------------------------

_POLY = 0x82F63B78  # Castagnoli, reflected (RFC 3720 B.4)
_MASK_DELTA = 0xA282EAD8  # tensorflow/core/lib/hash/crc32c.h kMaskDelta
_U32 = 0xFFFFFFFF


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()  # 256 entries, built once
_TABLE_NP = np.array(_TABLE, dtype=np.uint32)
_FAST_MIN = 1 << 14  # below this many bytes the pure-Python loop is faster than the numpy set-up


def crc32c_reference(data: bytes) -> int:
    """CRC-32C of `data`, one table lookup per byte (the reference for `crc32c`'s fast path)."""
    crc = _U32
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


@functools.lru_cache(maxsize=64)
def _zeros_op(p: int) -> np.ndarray:
    """uint32 (4, 256) tables of the linear map "feed 2**p zero bytes into a CRC register starting at 0".

    The raw register update is linear over GF(2), so the map is x -> T[0][x & 255] ^ T[1][(x >> 8) & 255]
    ^ T[2][(x >> 16) & 255] ^ T[3][x >> 24]; the tables for 2**(p+1) are the map for 2**p applied twice.
    """
    basis = np.uint32(1) << np.arange(32, dtype=np.uint32)  # (32,) register values with one bit set
    if p == 0:
        images = _TABLE_NP[basis & 0xFF] ^ (basis >> 8)  # one zero byte
    else:
        images = _apply_op(_zeros_op(p - 1), _apply_op(_zeros_op(p - 1), basis))
    tables = np.zeros((4, 256), dtype=np.uint32)
    v = np.arange(256)
    for j in range(4):
        for bit in range(8):
            tables[j, (v >> bit) & 1 == 1] ^= images[8 * j + bit]
    return tables


def _apply_op(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Applies a `_zeros_op` map to the uint32 registers `x` (any shape)."""
    return tables[0][x & 0xFF] ^ tables[1][(x >> 8) & 0xFF] ^ tables[2][(x >> 16) & 0xFF] ^ tables[3][x >> 24]


def _crc32c_numpy(data: bytes) -> int:
    """CRC-32C computed over many lanes at once with numpy, the lanes combined by a tree of zero-shifts.

    Reflected CRC with init 0xFFFFFFFF equals the raw (init 0) CRC of the message whose first 4 bytes are
    complemented; leading zero bytes leave a raw CRC of 0 unchanged, so the message is zero-padded in front
    to k lanes of L = 2**p bytes, each lane's raw CRC is computed in parallel (L vector steps), and adjacent
    lanes are merged as raw(A || B) = zeros_{|B|}(raw(A)) ^ raw(B), halving the lane count per level.
    """
    n = len(data)
    p = max(8, (n.bit_length() + 1) // 2)  # L ~ sqrt(n): L vector steps over k ~ sqrt(n) lanes
    lane = 1 << p
    k = -(-n // lane)
    buf = np.zeros(k * lane, dtype=np.uint8)
    buf[k * lane - n :] = np.frombuffer(data, dtype=np.uint8)
    buf[k * lane - n : k * lane - n + 4] ^= 0xFF
    cols = buf.reshape(k, lane).T.astype(np.uint32)  # (L, k): byte j of every lane in row j
    reg = np.zeros(k, dtype=np.uint32)  # (k,) raw CRC of each lane
    table = _TABLE_NP
    for row in cols:
        reg = table[(reg ^ row) & 0xFF] ^ (reg >> 8)
    while len(reg) > 1:
        if len(reg) % 2:
            reg = np.concatenate([np.zeros(1, dtype=np.uint32), reg])  # a zero lane in front changes nothing
        reg = _apply_op(_zeros_op(p), reg[0::2]) ^ reg[1::2]
        p += 1
    return int(reg[0]) ^ _U32


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as TFRecord uses it (RFC 3720 B.4; crc32c(b"123456789") = 0xE3069283).

    Args:
        data: the bytes (any buffer: bytes, bytearray, memoryview).

    Returns:
        The checksum, an int in [0, 2**32).
    """
    if len(data) >= _FAST_MIN:
        return _crc32c_numpy(data)
    return crc32c_reference(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 mod 2**32.

    TensorFlow masks the CRCs it stores because "it is problematic to compute the CRC of a string that
    contains embedded CRCs" (tensorflow/core/lib/hash/crc32c.h).
    """
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & _U32) + _MASK_DELTA) & _U32


# ---------------------------------------------------------------------------------------------------------
# TFRecord framing
# ---------------------------------------------------------------------------------------------------------

_HEADER = struct.Struct("<QI")  # uint64 length, uint32 masked CRC of the 8 length bytes
_FOOTER = struct.Struct("<I")  # uint32 masked CRC of the data


def _read_at(f, path: Path, offset: int, size: int) -> bytes | None:
    """The payload of the record whose header is at `offset` (f positioned there), both CRCs checked; None
    at the end of the file. Raises `InputError` naming the file and the offset (see `iter_records`)."""
    header = f.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise InputError(
            f"{path}: truncated record header at byte offset {offset} ({len(header)} of "
            f"{_HEADER.size} bytes; the file is cut short or has trailing garbage)"
        )
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise InputError(
            f"{path}: corrupt record at byte offset {offset}: the CRC of the length field does not "
            "match (the file is damaged, or this is not a TFRecord file / trailing garbage)"
        )
    end = offset + _HEADER.size + length + _FOOTER.size
    if end > size:
        raise InputError(
            f"{path}: truncated record at byte offset {offset}: it needs {length} data bytes and a "
            f"4-byte CRC up to byte {end}, but the file has {size} bytes"
        )
    data = f.read(length)
    footer = f.read(_FOOTER.size)
    if len(data) != length or len(footer) != _FOOTER.size:  # the file shrank while being read
        raise InputError(f"{path}: truncated record at byte offset {offset}")
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise InputError(
            f"{path}: corrupt record at byte offset {offset}: the CRC of its {length} data bytes "
            "does not match (the file is damaged)"
        )
    return data


def _open(path: Path):
    try:
        return open(path, "rb")  # noqa: SIM115 (callers hold it open between records)
    except OSError as e:
        raise InputError(f"{path}: cannot open TFRecord file ({e.strerror})") from e


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Reads a TFRecord file, checking both CRCs of every record.

    Args:
        path: the file.

    Yields:
        (offset, data): the byte offset of the record's header in the file, and the record's payload.

    Raises:
        InputError: a missing file, a CRC mismatch (length or data), a record cut short, or trailing bytes
            that are not a record; the message names the file and the record's byte offset.
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while (data := _read_at(f, path, offset, size)) is not None:
            yield offset, data
            offset += _HEADER.size + len(data) + _FOOTER.size


def read_record(path: str | os.PathLike, offset: int) -> bytes:
    """The payload of the one record whose header is at byte `offset` of `path`, both CRCs checked.

    Raises:
        InputError: as `iter_records`, naming the file and the offset; also when no record starts there.
    """
    path = Path(path)
    with _open(path) as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(offset)
        data = _read_at(f, path, offset, size)
    if data is None:
        raise InputError(f"{path}: no record header at byte offset {offset} (the file is shorter)")
    return data


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes `records` as a TFRecord file, atomically (`vlaforge.atomic.atomic_write`).

    Args:
        path: the file to write; an existing file is replaced only once every record is written.
        records: the payloads, in order.

    Returns:
        The number of records written.
    """
    n = 0
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        for data in records:
            data = bytes(data)
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", masked_crc32c(length)))
            f.write(data)
            f.write(_FOOTER.pack(masked_crc32c(data)))
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------------
# tf.train.Example (protobuf wire format)
# ---------------------------------------------------------------------------------------------------------

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_WIRE_NAMES = {
    0: "varint",
    1: "fixed64",
    2: "length-delimited",
    3: "start-group",
    4: "end-group",
    5: "fixed32",
}
_BYTES_LIST, _FLOAT_LIST, _INT64_LIST = 1, 2, 3  # Feature.kind field numbers (feature.proto)
_U64 = (1 << 64) - 1

Feature = (
    list[bytes] | np.ndarray
)  # bytes_list -> list[bytes]; float_list -> float32 (n,); int64 -> int64 (n,)


class ByteSpans(NamedTuple):
    """A bytes_list given as positions instead of copies: `spans` int64 (n, 2), [start, end) in the message."""

    spans: np.ndarray


class _Parser:
    """Reads protobuf fields from `buf`; every position is absolute in `buf`, so errors point at the byte."""

    def __init__(self, buf: bytes, source: str, spans: bool = False):
        self.buf = buf
        self.source = source
        self.spans = spans  # bytes values come back as (start, end) positions in `buf`, not copied

    def error(self, pos: int, what: str) -> InputError:
        return InputError(f"{self.source}: malformed tf.train.Example at byte {pos}: {what}")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """(value as uint64, position after it); at most 10 bytes, as protobuf allows."""
        buf = self.buf
        result = shift = 0
        start = pos
        while True:
            if pos >= end:
                raise self.error(start, "truncated varint")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                return result & _U64, pos
            shift += 7
            if shift >= 70:
                raise self.error(start, "varint longer than 10 bytes")

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """Yields (field number, wire type, key position, value start, value end) of each field.

        For length-delimited fields [start, end) is the payload; for varints it is the varint's bytes.
        """
        while pos < end:
            key_pos = pos
            key, pos = self.varint(pos, end)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise self.error(key_pos, "field number 0")
            if wire == _VARINT:
                start = pos
                _, pos = self.varint(pos, end)
            elif wire == _LEN:
                n, start = self.varint(pos, end)
                pos = start + n
                if pos > end:
                    raise self.error(key_pos, f"field {field} has length {n}, past the end of its message")
            elif wire in (_FIXED64, _FIXED32):
                start = pos
                pos += 8 if wire == _FIXED64 else 4
                if pos > end:
                    raise self.error(key_pos, f"truncated {_WIRE_NAMES[wire]} field {field}")
            else:
                raise self.error(
                    key_pos, f"unsupported wire type {wire} ({_WIRE_NAMES.get(wire, 'invalid')})"
                )
            yield field, wire, key_pos, start, pos

    def expect(self, field: int, wire: int, want: tuple[int, ...], key_pos: int, what: str) -> None:
        if wire not in want:
            names = " or ".join(_WIRE_NAMES[w] for w in want)
            raise self.error(
                key_pos, f"{what} (field {field}) has wire type {_WIRE_NAMES[wire]}, expected {names}"
            )

    def packed_varints(self, start: int, end: int) -> np.ndarray:
        """int64 (n,): the packed varints in buf[start:end], decoded with numpy (two's complement int64)."""
        b = np.frombuffer(self.buf, dtype=np.uint8, count=end - start, offset=start)
        if len(b) == 0:
            return np.zeros(0, dtype=np.int64)
        last = b < 0x80  # (m,) True on the final byte of each varint
        ends = np.flatnonzero(last)  # (n,)
        if not last[-1]:
            cut = start + (int(ends[-1]) + 1 if len(ends) else 0)
            raise self.error(cut, "truncated varint at the end of a packed int64 list")
        starts = np.concatenate([[0], ends[:-1] + 1])  # (n,)
        if (ends - starts).max() >= 10:
            bad = int(starts[np.argmax(ends - starts >= 10)])
            raise self.error(start + bad, "varint longer than 10 bytes")
        group = np.cumsum(last) - last  # (m,) which varint each byte belongs to
        shift = (np.arange(len(b)) - starts[group]).astype(np.uint64) * np.uint64(7)  # (m,)
        parts = (b & 0x7F).astype(np.uint64) << shift  # bits past 64 drop out, as in protobuf
        return np.bitwise_or.reduceat(parts, starts).view(np.int64)

    def feature(self, start: int, end: int) -> Feature:
        kind: int | None = None
        parts: list = []
        for field, wire, key_pos, s, e in self.fields(start, end):
            if field not in (_BYTES_LIST, _FLOAT_LIST, _INT64_LIST):
                continue  # unknown field: skipped
            self.expect(field, wire, (_LEN,), key_pos, "a Feature's list")
            if field != kind:  # oneof: the last kind set wins; the same kind again merges (appends)
                kind, parts = field, []
            for vfield, vwire, vkey_pos, vs, ve in self.fields(s, e):
                if vfield != 1:
                    continue
                if kind == _BYTES_LIST:
                    self.expect(vfield, vwire, (_LEN,), vkey_pos, "BytesList.value")
                    parts.append((vs, ve) if self.spans else bytes(self.buf[vs:ve]))
                elif kind == _FLOAT_LIST:
                    self.expect(vfield, vwire, (_LEN, _FIXED32), vkey_pos, "FloatList.value")
                    if vwire == _LEN and (ve - vs) % 4:
                        raise self.error(
                            vkey_pos, f"packed FloatList of {ve - vs} bytes, not a multiple of 4"
                        )
                    parts.append(np.frombuffer(self.buf, dtype="<f4", count=(ve - vs) // 4, offset=vs))
                else:
                    self.expect(vfield, vwire, (_LEN, _VARINT), vkey_pos, "Int64List.value")
                    if vwire == _LEN:
                        parts.append(self.packed_varints(vs, ve))
                    else:
                        value = self.varint(vs, ve)[0]
                        parts.append(np.array([value - (1 << 64) if value >> 63 else value], dtype=np.int64))
        if kind == _BYTES_LIST and self.spans:
            return ByteSpans(np.asarray(parts, dtype=np.int64).reshape(len(parts), 2))
        if kind is None or kind == _BYTES_LIST:
            return parts  # a Feature with no kind set is an empty list
        dtype = np.float32 if kind == _FLOAT_LIST else np.int64
        if not parts:
            return np.zeros(0, dtype=dtype)
        return np.concatenate(parts).astype(dtype)  # a fresh, writable, native-endian array

    def map_entry(self, start: int, end: int, entry_pos: int) -> tuple[str, Feature]:
        key, value = b"", (start, start)  # proto3 defaults: "" and an empty Feature
        for field, wire, key_pos, s, e in self.fields(start, end):
            if field == 1:
                self.expect(field, wire, (_LEN,), key_pos, "the feature map's key")
                key = bytes(self.buf[s:e])
            elif field == 2:
                self.expect(field, wire, (_LEN,), key_pos, "the feature map's value")
                value = (s, e)
        try:
            name = key.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.error(entry_pos, f"feature name {key!r} is not UTF-8") from err
        return name, self.feature(*value)


def parse_example(data: bytes, *, source: str = "record", spans: bool = False) -> dict[str, Feature]:
    """Decodes a serialized `tf.train.Example` (example.proto / feature.proto, wire format).

    Args:
        data: the serialized message (one TFRecord payload in an RLDS shard).
        source: names the message in errors, e.g. "shard-00000 at byte offset 1234".
        spans: return every bytes_list as `ByteSpans` (positions of its values in `data`) instead of copies,
            so a reader can index encoded images and read them later straight from the file.

    Returns:
        feature name -> value: a bytes_list as list[bytes], a float_list as float32 (n,), an int64_list as
        int64 (n,). A Feature with no list set comes back as an empty list (its dtype is unknown here; the
        RLDS reader knows it from features.json). A name given twice keeps its last value, as protobuf maps do.

    Raises:
        InputError: malformed input (truncated varint, a length past the end, a bad wire type); the message
            gives the byte position in `data`.
    """
    buf = bytes(data)
    p = _Parser(buf, source, spans)
    out: dict[str, Feature] = {}
    for field, wire, key_pos, s, e in p.fields(0, len(buf)):
        if field != 1:
            continue
        p.expect(field, wire, (_LEN,), key_pos, "Example.features")
        for ffield, fwire, fkey_pos, fs, fe in p.fields(s, e):
            if ffield != 1:
                continue
            p.expect(ffield, fwire, (_LEN,), fkey_pos, "Features.feature")
            name, value = p.map_entry(fs, fe, fkey_pos)
            out[name] = value
    return out


def _varint(value: int) -> bytes:
    value &= _U64  # negative int64s: 10-byte two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | _LEN) + _varint(len(payload)) + payload


def _encode_feature(name: str, value) -> bytes:
    """Serialized Feature for one value (see `encode_example` for the accepted types)."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bytes, bytearray, str)) for v in value):
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
        return _len_field(_BYTES_LIST, b"".join(_len_field(1, v) for v in items))
    if isinstance(value, (list, tuple)):
        if not all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in value
        ):
            raise InputError(f"feature {name!r}: a list must hold only bytes/str or only numbers")
        is_float = any(isinstance(v, (float, np.floating)) for v in value)
        value = np.asarray(value, dtype=np.float32 if is_float else np.int64)
    if not isinstance(value, np.ndarray):
        raise InputError(f"feature {name!r}: expected a list or a numpy array, got {type(value).__name__}")
    if value.dtype.kind == "f":
        packed = np.ascontiguousarray(value, dtype="<f4").reshape(-1).tobytes()
        body = _len_field(1, packed) if packed else b""
        return _len_field(_FLOAT_LIST, body)
    if value.dtype.kind in "iub":
        if value.dtype.kind == "u" and value.size and int(value.max()) > np.iinfo(np.int64).max:
            raise InputError(f"feature {name!r}: unsigned values above the int64 range")
        packed = b"".join(_varint(int(v)) for v in value.reshape(-1).tolist())
        body = _len_field(1, packed) if packed else b""
        return _len_field(_INT64_LIST, body)
    raise InputError(
        f"feature {name!r}: unsupported dtype {value.dtype} (need float, integer, bool or bytes)"
    )


def encode_example(features: dict[str, Feature]) -> bytes:
    """Serializes a `tf.train.Example`, the inverse of `parse_example` (packed floats and int64s, as proto3).

    Args:
        features: name -> value: a list/tuple of bytes (or str, stored UTF-8) is a bytes_list; a float
            numpy array (any shape, flattened, stored float32) or a list with a float in it is a float_list;
            an integer/bool array or a list of ints is an int64_list.

    Returns:
        The serialized message. Entries are written in the dict's order.
    """
    entries = b"".join(
        _len_field(1, _len_field(1, name.encode("utf-8")) + _len_field(2, _encode_feature(name, value)))
        for name, value in features.items()
    )
    return _len_field(1, entries)


__all__ = [
    "ByteSpans",
    "crc32c",
    "crc32c_reference",
    "encode_example",
    "iter_records",
    "masked_crc32c",
    "parse_example",
    "read_record",
    "write_records",
]

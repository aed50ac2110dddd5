"""TFRecord framing, CRC-32C and tf.train.Example decoding, checked against the published formats."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from vlaforge.data.tfrecord import (
    crc32c,
    crc32c_reference,
    encode_example,
    iter_records,
    masked_crc32c,
    parse_example,
    write_records,
)
from vlaforge.errors import InputError

# ------------------------------------------------------------------------------------------------ CRC-32C


def test_crc32c_rfc3720_vectors():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    # RFC 3720, section B.4.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


def test_masked_crc32c_by_hand():
    # c = 0xE3069283: c >> 15 = 0x1C60D; (c << 17) mod 2^32 = (c & 0x7FFF) << 17 = 0x1283 << 17 = 0x25060000;
    # OR = 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5 (no carry past 2^32).
    assert masked_crc32c(b"123456789") == 0xC78AB0E5


@pytest.mark.parametrize("n", [0, 1, 4, 1000, 1 << 14, (1 << 14) + 1, 50_001, 1 << 17])
def test_crc32c_fast_path_matches_reference(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == crc32c_reference(data)


# ------------------------------------------------------------------------------------------------ framing


def spec_mask(c: int) -> int:
    """mask(c) from the TFRecord format doc, written out independently of the module."""
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % (1 << 32)


def spec_write(path, records) -> list[int]:
    """A TFRecord writer from the format doc; returns each record's byte offset."""
    offsets, out = [], b""
    for data in records:
        offsets.append(len(out))
        length = struct.pack("<Q", len(data))
        out += length + struct.pack("<I", spec_mask(crc32c(length))) + data
        out += struct.pack("<I", spec_mask(crc32c(data)))
    with open(path, "wb") as f:
        f.write(out)
    return offsets


RECORDS = [b"first record", b"", os.urandom(3000), b"x" * 70_000]


def test_iter_records_reads_spec_file(tmp_path):
    path = tmp_path / "a.tfrecord"
    offsets = spec_write(path, RECORDS)
    assert offsets == [0, 28, 44, 3060]  # 16 bytes of framing per record
    assert list(iter_records(path)) == list(zip(offsets, RECORDS))


def test_write_records_byte_identical_to_spec(tmp_path):
    spec_write(tmp_path / "spec.tfrecord", RECORDS)
    assert write_records(tmp_path / "ours.tfrecord", iter(RECORDS)) == len(RECORDS)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "spec.tfrecord").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.tfrecord", "spec.tfrecord"]  # no temp left


def test_write_records_failure_keeps_old_file(tmp_path):
    path = tmp_path / "a.tfrecord"
    write_records(path, [b"old"])

    def bad():
        yield b"new"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records(path, bad())
    assert [d for _, d in iter_records(path)] == [b"old"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.tfrecord"]


def test_empty_file_has_no_records(tmp_path):
    (tmp_path / "e.tfrecord").write_bytes(b"")
    assert list(iter_records(tmp_path / "e.tfrecord")) == []


def corrupt(tmp_path, edit) -> tuple[str, list[int]]:
    path = tmp_path / "bad.tfrecord"
    offsets = spec_write(path, [b"a" * 10, b"b" * 20, b"c" * 30])  # offsets 0, 26, 62; size 108
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(edit(raw)))
    return str(path), offsets


def expect_error(path, offset, match=None):
    with pytest.raises(InputError) as e:
        list(iter_records(path))
    msg = str(e.value)
    assert "bad.tfrecord" in msg and f"byte offset {offset}" in msg, msg
    if match:
        assert match in msg, msg


def flip(i):
    def edit(raw):
        raw[i] ^= 0x01
        return raw

    return edit


def test_flipped_data_byte(tmp_path):
    path, offsets = corrupt(tmp_path, flip(26 + 12 + 5))  # inside record 1's data
    expect_error(path, offsets[1], "data bytes")


def test_flipped_crc_byte(tmp_path):
    path, offsets = corrupt(tmp_path, flip(62 + 12 + 30 + 1))  # record 2's data CRC
    expect_error(path, offsets[2], "data bytes")


def test_flipped_length_byte(tmp_path):
    path, offsets = corrupt(tmp_path, flip(26))  # record 1's length: 20 -> 21
    expect_error(path, offsets[1], "length field")
    path, offsets = corrupt(tmp_path, flip(62 + 9))  # record 2's length CRC
    expect_error(path, offsets[2], "length field")


@pytest.mark.parametrize(
    "cut,offset",
    [(5, 0), (26 + 11, 26), (26 + 12, 26), (26 + 12 + 19, 26), (26 + 12 + 20 + 3, 26), (107, 62)],
)
def test_truncated(tmp_path, cut, offset):
    path, _ = corrupt(tmp_path, lambda raw: raw[:cut])
    expect_error(path, offset, "truncated")


def test_cut_at_record_boundary_is_a_shorter_file(tmp_path):
    path, offsets = corrupt(tmp_path, lambda raw: raw[:62])
    assert [o for o, _ in iter_records(path)] == offsets[:2]


@pytest.mark.parametrize("garbage", [b"\x00", b"junk!", b"\x00" * 12, b"garbage after the records"])
def test_trailing_garbage(tmp_path, garbage):
    path, _ = corrupt(tmp_path, lambda raw: raw + garbage)
    expect_error(path, 108)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.tfrecord"):
        list(iter_records(tmp_path / "nope.tfrecord"))


# ------------------------------------------------------------------------------------------------ Example

# Example{features{feature{"a": int64_list [1, -1]}, feature{"b": float_list [0.5]}}}, packed, by hand:
HAND_EXAMPLE = bytes(
    [0x0A, 0x25]  # Example.features (field 1, length-delimited), 37 bytes
    + [0x0A, 0x14]  # Features.feature map entry (field 1), 20 bytes
    + [0x0A, 0x01, ord("a")]  # entry key (field 1) "a"
    + [0x12, 0x0F]  # entry value (field 2): Feature, 15 bytes
    + [0x1A, 0x0D]  # Feature.int64_list (field 3), 13 bytes
    + [0x0A, 0x0B]  # Int64List.value packed (field 1), 11 bytes
    + [0x01]  # 1
    + [0xFF] * 9
    + [0x01]  # -1: 10-byte two's complement varint
    + [0x0A, 0x0D]  # second map entry, 13 bytes
    + [0x0A, 0x01, ord("b")]  # key "b"
    + [0x12, 0x08]  # value: Feature, 8 bytes
    + [0x12, 0x06]  # Feature.float_list (field 2), 6 bytes
    + [0x0A, 0x04, 0x00, 0x00, 0x00, 0x3F]  # FloatList.value packed: 0.5 = 0x3F000000 little endian
)


def test_parse_hand_assembled_example():
    out = parse_example(HAND_EXAMPLE)
    assert list(out) == ["a", "b"]
    assert out["a"].dtype == np.int64 and out["a"].tolist() == [1, -1]
    assert out["b"].dtype == np.float32 and out["b"].tolist() == [0.5]


def test_encode_matches_hand_assembled():
    assert encode_example({"a": np.array([1, -1]), "b": np.array([0.5], np.float32)}) == HAND_EXAMPLE


def entry(key: bytes, feature: bytes) -> bytes:
    body = bytes([0x0A, len(key)]) + key + bytes([0x12, len(feature)]) + feature
    return bytes([0x0A, len(body)]) + body


def example(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return bytes([0x0A, len(body)]) + body


def test_parse_unpacked_repeated():
    ints = bytes([0x08, 0x01, 0x08]) + b"\xff" * 9 + b"\x01" + bytes([0x08, 0x96, 0x01])  # 1, -1, 150
    floats = bytes([0x0D]) + struct.pack("<f", 0.5) + bytes([0x0D]) + struct.pack("<f", -2.0)
    strs = bytes([0x0A, 0x02]) + b"hi" + bytes([0x0A, 0x00])  # "hi", ""
    data = example(
        entry(b"i", bytes([0x1A, len(ints)]) + ints),
        entry(b"f", bytes([0x12, len(floats)]) + floats),
        entry(b"s", bytes([0x0A, len(strs)]) + strs),
    )
    out = parse_example(data)
    assert out["i"].tolist() == [1, -1, 150] and out["i"].dtype == np.int64
    assert out["f"].tolist() == [0.5, -2.0] and out["f"].dtype == np.float32
    assert out["s"] == [b"hi", b""]


def test_parse_mixed_packed_and_unpacked_and_empty():
    ints = bytes([0x08, 0x07, 0x0A, 0x02, 0x02, 0x03])  # unpacked 7, then packed [2, 3]
    data = example(
        entry(b"i", bytes([0x1A, len(ints)]) + ints),
        entry(b"ef", bytes([0x12, 0x00])),  # empty FloatList
        entry(b"ei", bytes([0x1A, 0x00])),  # empty Int64List
        entry(b"eb", bytes([0x0A, 0x00])),  # empty BytesList
        entry(b"none", b""),  # Feature with no kind
    )
    out = parse_example(data)
    assert out["i"].tolist() == [7, 2, 3]
    assert out["ef"].dtype == np.float32 and out["ef"].shape == (0,)
    assert out["ei"].dtype == np.int64 and out["ei"].shape == (0,)
    assert out["eb"] == [] and out["none"] == []


def test_unknown_fields_are_skipped():
    unknown = bytes([0x28, 0x05, 0x31]) + bytes(8) + bytes([0x3D]) + bytes(4) + bytes([0x42, 0x01, 0x00])
    feature = unknown + bytes([0x12, 0x06 + 2, 0x78, 0x01, 0x0A, 0x04]) + struct.pack("<f", 1.5)
    data = unknown + example(entry(b"x", feature)) + unknown
    assert parse_example(data)["x"].tolist() == [1.5]
    assert parse_example(b"") == {}


def test_encode_parse_round_trip():
    rng = np.random.default_rng(0)
    for trial in range(20):
        feats = {}
        for j in range(rng.integers(1, 6)):
            n = int(rng.integers(0, 40))
            kind = rng.integers(3)
            if kind == 0:
                feats[f"steps/b{j}"] = [rng.bytes(int(rng.integers(0, 300))) for _ in range(n)]
            elif kind == 1:
                feats[f"steps/f{j}"] = (rng.standard_normal(n) * 10.0 ** rng.integers(-5, 30)).astype(
                    np.float32
                )
            else:
                big = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64, endpoint=True)
                small = rng.integers(-300, 300, n)
                feats[f"steps/i{j}"] = np.where(rng.random(n) < 0.5, big, small).astype(np.int64)
        if trial == 0:
            feats["edge"] = np.array([0, -1, 2**63 - 1, -(2**63), 127, 128, -128], np.int64)
        out = parse_example(encode_example(feats))
        assert list(out) == list(feats)
        for k, v in feats.items():
            if isinstance(v, list):
                assert out[k] == v
            else:
                assert out[k].dtype == v.dtype and np.array_equal(out[k], v), k


def test_encode_lists_and_strings():
    out = parse_example(encode_example({"s": ["pick up", b"\x00"], "i": [1, 2], "f": [1, 2.5], "e": []}))
    assert out["s"] == [b"pick up", b"\x00"] and out["e"] == []
    assert out["i"].dtype == np.int64 and out["i"].tolist() == [1, 2]
    assert out["f"].dtype == np.float32 and out["f"].tolist() == [1.0, 2.5]
    with pytest.raises(InputError, match="'x'"):
        encode_example({"x": np.array(["a"], dtype=object)})


@pytest.mark.parametrize(
    "data,pos,what",
    [
        (b"\x0a", 1, "truncated varint"),  # Example.features has no length
        (b"\x0a\x05\x0a\x03", 0, "past the end"),  # length 5, 2 bytes follow
        (b"\x0a\x02\x0a\x05", 2, "past the end"),  # nested length past its message
        (b"\x0e\x00", 0, "wire type 6"),
        (b"\x0b", 0, "wire type 3"),
        (b"\x08" + b"\xff" * 11, 1, "longer than 10"),
        (b"\x0a\x01\x80", 2, "truncated varint"),
        (b"\x08\x01", 0, "expected length-delimited"),  # Example.features as a varint
        (b"\x0d\x00\x00", 0, "truncated fixed32"),
    ],
)
def test_malformed_example(data, pos, what):
    with pytest.raises(InputError) as e:
        parse_example(data, source="shard-0 at byte offset 99")
    msg = str(e.value)
    assert msg.startswith("shard-0 at byte offset 99") and f"at byte {pos}:" in msg and what in msg, msg


def test_malformed_lists_point_into_the_message():
    bad_packed_int = example(entry(b"i", bytes([0x1A, 0x04, 0x0A, 0x02, 0x01, 0x81])))  # last varint cut
    with pytest.raises(InputError, match="at byte 14: truncated varint"):
        parse_example(bad_packed_int)
    bad_float = example(entry(b"f", bytes([0x12, 0x05, 0x0A, 0x03, 0, 0, 0])))  # 3 bytes of float
    with pytest.raises(InputError, match="at byte 11: packed FloatList of 3 bytes"):
        parse_example(bad_float)
    bad_key = example(entry(b"\xff", b""))
    with pytest.raises(InputError, match="not UTF-8"):
        parse_example(bad_key)

"""The strict decoders: they read what openpi-client and json-numpy write, and refuse everything else with a
DecodeError that says what was wrong (never another exception, never an unpickle)."""

from __future__ import annotations

import pickle

import json_numpy
import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy

from vlaforge.serve.codec import (
    DecodeError,
    WireLimits,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)

ARRAYS = [
    np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
    np.linspace(-1, 1, 7, dtype=np.float32),
    np.array([True, False]),
    np.arange(6, dtype=np.int64).reshape(3, 2),
    np.zeros((0, 4), np.float64),
    np.float16([1.5, -2]),
]


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_reads_and_writes_what_openpi_client_does(arr):
    msg = {"observation/image": arr, "nested": {"x": arr}, "prompt": "hi", "n": np.float32(2.5)}
    got = decode_msgpack(msgpack_numpy.packb(msg))
    np.testing.assert_array_equal(got["observation/image"], arr)
    assert got["observation/image"].dtype == arr.dtype and got["nested"]["x"].shape == arr.shape
    assert got["n"] == np.float32(2.5) and got["n"].dtype == np.float32 and got["prompt"] == "hi"
    back = msgpack_numpy.unpackb(encode_msgpack({"actions": arr}))
    np.testing.assert_array_equal(back["actions"], arr)
    assert back["actions"].dtype == arr.dtype


@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_reads_and_writes_what_json_numpy_does(arr):
    got = decode_json(json_numpy.dumps({"image": arr, "s": np.float64(3.0), "instruction": "x"}))
    np.testing.assert_array_equal(got["image"], arr)
    assert got["image"].dtype == arr.dtype and got["s"] == 3.0
    back = json_numpy.loads(encode_json({"action": arr}))
    np.testing.assert_array_equal(back["action"], arr)
    assert back["action"].dtype == arr.dtype


def _packed_array(dtype, shape, data):
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize(
    "payload, message",
    [
        (_packed_array("|O", [1], b"\0" * 8), "dtype '|O' is not accepted"),
        (_packed_array("<U2", [1], b"\0" * 8), "dtype '<U2' is not accepted"),
        (_packed_array("|V8", [1], b"\0" * 8), "is not accepted"),
        (_packed_array(">f4", [2], b"\0" * 8), "little-endian"),
        (_packed_array("<c8", [1], b"\0" * 8), "is not accepted"),
        (_packed_array("<f4", [3], b"\0" * 8), "needs 12 bytes of data; the message has 8"),
        (_packed_array("<f4", [1], b"\0" * 8), "needs 4 bytes"),
        (_packed_array("|u1", [2**31, 2**31, 3], b""), "outside [0, 8192]"),
        (_packed_array("|u1", [4096, 4096, 3], b""), "bytes; at most 1048576 are accepted"),
        (_packed_array("|u1", [-1], b""), "outside"),
        (_packed_array("|u1", [1, 1, 1, 1, 1], b"\0"), "5 dimensions; at most 4"),
        (_packed_array("|u1", [1.0], b"\0"), "shape must be a list of integers"),
        (_packed_array("|u1", [True], b"\0"), "shape must be a list of integers"),
        (_packed_array("|u1", [1], "a"), "array data must be bytes"),
        (msgpack.packb({"x": {"__ndarray__": True, "data": b"\0"}}), "exactly the keys"),
        (msgpack.packb({"x": msgpack.ExtType(5, b"\0")}), "extension type 5"),
        (msgpack.packb({"t": msgpack.Timestamp(1)}), "Timestamp are not accepted"),
        (msgpack.packb({1: 2}), "not a valid msgpack message"),
        (msgpack.packb({"a": 1}) + b"\0", "not a valid msgpack message"),
        (b"\xc1", "not a valid msgpack message"),
        (msgpack.packb({"x": [[[[[[[[[[1]]]]]]]]]]}), "nested deeper than 8"),
        (msgpack.packb(list(range(5000))), "not a valid msgpack message"),
        (msgpack.packb([[[]] * 1024] * 16), "more than 10000 values"),
        (b"\x91" * 1000 + b"\xc0", "nested deeper than 8 levels"),
        (b"\0" * (2**20 + 1), "message of 1048577 bytes; at most 1048576"),
    ],
)
def test_msgpack_refusals(payload, message):
    limits = WireLimits(max_message_bytes=2**20, max_array_bytes=2**20)
    with pytest.raises(DecodeError) as err:
        decode_msgpack(payload, limits)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"a": {"__numpy__": "AAAA", "dtype": "|O", "shape": [3]}}', "dtype '|O' is not accepted"),
        ('{"a": {"__numpy__": "AAAA", "dtype": [["f", "<f4"]], "shape": [1]}}', "is not accepted"),
        (
            '{"a": {"__numpy__": "AAAA", "dtype": "<f4", "shape": [2]}}',
            "needs 8 bytes of data; the message has 3",
        ),
        ('{"a": {"__numpy__": "AA!A", "dtype": "|u1", "shape": [3]}}', "not valid base64"),
        ('{"a": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [1e3]}}', "list of integers"),
        ('{"a": {"__numpy__": "AAAA", "dtype": "|u1"}}', "must have the keys"),
        ('{"a": [NaN]}', "JSON constant NaN is not accepted"),
        ('{"a": -Infinity}', "JSON constant -Infinity"),
        ("[" * 50_000 + "]" * 50_000, "more than 10000 values"),
        ("[" * 2_000 + "]" * 2_000, "nested deeper than 8 levels"),
        ('{"a": 1', "not a valid JSON document"),
        (b"\xff\xfe", "not a valid JSON document"),
        ('{"a": 1' + "0" * 5000 + "}", "not a valid JSON document"),
    ],
)
def test_json_refusals(body, message):
    with pytest.raises(DecodeError) as err:
        decode_json(body)
    assert message in str(err.value)


def test_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for payload in (pickle.dumps(Evil()), pickle.dumps({"image": Evil()}, protocol=0)):
        for decode in (decode_msgpack, decode_json):
            with pytest.raises(DecodeError):
                decode(payload)
    assert not marker.exists()

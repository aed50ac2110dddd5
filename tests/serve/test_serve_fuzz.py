"""Fuzzing both decoders (thousands of malformed messages, bounded), then the live server with a few hundred
of them on each protocol plus garbage HTTP and stalled clients: every one gets an error reply, none crashes
the server, and afterwards it still answers correctly."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
from serve_helpers import make_embodiment, observation, openpi_observation, start_server
from websockets.sync.client import connect

from vlaforge.client import PolicyClient
from vlaforge.errors import InputError
from vlaforge.serve.codec import DecodeError, decode_json, decode_msgpack, encode_msgpack
from vlaforge.serve.fuzz import malformed_json, malformed_msgpack
from vlaforge.serve.observation import ObservationSpec

N_DECODER = 2500  # per decoder
N_WIRE = 150  # per protocol, through the server


def _valid_openpi() -> dict:
    return openpi_observation(observation(0))


def _valid_openvla() -> dict:
    obs = observation(0)
    return {"image": obs["images"]["corner2"], "state": obs["state"], "instruction": obs["instruction"]}


@pytest.mark.parametrize("name", ["msgpack", "json"])
def test_decoders_refuse_malformed_messages_cleanly(name):
    spec = ObservationSpec.from_embodiment(make_embodiment())
    decode = decode_msgpack if name == "msgpack" else decode_json
    cases = (
        malformed_msgpack(_valid_openpi(), N_DECODER, seed=1)
        if name == "msgpack"
        else malformed_json(_valid_openvla(), N_DECODER, seed=1)
    )
    refused = {"decode": 0, "observation": 0, "accepted": 0}
    for payload, must_fail in cases:
        try:
            obs = spec.parse(decode(payload))
        except DecodeError:
            refused["decode"] += 1
            continue
        except InputError:
            refused["observation"] += 1
            continue
        # Anything other than a refusal must be a clean observation for this checkpoint.
        assert not must_fail, payload[:200]
        assert obs.images["corner2"].shape == (64, 64, 3) and np.isfinite(obs.state).all()
        refused["accepted"] += 1
    assert sum(refused.values()) == N_DECODER
    assert refused["decode"] > N_DECODER // 3 and refused["observation"] > 100, refused


@pytest.fixture(scope="module")
def fuzzed_server(policy):
    srv = start_server(policy, io_timeout_s=1.0, max_message_mb=4)
    yield srv
    srv.stop()


def _still_answers(srv, policy) -> None:
    obs = observation(7)
    with PolicyClient(srv.url, connect_timeout_s=10) as client:
        np.testing.assert_array_equal(
            client.infer(openpi_observation(obs))["actions"], policy.predict_action(obs)
        )


def test_websocket_survives_malformed_messages(fuzzed_server, policy):
    errors = accepted = 0
    for payload, must_fail in malformed_msgpack(_valid_openpi(), N_WIRE, seed=2):
        with connect(fuzzed_server.url, proxy=None, max_size=None) as ws:
            ws.recv()  # metadata
            ws.send(payload)
            reply = ws.recv(timeout=30)
            if isinstance(reply, str):
                errors += 1
                assert reply.startswith(("bad request: ", "server busy")) and "Traceback" not in reply, reply
                with pytest.raises(Exception) as closed:
                    ws.recv(timeout=10)
                assert closed.value.rcvd.code == 1011
            else:
                assert not must_fail
                assert decode_msgpack(reply)["actions"].shape == (8, 4)
                accepted += 1
    assert errors + accepted == N_WIRE and errors > N_WIRE // 2
    # A text frame is refused too, and so is garbage after a valid metadata exchange.
    with connect(fuzzed_server.url, proxy=None) as ws:
        ws.recv()
        ws.send("{'image': ...}")
        assert "binary msgpack" in ws.recv(timeout=10)
    _still_answers(fuzzed_server, policy)


def test_http_survives_malformed_bodies_and_heads(fuzzed_server, policy):
    conn = http.client.HTTPConnection("127.0.0.1", fuzzed_server.port, timeout=30)
    statuses: dict[int, int] = {}
    for payload, must_fail in malformed_json(_valid_openvla(), N_WIRE, seed=3):
        conn.request("POST", "/act", body=payload, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        statuses[r.status] = statuses.get(r.status, 0) + 1
        if r.status == 200:
            assert not must_fail
        else:
            assert r.status in (400, 413), (r.status, body[:200])
            message = json.loads(body)["error"]
            assert "Traceback" not in message and message
        if r.getheader("Connection") == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", fuzzed_server.port, timeout=30)
    conn.close()
    assert sum(statuses.values()) == N_WIRE and statuses.get(400, 0) > N_WIRE // 2, statuses
    heads = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"POST /act HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /act HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST /act HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /act HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",  # an upgrade without the websocket headers
        b"\x00\x01\x02\r\n\r\n",
    ]
    for head in heads:
        with socket.create_connection(("127.0.0.1", fuzzed_server.port), timeout=10) as s:
            s.sendall(head)
            reply = s.recv(65536)
            assert reply.startswith(b"HTTP/1.1 4") or reply.startswith(b"HTTP/1.1 5"), (head[:40], reply[:80])
    _still_answers(fuzzed_server, policy)


def test_stalled_clients_do_not_stall_the_others(fuzzed_server, policy):
    """Half a request head, half a websocket message, and an idle socket: others are answered meanwhile,
    and the stalled connections are dropped after the I/O timeout."""
    stalled = [socket.create_connection(("127.0.0.1", fuzzed_server.port)) for _ in range(3)]
    stalled[0].sendall(b"POST /act HTTP/1.1\r\nContent-")
    stalled[1].sendall(b"POST /act HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{")  # a body that never comes
    ws = connect(fuzzed_server.url, proxy=None).__enter__()
    ws.recv()
    release = threading.Event()

    def fragments():  # the first fragment of a message, then nothing until the test ends
        yield encode_msgpack(_valid_openpi())
        release.wait(30)
        yield b""

    def send() -> None:
        with contextlib.suppress(Exception):  # the server may drop the stalled connection first
            ws.send(fragments())

    sender = threading.Thread(target=send)
    sender.start()
    try:
        start = time.perf_counter()
        _still_answers(fuzzed_server, policy)
        assert time.perf_counter() - start < 5
        time.sleep(1.5)  # past io_timeout_s: the half-sent HTTP requests are dropped
        for s in stalled[:2]:
            s.settimeout(5)
            assert s.recv(100) == b""
    finally:
        for s in stalled:
            s.close()
        release.set()
        sender.join(10)
        ws.close()

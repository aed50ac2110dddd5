"""The server's limits against cheap attacks: messages small on the wire but costly to decode (millions of
empty containers, deep nesting, long arrays), abandoned requests left in the queue, and unauthenticated
connections holding the slots. Each is driven over real sockets against a real server."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import tracemalloc

import pytest
from serve_helpers import SlowPolicy, observation, openpi_observation, start_server
from websockets.sync.client import ClientConnection, connect

from vlaforge.client import PolicyClient
from vlaforge.serve.codec import DecodeError, decode_json, decode_msgpack, encode_json, encode_msgpack
from vlaforge.serve.fuzz import costly_json, costly_msgpack

MSGPACK, JSON = costly_msgpack(), costly_json()
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")


@pytest.mark.parametrize(
    "protocol,name", [("msgpack", k) for k in MSGPACK] + [("json", k) for k in JSON], ids=lambda x: x
)
def test_costly_messages_are_refused_cheaply(protocol, name):
    payload = (MSGPACK if protocol == "msgpack" else JSON)[name]
    decode = decode_msgpack if protocol == "msgpack" else decode_json
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DecodeError) as refused:
            decode(payload)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(refused.value)
    assert "at most" in message or "deeper than" in message or "not a valid" in message, message
    assert seconds < 0.5, (seconds, message)
    assert peak < 2 * len(payload) + 8 * 2**20, (peak / 2**20, message)  # a copy of the text at most


def _latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    obs = openpi_observation(observation(1))
    with PolicyClient(url, connect_timeout_s=10, request_timeout_s=30) as client:
        client.infer(obs)
        while not stop.is_set():
            t0 = time.perf_counter()
            client.infer(obs)
            out.append(time.perf_counter() - t0)


def test_a_costly_message_does_not_stall_other_robots(policy):
    """One robot sends 4 MB of empty lists (msgpack, then JSON): it is told why, and another robot's requests
    keep being answered meanwhile."""
    import http.client

    srv = start_server(policy, max_batch=1)
    stop, lat = threading.Event(), []
    other = threading.Thread(target=_latencies, args=(srv.url, stop, lat))
    other.start()
    try:
        time.sleep(0.5)
        with connect(srv.url, proxy=None, max_size=None) as ws:
            ws.recv()
            ws.send(MSGPACK["empty_lists"])
            reply = ws.recv(timeout=60)
        assert isinstance(reply, str) and reply.startswith("bad request: "), reply[:200]
        assert "10000 values" in reply and "at most" in reply and "Traceback" not in reply, reply
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        conn.request("POST", "/act", body=JSON["empty_lists"])
        r = conn.getresponse()
        body = json.loads(r.read())
        conn.close()
        assert r.status == 400 and "10000 values" in body["error"] and "at most" in body["error"], body
        time.sleep(0.2)
    finally:
        stop.set()
        other.join(30)
        srv.stop()
    assert len(lat) > 5 and max(lat) < 1.0, (len(lat), max(lat, default=None))


def _vanish(ws) -> None:
    """Drops a websocket client's connection at once (no close handshake), as a robot that lost power."""
    with contextlib.suppress(OSError):
        ws.socket.shutdown(socket.SHUT_RDWR)
    ws.close()


def test_requests_of_a_connection_that_is_gone_are_cancelled(policy):
    """Robots that send a request and vanish (websocket and HTTP) leave nothing queued: the policy does not
    compute their requests, and a new robot is served at once, not told the server is busy."""
    slow = SlowPolicy(policy, 0.5)
    srv = start_server(slow, max_batch=1, max_queue=4)
    message = encode_msgpack(openpi_observation(observation(1)))
    obs = observation(2)
    body = encode_json(
        {"image": obs["images"]["corner2"], "state": obs["state"], "instruction": "x"}
    ).encode()
    try:
        gone = []
        for _ in range(5):
            ws = connect(srv.url, proxy=None, close_timeout=0.1)
            ws.recv()
            ws.send(message)
            gone.append(ws)
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /act HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            gone.append(s)
        time.sleep(0.3)  # all queued behind the first
        for c in gone:
            _vanish(c) if isinstance(c, ClientConnection) else c.close()
        time.sleep(0.3)
        start = time.perf_counter()
        with PolicyClient(srv.url, connect_timeout_s=10, request_timeout_s=30) as client:
            reply = client.infer(openpi_observation(obs))
        assert reply["actions"].shape == (8, 4)
        assert time.perf_counter() - start < 2.0  # at most the forward pass already running, then its own
        assert slow.calls <= 3, slow.calls  # of 8 abandoned requests, at most the one running was computed
    finally:
        srv.stop()


TOKEN = "a-long-enough-secret"


def _idle(port: int, first: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if first:
        s.sendall(first)
    return s


def test_unauthenticated_connections_cannot_hold_the_slots(policy):
    """Idle sockets, half-sent heads, health checks kept alive and requests without the token, three times
    more than the server has connection slots: a robot with the token is still served at once. Health
    reads no body and closes; an unauthenticated connection is closed after a short deadline."""
    srv = start_server(policy, token=TOKEN, max_connections=8)
    held: list[socket.socket] = []
    try:
        health = _idle(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        reply = health.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200") and b"Connection: close" in reply, reply[:200]
        assert health.recv(100) == b""  # closed at once, the announced body never read
        health.close()
        for i in range(24):
            first = [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"POST /act HTTP/1.1\r\nContent-"][i % 3]
            held.append(_idle(srv.port, first))
        time.sleep(0.3)
        start = time.perf_counter()
        with PolicyClient(srv.url, token=TOKEN, connect_timeout_s=5) as client:
            assert client.infer(openpi_observation(observation(1)))["actions"].shape == (8, 4)
        assert time.perf_counter() - start < 3.0
        # The slots held by unauthenticated peers are short-lived: each is closed within seconds.
        late = _idle(srv.port)
        late.settimeout(15)
        t0 = time.perf_counter()
        assert late.recv(100) == b""
        assert time.perf_counter() - t0 < 8.0
        late.close()
    finally:
        for s in held:
            s.close()
        srv.stop()


def test_requests_sent_ahead_are_answered_in_order(server, policy):
    """The server reads a connection while its request is computed (to see it go away): a client that sends
    its next requests before the reply still gets every reply, in order."""
    import numpy as np

    obs = [observation(s) for s in (3, 4, 5)]
    with connect(server.url, proxy=None, max_size=None) as ws:
        ws.recv()
        for o in obs:
            ws.send(encode_msgpack(openpi_observation(o)))
        for o in obs:
            np.testing.assert_array_equal(
                decode_msgpack(ws.recv(timeout=30))["actions"], policy.predict_action(o)
            )

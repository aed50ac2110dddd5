"""The server's limits against cheap attacks: messages small on the wire but costly to decode (millions of
empty containers, deep nesting, long arrays), abandoned requests left in the queue, and unauthenticated
connections holding the slots. Each is driven over real sockets against a real server."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc

import pytest
from serve_helpers import observation, openpi_observation, start_server
from websockets.sync.client import connect

from vlaforge.client import PolicyClient
from vlaforge.serve.codec import DecodeError, decode_json, decode_msgpack
from vlaforge.serve.fuzz import costly_json, costly_msgpack

MSGPACK, JSON = costly_msgpack(), costly_json()


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

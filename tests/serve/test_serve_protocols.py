"""The real server, driven by the real clients of both protocols: openpi-client's `WebsocketClientPolicy` and a
client written for OpenVLA's deploy server (`requests` + `json_numpy.patch()`, run unchanged in a subprocess
so its patching of `json` stays out of this process). Actions over the wire equal `predict_action` on the
same model, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.request

import json_numpy
import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import make_policy, observation, openpi_observation, start_server

from vlaforge.serve.codec import decode_json, encode_msgpack

# openpi-client 0.1.2 opens its connection without a context manager, which websockets >= 15 warns about.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")


def _close(client: WebsocketClientPolicy) -> None:
    client._ws.close()  # openpi-client 0.1.2 has no close(); its connection is this attribute


def test_openpi_client_gets_exactly_the_in_process_actions(server, policy):
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    try:
        meta = client.get_server_metadata()
        assert meta["server"] == "vlaforge" and meta["chunk_size"] == policy.chunk_size == 8
        assert meta["embodiment"] == policy.embodiment.to_dict()
        assert meta["observation_keys"]["cameras"]["corner2"][0] == "images/corner2"
        for seed in range(3):
            obs = observation(seed)
            reply = client.infer(openpi_observation(obs))
            want = policy.predict_action(obs)
            assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (8, 4)
            np.testing.assert_array_equal(reply["actions"], want)
            timing = reply["server_timing"]
            assert timing["batch_size"] == 1 and timing["infer_ms"] > 0
            # Our own keys (nested maps) reach the same cameras.
            np.testing.assert_array_equal(client.infer(obs)["actions"], want)
    finally:
        _close(client)


def test_openpi_client_sees_a_clear_error_and_the_server_carries_on(server, policy):
    obs = openpi_observation(observation(1))
    cases = {
        "no image for camera(s) ['corner2']": {k: v for k, v in obs.items() if k != "observation/image"},
        "is 32x32; this checkpoint reads 64x64": obs | {"observation/image": np.zeros((32, 32, 3), np.uint8)},
        "channels first": obs | {"observation/image": np.zeros((3, 64, 64), np.uint8)},
        "must be uint8": obs | {"observation/image": np.zeros((64, 64, 3), np.float32)},
        "non-finite values at [2]": obs
        | {"observation/state": np.array([0, 0, np.nan, 0, 0, 0], np.float32)},
        "expects (6,)": obs | {"observation/state": np.zeros(5, np.float32)},
        "instruction 'prompt' is empty": obs | {"prompt": "  "},
        "needs a state of 6 values": {k: v for k, v in obs.items() if k != "observation/state"},
    }
    for expected, bad in cases.items():
        client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
        with pytest.raises(RuntimeError, match="Error in inference server") as err:
            client.infer(bad)
        text = str(err.value)
        assert expected in text and "bad request" in text, text
        assert "Traceback" not in text
        _close(client)
    client = WebsocketClientPolicy(host="127.0.0.1", port=server.port)
    np.testing.assert_array_equal(client.infer(obs)["actions"], policy.predict_action(observation(1)))
    _close(client)


def test_the_error_frame_is_followed_by_close_code_1011(server):
    from websockets.sync.client import connect

    with connect(server.url, proxy=None) as ws:
        ws.recv()  # metadata
        ws.send(b"\x92\x01\x02")  # a msgpack list, not an observation map
        text = ws.recv()
        assert isinstance(text, str) and "must be a map" in text
        with pytest.raises(Exception) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd.code == 1011


def test_batches_requests_of_many_robots(policy):
    """Concurrent robots share forward passes, and each gets its own observation's actions."""
    srv = start_server(policy, max_batch=8, max_wait_ms=100)
    n, per = 6, 3
    replies: dict[tuple[int, int], dict] = {}
    barrier = threading.Barrier(n)

    def robot(i: int) -> None:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        for k in range(per):
            barrier.wait(timeout=30)
            replies[i, k] = client.infer(openpi_observation(observation(10 * i + k)))
        _close(client)

    try:
        threads = [threading.Thread(target=robot, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        srv.stop()
    assert len(replies) == n * per
    assert max(r["server_timing"]["batch_size"] for r in replies.values()) > 1
    assert srv.server.batcher.batches < n * per
    for (i, k), reply in replies.items():
        # Batched numerics (and padded prompts of different lengths) agree to float rounding.
        np.testing.assert_allclose(
            reply["actions"], policy.predict_action(observation(10 * i + k)), atol=1e-5
        )


OPENVLA_CLIENT = r"""
import sys

import requests
import json_numpy
json_numpy.patch()
import numpy as np

url, seed, encoded = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "encoded"
rng = np.random.default_rng(seed)
image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
payload = {"image": image, "instruction": "pick up the red block"}
if encoded:  # OpenVLA's "double-encoded" form, for clients without json-numpy on the server side
    action = json_numpy.loads(requests.post(url + "/act", json={"encoded": json_numpy.dumps(payload)}).json())
else:
    action = requests.post(url + "/act", json=payload).json()
print(json_numpy.dumps({"action": action, "type": type(action).__name__}))
"""


@pytest.fixture(scope="module")
def openvla_like():
    """An OpenVLA-shaped checkpoint: token head (one step), 7-D actions, one camera, no state."""
    policy = make_policy("tokens", cameras=("primary",), state_dim=0, action_dim=7)
    srv = start_server(policy, max_wait_ms=1)
    yield policy, srv
    srv.stop()


@pytest.mark.parametrize("form", ["plain", "encoded"])
def test_openvla_http_client_works_unchanged(openvla_like, form):
    policy, srv = openvla_like
    done = subprocess.run(
        [sys.executable, "-c", OPENVLA_CLIENT, srv.http, "3", form],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json_numpy.loads(done.stdout.strip().splitlines()[-1])
    assert got["type"] == "ndarray"
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    want = policy.predict_action({"images": {"primary": image}, "instruction": "pick up the red block"})
    assert want.shape == (1, 7) and got["action"].shape == (7,)  # OpenVLA replies with one (D,) action
    np.testing.assert_array_equal(got["action"], want[0])


def _post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_errors_are_clear_json(openvla_like, server):
    policy, srv = openvla_like
    image = np.zeros((64, 64, 3), np.uint8)
    good = json_numpy.dumps({"image": image, "instruction": "wave"}).encode()
    status, body = _post(srv.http + "/act", good)
    assert status == 200 and decode_json(json.dumps(body)).shape == (7,)
    cases = {
        "unnorm_key 'bridge_orig': this checkpoint has one set of statistics": {
            "image": image,
            "instruction": "wave",
            "unnorm_key": "bridge_orig",
        },
        "no instruction": {"image": image},
        "no image for camera(s) ['primary']": {"img": image, "instruction": "wave"},
        "dtype '|O' is not accepted": {
            "image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [3]},
            "instruction": "x",
        },
    }
    for expected, payload in cases.items():
        text = payload if isinstance(payload, str) else json_numpy.dumps(payload)
        status, body = _post(srv.http + "/act", text.encode())
        assert status == 400 and expected in body["error"] and "Traceback" not in body["error"], body
    status, body = _post(srv.http + "/act", b"{not json")
    assert status == 400 and "not a valid JSON document" in body["error"]
    status, body = _post(srv.http + "/nowhere", good)
    assert status == 404
    with urllib.request.urlopen(srv.http + "/healthz", timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"
    with urllib.request.urlopen(server.http + "/metadata", timeout=10) as r:
        meta = json.loads(r.read())
    assert meta["embodiment"]["camera_names"] == ["corner2"] and meta["execute_steps"] == 8
    # The websocket server of the checkpoint with a state answers a state-less HTTP request with its need.
    status, body = _post(
        server.http + "/act",
        json_numpy.dumps({"image": np.zeros((64, 64, 3), np.uint8), "instruction": "x"}).encode(),
    )
    assert status == 400 and "needs a state of 6 values" in body["error"]


def test_camera_map_and_wrist_camera():
    """Two cameras: openpi's observation/image + observation/wrist_image by default, or an explicit map."""
    two = make_policy(cameras=("agentview", "wrist"))
    obs = observation(5, cameras=("agentview", "wrist"))
    want = two.predict_action(obs)
    a, w = obs["images"]["agentview"], obs["images"]["wrist"]
    base = {"observation/state": obs["state"], "prompt": obs["instruction"]}
    srv = start_server(two)
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        reply = client.infer(base | {"observation/image": a, "observation/wrist_image": w})
        np.testing.assert_array_equal(reply["actions"], want)
        _close(client)
    finally:
        srv.stop()
    srv = start_server(two, camera_map={"cam/front": "agentview", "cam/hand": "wrist"})
    try:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        np.testing.assert_array_equal(client.infer(base | {"cam": {"front": a, "hand": w}})["actions"], want)
        _close(client)
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        with pytest.raises(RuntimeError, match=r"send it under one of \{'agentview': \['cam/front'\]"):
            client.infer(base | {"observation/image": a, "cam/hand": w})
        _close(client)
    finally:
        srv.stop()
    from vlaforge.errors import InputError
    from vlaforge.serve.observation import ObservationSpec

    with pytest.raises(InputError, match="names camera"):
        ObservationSpec.from_embodiment(two.embodiment, camera_map={"x": "front"})
    with pytest.raises(InputError, match=r"gives no key for camera\(s\) \['wrist'\]"):
        ObservationSpec.from_embodiment(two.embodiment, camera_map={"x": "agentview"})


def test_a_message_over_the_size_limit_is_refused(policy):
    from websockets.sync.client import connect

    srv = start_server(policy, max_message_mb=0.01)
    try:
        with connect(srv.url, proxy=None, max_size=None) as ws:
            ws.recv()
            ws.send(encode_msgpack({"x": np.zeros(20_000, np.uint8)}))
            with pytest.raises(Exception) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd.code == 1009  # message too big, from the websocket layer
        big = json.dumps({"pad": "x" * 20_000}).encode()
        status, body = _post(srv.http + "/act", big)
        assert status == 413 and "at most 10485 (the server's --max-message-mb)" in body["error"]
    finally:
        srv.stop()


def test_unnorm_key_of_a_checkpoint_trained_on_a_mixture():
    """OpenVLA's `unnorm_key` picks the training dataset whose statistics un-normalise, on both protocols."""
    from serve_helpers import make_stats

    mixed = make_policy("tokens", cameras=("primary",), state_dim=0, action_dim=7)
    wide = make_stats(7, 0)
    wide["action"].q01, wide["action"].q99 = wide["action"].q01 * 0.5, wide["action"].q99 * 0.5
    mixed.set_dataset_stats({"bridge_orig": make_stats(7, 0), "fractal": wide})
    image = np.random.default_rng(9).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours = {"images": {"primary": image}, "instruction": "wave"}
    srv = start_server(mixed)
    try:
        for key in ("bridge_orig", "fractal"):
            status, body = _post(
                srv.http + "/act",
                json_numpy.dumps({"image": image, "instruction": "wave", "unnorm_key": key}).encode(),
            )
            assert status == 200
            np.testing.assert_array_equal(
                decode_json(json.dumps(body)), mixed.predict_action(ours, unnorm_key=key)[0]
            )
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        reply = client.infer({"observation/image": image, "prompt": "wave", "unnorm_key": "fractal"})
        np.testing.assert_array_equal(reply["actions"], mixed.predict_action(ours, unnorm_key="fractal"))
        _close(client)
        assert client.get_server_metadata()["unnorm_keys"] == ["bridge_orig", "fractal"]
        status, body = _post(
            srv.http + "/act", json_numpy.dumps({"image": image, "instruction": "wave"}).encode()
        )
        assert status == 400 and "send unnorm_key, one of ['bridge_orig', 'fractal']" in body["error"]
    finally:
        srv.stop()

"""With a token, requests without it are refused on both protocols; openpi-client's `api_key` is accepted."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import json_numpy
import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import observation, openpi_observation, start_server
from websockets.exceptions import InvalidStatus

from vlaforge.client import PolicyClient, ServerError
from vlaforge.errors import InputError
from vlaforge.serve.server import ServeConfig

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")
TOKEN = "a-long-enough-secret"


@pytest.fixture(scope="module")
def guarded(policy):
    srv = start_server(policy, token=TOKEN)
    yield srv
    srv.stop()


def _status(url: str, body: bytes | None, headers: dict) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_websocket_needs_the_token(guarded, policy):
    for key in (None, "wrong-token-value", TOKEN + "x"):
        with pytest.raises(InvalidStatus) as refused:
            WebsocketClientPolicy(host="127.0.0.1", port=guarded.port, api_key=key)
        assert refused.value.response.status_code == 401
    client = WebsocketClientPolicy(host="127.0.0.1", port=guarded.port, api_key=TOKEN)
    obs = observation(2)
    np.testing.assert_array_equal(
        client.infer(openpi_observation(obs))["actions"], policy.predict_action(obs)
    )
    client._ws.close()
    with pytest.raises(ServerError, match="pass the server's token"):
        PolicyClient(guarded.url, token="not-the-token").connect()
    assert PolicyClient(guarded.url, token=TOKEN).connect()["server"] == "vlaforge"


def test_http_needs_the_token(guarded):
    body = json_numpy.dumps(
        {"image": np.zeros((64, 64, 3), np.uint8), "instruction": "x", "state": np.zeros(6)}
    )
    act = guarded.http + "/act"
    assert _status(act, body.encode(), {}) == 401
    assert _status(act, body.encode(), {"Authorization": "Bearer nope-nope-nope"}) == 401
    assert _status(act, body.encode(), {"Authorization": TOKEN}) == 401  # no scheme
    assert _status(act, body.encode(), {"Authorization": f"Bearer {TOKEN}"}) == 200
    assert _status(act, body.encode(), {"Authorization": f"Api-Key {TOKEN}"}) == 200
    assert _status(guarded.http + "/metadata", None, {}) == 401
    assert _status(guarded.http + "/healthz", None, {}) == 200  # health reveals nothing
    # The refusal is read from the head alone: a huge unauthenticated body is never read.
    req = urllib.request.Request(act, data=b"x" * 100, headers={"Content-Length": str(2**30)}, method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 401 and "token" in json.loads(refused.value.read())["error"]


def test_safe_defaults(monkeypatch):
    monkeypatch.delenv("VLAFORGE_TOKEN", raising=False)
    cfg = ServeConfig(policy="p")
    assert cfg.host == "127.0.0.1" and cfg.token is None
    assert 10 * 2**20 <= cfg.limits.max_message_bytes <= 100 * 2**20  # tens of MiB
    monkeypatch.setenv("VLAFORGE_TOKEN", TOKEN)
    assert ServeConfig(policy="p").token == TOKEN  # from the environment, out of the process list
    with pytest.raises(InputError, match="at least 8 characters"):
        ServeConfig(policy="p", token="short")
    with pytest.raises(InputError, match="--max-batch must be >= 1"):
        ServeConfig(policy="p", max_batch=0)

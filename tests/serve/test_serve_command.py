"""`vlaforge serve` as a user runs it: a separate process, token from the environment, stopped by SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from serve_helpers import make_policy, observation, openpi_observation

from vlaforge.models.policy import Policy

pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")


def test_serve_command(tmp_path):
    ckpt = make_policy().save_pretrained(tmp_path / "policy")
    env = {**os.environ, "VLAFORGE_TOKEN": "token-from-the-environment", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vlaforge.cli",
        "serve",
        "--policy",
        str(ckpt),
        "--port",
        "0",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"on ws://127\.0\.0\.1:(\d+) \(openpi websocket\).*token required", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(match.group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30) as r:
            assert r.read() == b"OK\n"
        client = WebsocketClientPolicy(host="127.0.0.1", port=port, api_key="token-from-the-environment")
        meta = client.get_server_metadata()
        assert meta["checkpoint"] == "policy" and len(meta["model_sha256"]) == 64
        obs = observation(4)
        got = client.infer(openpi_observation(obs))["actions"]
        client._ws.close()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            want = Policy.from_pretrained(ckpt).predict_action(obs)
        finally:
            torch.set_num_threads(threads)
        np.testing.assert_array_equal(got, want)  # another process, the same weights, the same actions
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped;" in out and "'requests': 1" in out


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VLAFORGE_DEBUG"}
    cmd = [sys.executable, "-m", "vlaforge.cli", "serve", *args]
    return subprocess.run(
        cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120
    )


def test_serve_on_a_port_in_use_is_one_line(tmp_path):
    ckpt = make_policy().save_pretrained(tmp_path / "policy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _serve("--policy", str(ckpt), "--port", str(port))
    assert r.returncode == 2, r.stderr
    assert f"--port {port}: 127.0.0.1:{port} is already in use" in r.stderr and "--port 0" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_serve_a_served_policy_names_it_whole(tmp_path):
    r = _serve("--policy", "ws://127.0.0.1:8000")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--policy ws://127.0.0.1:8000 is a served policy" in r.stderr
    assert "vlaforge eval --policy ws://127.0.0.1:8000" in r.stderr

"""The robot-side client: no torch, the action guard, the chunk queue's three modes, the watchdog (stop the
server mid-episode: the client holds and reports, then resumes), and the rate limiter."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from serve_helpers import SlowPolicy, observation, start_server

from vlaforge.client import (
    ActionGuard,
    ActionQueue,
    ControlLoop,
    PolicyClient,
    RateLimiter,
    RemotePolicy,
    ServerUnavailable,
    UnsafeActionError,
    Watchdog,
)


def test_client_imports_without_torch():
    code = textwrap.dedent(
        """
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "safetensors"):
                    raise ImportError(f"{name} is blocked: the client must not need it")

        sys.meta_path.insert(0, NoTorch())
        import vlaforge.client
        from vlaforge.client import ControlLoop, PolicyClient, RemotePolicy
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "PIL", "av"))
        print("ok", heavy)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok []"


def test_action_guard():
    guard = ActionGuard([-1, -1, 0], [1, 1, 1], max_delta=0.25)
    with pytest.raises(UnsafeActionError) as err:
        guard([0.0, np.nan, 0.5])
    assert err.value.hold is None  # nothing was sent yet: leave the robot as it is
    np.testing.assert_array_equal(guard([2.0, -0.1, 0.5]), np.float32([1.0, -0.1, 0.5]))  # clamped
    np.testing.assert_allclose(guard([0.0, 0.9, 0.5]), [0.75, 0.15, 0.5])  # at most 0.25 per step
    with pytest.raises(UnsafeActionError, match="non-finite action") as err:
        guard([np.inf, 0, 0])
    np.testing.assert_allclose(err.value.hold, [0.75, 0.15, 0.5])  # hold = the last action that passed
    with pytest.raises(UnsafeActionError, match="shape"):
        guard([0.0, 0.0])
    assert guard.clamped == 2
    zeros = ActionGuard([-1, -1], [1, 1], hold=[0, 0])  # a delta-driven robot holds with zeros
    zeros([0.5, 0.5])
    np.testing.assert_array_equal(zeros.hold_action(), [0, 0])


def test_action_queue_modes():
    chunk = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    q = ActionQueue("open_loop", execute_steps=3)
    q.add(chunk, obs_step=0, now_step=0)
    assert [q.pop(t)[0] for t in range(3)] == [0, 2, 4] and q.pop(3) is None
    # Temporal ensembling: step 1 has the prediction of the chunk from step 0 (oldest) and from step 1.
    q = ActionQueue("ensemble", decay=0.5)
    q.add(chunk, 0, 0)
    np.testing.assert_array_equal(q.pop(0), chunk[0])
    q.add(chunk + 100, 1, 1)
    w = np.exp(-0.5 * np.arange(2))
    np.testing.assert_allclose(q.pop(1), (w[0] * chunk[1] + w[1] * (chunk[0] + 100)) / w.sum(), rtol=1e-6)
    # Asynchronous: a chunk asked for at step 2 that arrives at step 5 loses its 3 stale steps, and
    # replaces what the previous chunk had planned from there on.
    q = ActionQueue("async", execute_steps=8)
    q.add(chunk, 0, 0)
    assert q.pop(0)[0] == 0 and q.remaining(1) == 7
    q.add(chunk + 100, obs_step=2, now_step=5)
    assert q.dropped == 3
    assert q.pop(5)[0] == 100 + chunk[3, 0] and q.remaining(6) == 4


def test_rate_limiter_and_watchdog():
    rate = RateLimiter(50)
    start = time.perf_counter()
    for _ in range(10):
        rate.sleep()
    assert 0.18 < time.perf_counter() - start < 0.6
    fired = []
    dog = Watchdog(50, on_expire=fired.append).start()
    try:
        time.sleep(0.3)
        assert dog.expired() and len(fired) == 1  # once per lapse
        dog.feed()
        assert not dog.expired()
    finally:
        dog.stop()


def test_open_loop_over_the_wire_is_exact(server, policy):
    loop = ControlLoop(PolicyClient(server.url), mode="open_loop", execute_steps=4, watchdog_ms=5000)
    try:
        for t in range(8):
            step = loop.step(observation(t))
            want = policy.predict_action(observation(t - t % 4))[t % 4]  # re-planned every 4 steps
            assert not step.held
            np.testing.assert_array_equal(step.action, want)
    finally:
        loop.close()
    remote = RemotePolicy(server.url)
    assert remote.execute_steps == 8 and remote.embodiment == policy.embodiment
    np.testing.assert_array_equal(
        remote.predict_action(observation(3)), policy.predict_action(observation(3))
    )
    remote.close()


def test_ensemble_averages_every_prediction_of_a_step(server, policy):
    loop = ControlLoop(PolicyClient(server.url), mode="ensemble", watchdog_ms=5000)
    chunks = [policy.predict_action(observation(t)) for t in range(3)]
    try:
        got = [loop.step(observation(t)).action for t in range(3)]
    finally:
        loop.close()
    w = np.exp(-0.01 * np.arange(3))
    want = sum(w[i] * chunks[i][2 - i] for i in range(3)) / w.sum()
    np.testing.assert_allclose(got[2], want, rtol=1e-5)


def test_async_mode_asks_ahead_and_never_holds(server):
    loop = ControlLoop(PolicyClient(server.url), mode="async", watchdog_ms=2000, refill=0.5)
    rate = RateLimiter(50)
    try:
        steps = []
        for t in range(24):
            steps.append(loop.step(observation(t)))
            rate.sleep()
    finally:
        loop.close()
    assert not any(s.held for s in steps[1:]), [s.reason for s in steps]
    assert server.server.stats["requests"] >= 3


def _run_until(loop, cond, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step = loop.step(observation(0))
        if cond(step):
            return step
        time.sleep(0.02)
    raise AssertionError(f"condition not reached in {seconds} s; events {loop.events}")


@pytest.mark.parametrize("mode", ["open_loop", "async"])
def test_watchdog_holds_when_the_server_stops_mid_episode(policy, mode):
    srv = start_server(policy)
    port = srv.port
    loop = ControlLoop(
        PolicyClient(srv.url, backoff_s=(0.05, 0.2)), mode=mode, execute_steps=2, watchdog_ms=300
    )
    try:
        fresh = [loop.step(observation(t)) for t in range(4)]
        assert not any(s.held for s in fresh)
        srv.stop()  # mid-episode
        t0 = time.monotonic()
        held = _run_until(loop, lambda s: s.held, 5.0)
        assert time.monotonic() - t0 < 2.0
        np.testing.assert_array_equal(held.action, loop.guard.last)  # holds the last safe action
        assert held.reason and any(e["kind"] == "hold" for e in loop.events)
        for _ in range(3):  # keeps holding, promptly, without raising
            t1 = time.monotonic()
            assert loop.step(observation(0)).held
            assert time.monotonic() - t1 < 1.0
        srv = start_server(policy, port=port)  # back: the client reconnects and resumes
        _run_until(loop, lambda s: not s.held, 10.0)
        assert loop.events[-1]["kind"] == "resume"
    finally:
        loop.close()
        srv.stop()


@pytest.mark.parametrize("mode", ["open_loop", "ensemble", "async"])
def test_resumes_after_a_lapse_with_a_policy_slower_than_100_ms(policy, mode):
    """A policy of 300 ms per request, a watchdog of 500 ms: after the server was gone for a while, the
    client's requests get the time they need again, and it resumes on the same connection."""
    slow = SlowPolicy(policy, 0.3)
    srv = start_server(slow, max_batch=1)
    port = srv.port
    client = PolicyClient(srv.url, backoff_s=(0.05, 0.2))
    loop = ControlLoop(client, mode=mode, execute_steps=2, watchdog_ms=500)
    try:
        _run_until(loop, lambda s: not s.held, 5.0)
        srv.stop()
        _run_until(loop, lambda s: s.held, 5.0)
        srv = start_server(slow, port=port, max_batch=1)
        _run_until(loop, lambda s: not s.held, 10.0)
        assert loop.events[-1]["kind"] == "resume"
        reconnects = client.reconnects
        fresh = [loop.step(observation(t)) for t in range(6)]
        assert sum(not s.held for s in fresh) >= 3, [s.reason for s in fresh]
        assert client.reconnects == reconnects  # no more timeouts, no more dropped connections
    finally:
        loop.close()
        srv.stop()


def test_unreachable_server_is_reported():
    with pytest.raises(ServerUnavailable, match="cannot reach ws://127.0.0.1:9"):
        PolicyClient("127.0.0.1:9", connect_timeout_s=0.3).connect()

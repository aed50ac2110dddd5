"""The robot side of `vlaforge serve`: a small client that needs numpy, msgpack and websockets only (no torch).

- `PolicyClient` speaks the openpi websocket protocol (so it also talks to openpi's own servers): connects
  with a token, reconnects with exponential backoff, bounds every request in time, and decodes replies with
  the same strict codec the server uses (`vlaforge.serve.codec`).
- `RemotePolicy` wraps it in the `Policy` prediction interface (`embodiment`, `execute_steps`,
  `predict_action(obs) -> (H, D)`); `vlaforge eval --policy ws://HOST:PORT` rolls it out.
- `ActionGuard` stands between the policy and the hardware: a non-finite or malformed action is never
  sent (it raises `UnsafeActionError`, carrying the action to hold), every action is clamped to the
  embodiment's limits and, optionally, to a maximum change per step.
- `ActionQueue` turns chunks into one action per control step: open loop (execute K steps, then ask again),
  temporal ensembling (ACT, Zhao et al. 2023: every step averages all predictions for it, weights
  exp(-m i), i = 0 for the oldest, m = 0.01), or asynchronous (LeRobot's async inference: the next chunk is
  requested while the current one runs, and the steps of a new chunk that already elapsed are dropped).
- `Watchdog` (no fresh action in N ms: hold) and `RateLimiter` (keep the loop at the control rate).
- `ControlLoop` puts them together: `step(obs) -> Step(action, held, reason)`; when the server stops
  answering it holds and reports instead of raising, and resumes when actions come back.

Example (a robot at 10 Hz):

    from vlaforge.client import ControlLoop, PolicyClient, RateLimiter

    client = PolicyClient("ws://127.0.0.1:8000", token=None)
    loop = ControlLoop(client, mode="async", watchdog_ms=500)
    rate = RateLimiter(loop.control_hz)
    while True:
        obs = {"images": {"corner2": camera()}, "state": joints(), "instruction": "open the drawer"}
        step = loop.step(obs)
        if step.action is not None:
            robot.apply(step.action)
        rate.sleep()
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlaforge.serve.codec import WireLimits, decode_msgpack, encode_msgpack
from vlaforge.types import Embodiment, Observation

log = logging.getLogger("vlaforge.client")

# The keys an openpi server reads in its LIBERO / DROID examples; used when a server does not say its own.
OPENPI_KEYS = {"cameras": ["observation/image", "observation/wrist_image"], "state": "observation/state"}


class ServerError(RuntimeError):
    """The server answered with an error (its text says what was wrong); the connection was closed."""


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or stopped answering) within the time allowed."""


class UnsafeActionError(RuntimeError):
    """An action failed the guard (non-finite or the wrong shape). `hold` is the action to send instead
    (None: nothing was sent yet, leave the robot as it is)."""

    def __init__(self, message: str, hold: np.ndarray | None):
        super().__init__(message)
        self.hold = hold


# ------------------------------------------------------------------ connection
class PolicyClient:
    """A synchronous openpi-protocol client with reconnection.

    Args:
        uri: `ws://host:port` (or `host:port`).
        token: sent as `Authorization: Api-Key <token>` (as openpi-client sends its `api_key`).
        connect_timeout_s: how long `connect()` keeps trying by default.
        request_timeout_s: how long `infer()` waits by default (connecting included).
        backoff_s: (first, largest) wait between connection attempts; it doubles after each failure.
        limits: caps on the replies this client decodes.
    """

    def __init__(
        self,
        uri: str,
        token: str | None = None,
        *,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.05, 2.0),
        limits: WireLimits | None = None,
    ):
        self.uri = uri if uri.startswith(("ws://", "wss://")) else f"ws://{uri}"
        self.token = token
        self.connect_timeout_s, self.request_timeout_s = connect_timeout_s, request_timeout_s
        self.backoff_s = backoff_s
        self.limits = limits or WireLimits()
        self._ws: Any = None
        self._metadata: dict[str, Any] | None = None
        self._next_attempt = 0.0
        self._delay = backoff_s[0]
        self.reconnects = 0

    @property
    def metadata(self) -> dict[str, Any]:
        """The server's metadata map (connects first if needed)."""
        if self._metadata is None:
            self.connect()
        assert self._metadata is not None
        return self._metadata

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def _open(self, timeout_s: float) -> None:
        from websockets.exceptions import InvalidStatus
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        options: dict[str, Any] = {
            "compression": None,
            "max_size": self.limits.max_message_bytes,
            "close_timeout": 1.0,
        }
        params = inspect.signature(connect).parameters
        if "proxy" in params:
            options["proxy"] = None  # a robot talks to its server directly, whatever HTTP_PROXY says
        if "legacy" in params:
            options["legacy"] = True  # a connection that outlives this call (websockets >= 17.1 asks)
        try:
            ws = connect(self.uri, additional_headers=headers, open_timeout=max(timeout_s, 0.01), **options)
        except InvalidStatus as e:
            status = e.response.status_code
            if status in (401, 403):
                raise ServerError(
                    f"{self.uri} refused the connection (HTTP {status}): pass the server's token"
                ) from None
            raise ServerUnavailable(f"{self.uri} refused the connection (HTTP {status})") from None
        try:
            first = ws.recv(timeout=max(timeout_s, 0.01))
            if isinstance(first, str):
                raise ServerError(f"{self.uri} sent an error instead of its metadata: {first[:300]}")
            meta = decode_msgpack(first, self.limits)
            if not isinstance(meta, dict):
                raise ServerError(f"{self.uri} sent metadata of type {type(meta).__name__}, not a map")
        except BaseException:
            ws.close()
            raise
        self._ws, self._metadata = ws, meta

    def connect(self, timeout_s: float | None = None) -> dict[str, Any]:
        """Connects (retrying with backoff until `timeout_s`) and returns the server's metadata.

        Raises:
            ServerUnavailable: not reachable in time.
            ServerError: the server refused the token, or sent something other than metadata.
        """
        if self._ws is not None:
            assert self._metadata is not None
            return self._metadata
        deadline = time.monotonic() + (self.connect_timeout_s if timeout_s is None else timeout_s)
        last: Exception | None = None
        while True:
            now = time.monotonic()
            if now >= self._next_attempt:
                try:
                    self._open(deadline - now)
                    self._delay = self.backoff_s[0]
                    self._next_attempt = 0.0
                    assert self._metadata is not None
                    return self._metadata
                except ServerError:
                    raise
                except (OSError, TimeoutError, ServerUnavailable, EOFError) as e:
                    last = e
                except Exception as e:  # a handshake the websockets library refused
                    last = e
                self._next_attempt = time.monotonic() + self._delay
                self._delay = min(self._delay * 2, self.backoff_s[1])
            wait = self._next_attempt - time.monotonic()
            if time.monotonic() + max(wait, 0) >= deadline:
                raise ServerUnavailable(
                    f"cannot reach {self.uri}: {last or 'waiting before the next attempt'}"
                )
            time.sleep(max(wait, 0))

    def close(self) -> None:
        """Closes the connection (a clean close handshake, at most `close_timeout` = 1 s)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                ws.close()

    def _drop(self) -> None:
        """Drops the connection at once: a server that stopped answering would not answer a close either."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.socket.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                ws.close()

    def infer(self, obs: Mapping[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Sends one observation; returns the reply (`{"actions": (H, D), "server_timing": {...}}`).

        A connection found closed is reopened once (the request is idempotent); a reply that does not come
        in time closes the connection, so a late reply can never be taken for the next one.

        Raises:
            ServerError: the server refused the observation (its message says why).
            ServerUnavailable: no connection within the time allowed.
            TimeoutError: connected, but no reply within the time allowed.
        """
        from websockets.exceptions import ConnectionClosed

        budget = self.request_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        data = encode_msgpack(dict(obs))
        for attempt in range(2):
            if self._ws is None:
                if attempt:
                    self.reconnects += 1
                self.connect(max(deadline - time.monotonic(), 0.0))
            try:
                self._ws.send(data)
                reply = self._ws.recv(timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                self._drop()
                raise TimeoutError(f"no reply from {self.uri} within {budget:.3g} s") from None
            except (ConnectionClosed, OSError) as e:
                self._drop()
                if attempt or time.monotonic() >= deadline:
                    raise ServerUnavailable(f"lost the connection to {self.uri}: {e}") from None
                continue
            if isinstance(reply, str):
                self.close()
                raise ServerError(reply)
            out = decode_msgpack(reply, self.limits)
            if not isinstance(out, dict) or not isinstance(out.get("actions"), np.ndarray):
                raise ServerError(f"{self.uri} replied without an 'actions' array: {str(out)[:200]}")
            return out
        raise AssertionError("unreachable")

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def observation_message(
    obs: Observation | Mapping[str, Any], keys: Mapping[str, Any] | None, cameras: list[str]
) -> dict:
    """An Observation -> the flat message a server reads.

    Args:
        obs: an `Observation` or `{"images": {...}, "state": ..., "instruction": ...}`.
        keys: the server's `observation_keys` metadata (None: openpi's LIBERO-style keys).
        cameras: the cameras to send, in the server's order.
    """
    obs = Observation.from_dict(obs)
    msg: dict[str, Any] = {}
    for i, cam in enumerate(cameras):
        if keys and keys.get("cameras", {}).get(cam):
            key = keys["cameras"][cam][0]
        elif i < len(OPENPI_KEYS["cameras"]):
            key = OPENPI_KEYS["cameras"][i]
        else:
            key = f"images/{cam}"
        msg[key] = np.ascontiguousarray(obs.images[cam])
    state_keys = keys.get("state") if keys else [OPENPI_KEYS["state"]]
    if obs.state is not None and state_keys:
        msg[state_keys[0]] = np.asarray(obs.state, dtype=np.float32)
    instruction_keys = (keys or {}).get("instruction") or ["prompt"]
    msg[instruction_keys[0]] = str(obs.instruction)
    return msg


class RemotePolicy:
    """A served policy behind the `Policy` prediction interface (what evaluation drives).

    Args:
        uri: the server, `ws://host:port`.
        token: the server's token, if it has one.
        embodiment: the robot, for a server whose metadata does not describe it (another framework's);
            a vlaforge server's own embodiment is used otherwise.
        execute_steps: open-loop steps per chunk for such a server (default: its metadata, else the chunk).
        **client_options: passed to `PolicyClient`.
    """

    def __init__(
        self,
        uri: str,
        token: str | None = None,
        *,
        embodiment: Embodiment | None = None,
        execute_steps: int | None = None,
        **client_options: Any,
    ):
        self.client = PolicyClient(uri, token, **client_options)
        meta = self.client.connect()
        if "embodiment" in meta:
            self.embodiment = Embodiment.from_dict(meta["embodiment"])
        elif embodiment is not None:
            self.embodiment = embodiment
        else:
            raise ServerError(f"{uri} does not describe its robot in its metadata; pass an embodiment")
        self.chunk_size = int(meta.get("chunk_size") or 0) or None
        self.execute_steps = int(execute_steps or meta.get("execute_steps") or self.chunk_size or 1)
        self.keys = meta.get("observation_keys")

    @property
    def metadata(self) -> dict[str, Any]:
        return self.client.metadata

    def predict_action(self, obs: Observation | Mapping[str, Any]) -> np.ndarray:
        """One observation -> the server's (H, D) float32 action chunk."""
        msg = observation_message(obs, self.keys, list(self.embodiment.camera_names))
        actions = np.asarray(self.client.infer(msg)["actions"], dtype=np.float32)
        return actions[None] if actions.ndim == 1 else actions

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------ safety
class ActionGuard:
    """Checks and bounds every action before it reaches the hardware.

    Args:
        low, high: per-dimension limits (the embodiment's `action_low` / `action_high`).
        max_delta: largest change of each dimension from one step to the next (None: unbounded); a scalar
            or one value per dimension.
        hold: what "hold" sends: "last" (the last action that passed) or a fixed action (e.g. zeros for a
            robot driven by deltas, where repeating the last action would keep it moving).
    """

    def __init__(
        self,
        low: Any,
        high: Any,
        max_delta: float | Any | None = None,
        hold: str | Any = "last",
    ):
        self.low = np.asarray(low, dtype=np.float32)
        self.high = np.asarray(high, dtype=np.float32)
        if self.low.shape != self.high.shape or self.low.ndim != 1 or np.any(self.low > self.high):
            raise ValueError(f"action limits must be two vectors with low <= high; got {low} and {high}")
        self.max_delta = (
            None if max_delta is None else np.broadcast_to(np.asarray(max_delta, np.float32), self.low.shape)
        )
        if isinstance(hold, str) and hold != "last":
            raise ValueError(f"hold must be 'last' or an action; got {hold!r}")
        self._hold = None if isinstance(hold, str) else np.asarray(hold, dtype=np.float32)
        if self._hold is not None and self._hold.shape != self.low.shape:
            raise ValueError(
                f"the hold action has shape {self._hold.shape}; the robot's actions are {self.low.shape}"
            )
        self.last: np.ndarray | None = None
        self.clamped = 0

    @classmethod
    def from_embodiment(cls, embodiment: Embodiment | Mapping[str, Any], **kwargs: Any) -> ActionGuard:
        emb = embodiment if isinstance(embodiment, Embodiment) else Embodiment.from_dict(embodiment)
        return cls(emb.action_low, emb.action_high, **kwargs)

    def hold_action(self) -> np.ndarray | None:
        """The action to send while holding (None: nothing was sent yet; leave the robot as it is)."""
        if self._hold is not None:
            return self._hold.copy()
        return None if self.last is None else self.last.copy()

    def __call__(self, action: Any) -> np.ndarray:
        """A safe (D,) float32 action, or `UnsafeActionError` (with the hold action) when there is none."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.low.shape:
            raise UnsafeActionError(
                f"action of shape {a.shape}; the robot takes {self.low.shape}", self.hold_action()
            )
        if not np.isfinite(a).all():
            bad = np.flatnonzero(~np.isfinite(a)).tolist()
            raise UnsafeActionError(f"non-finite action (dims {bad}): holding", self.hold_action())
        safe = np.clip(a, self.low, self.high).astype(np.float32)
        if self.max_delta is not None and self.last is not None:
            safe = np.clip(safe, self.last - self.max_delta, self.last + self.max_delta).astype(np.float32)
        if not np.array_equal(safe, a.astype(np.float32)):
            self.clamped += 1
        self.last = safe
        return safe.copy()

    def reset(self) -> None:
        self.last = None


class Watchdog:
    """Trips when it is not fed for `timeout_ms`.

    Poll `expired()` from the control loop, or `start()` a thread that calls `on_expire` once per lapse
    (for a loop that may itself hang).
    """

    def __init__(self, timeout_ms: float, on_expire: Callable[[float], None] | None = None):
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0; got {timeout_ms}")
        self.timeout_s = timeout_ms / 1000.0
        self.on_expire = on_expire
        self._last = time.monotonic()
        self._tripped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.trips = 0

    def feed(self) -> None:
        self._last = time.monotonic()
        self._tripped = False

    def age_ms(self) -> float:
        return (time.monotonic() - self._last) * 1000

    def remaining_s(self) -> float:
        return max(self.timeout_s - (time.monotonic() - self._last), 0.0)

    def expired(self) -> bool:
        return time.monotonic() - self._last >= self.timeout_s

    def start(self) -> Watchdog:
        def run() -> None:
            while not self._stop.wait(min(self.timeout_s / 4, 0.05)):
                if self.expired() and not self._tripped:
                    self._tripped = True
                    self.trips += 1
                    if self.on_expire is not None:
                        self.on_expire(self.age_ms())

        self._thread = threading.Thread(target=run, name="vlaforge-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)


class RateLimiter:
    """Keeps a loop at `hz`: `sleep()` waits until the next tick. A loop that falls more than a period
    behind starts afresh from now (no burst of catch-up steps); `overruns` counts the late ticks."""

    def __init__(self, hz: float):
        if hz <= 0:
            raise ValueError(f"hz must be > 0; got {hz}")
        self.period = 1.0 / hz
        self._next = time.monotonic() + self.period
        self.overruns = 0

    def sleep(self) -> None:
        now = time.monotonic()
        if now < self._next:
            time.sleep(self._next - now)
            self._next += self.period
            return
        self.overruns += 1
        late = now - self._next
        self._next = now + self.period if late > self.period else self._next + self.period


# ------------------------------------------------------------------ chunks -> steps
MODES = ("open_loop", "ensemble", "async")


class ActionQueue:
    """Action chunks -> one action per control step, by control-step index.

    Args:
        mode: "open_loop" (each chunk runs `execute_steps` steps, then the next is asked for), "ensemble"
            (ACT's temporal ensembling: a chunk every step, each step the weighted mean of every prediction
            made for it, weights exp(-decay * i), i = 0 for the oldest) or "async" (a new chunk replaces the
            steps it covers; the steps that elapsed while it was computed are dropped).
        execute_steps: steps used from each chunk ("open_loop" and "async").
        decay: the ensembling weight m (ACT: 0.01).
    """

    def __init__(self, mode: str = "open_loop", execute_steps: int = 1, decay: float = 0.01):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if execute_steps < 1:
            raise ValueError(f"execute_steps must be >= 1; got {execute_steps}")
        self.mode, self.execute_steps, self.decay = mode, execute_steps, decay
        self._steps: dict[int, list[np.ndarray]] = {}  # step -> predictions, oldest first
        self.dropped = 0  # stale steps of late chunks

    def add(self, chunk: np.ndarray, obs_step: int, now_step: int) -> None:
        """A chunk predicted from the observation of `obs_step`, arriving when `now_step` is next."""
        chunk = np.asarray(chunk, dtype=np.float32)
        if chunk.ndim == 1:
            chunk = chunk[None]
        n = min(self.execute_steps, len(chunk)) if self.mode == "open_loop" else len(chunk)
        stale = max(now_step - obs_step, 0)
        self.dropped += min(stale, n)
        if self.mode != "ensemble":
            for s in [s for s in self._steps if s >= obs_step + stale]:
                del self._steps[s]  # the newer prediction replaces the older one
        for i in range(stale, n):
            self._steps.setdefault(obs_step + i, []).append(chunk[i])
        for s in [s for s in self._steps if s < now_step]:
            del self._steps[s]

    def pop(self, step: int) -> np.ndarray | None:
        """The action of `step` (None when no chunk covers it); earlier steps are forgotten."""
        for s in [s for s in self._steps if s < step]:
            del self._steps[s]
        preds = self._steps.pop(step, None)
        if not preds:
            return None
        if len(preds) == 1:
            return preds[0]
        w = np.exp(-self.decay * np.arange(len(preds)))  # i = 0: the oldest prediction
        return (np.stack(preds) * w[:, None]).sum(0).astype(np.float32) / np.float32(w.sum())

    def remaining(self, step: int) -> int:
        """Steps from `step` on that are covered."""
        return sum(1 for s in self._steps if s >= step)

    def clear(self) -> None:
        self._steps.clear()


@dataclass
class Step:
    """What `ControlLoop.step` decided.

    Attributes:
        action: the (D,) action to send (already guarded); None while holding before any action was sent.
        held: True when this is the hold action, not a fresh one.
        reason: why it held (None otherwise).
        step: the control step index.
    """

    action: np.ndarray | None
    held: bool
    reason: str | None
    step: int


class _Requester:
    """One background thread that runs `infer` on the latest observation it is given (async mode)."""

    def __init__(self, infer: Callable[[Any], np.ndarray]):
        self._infer = infer
        self._cv = threading.Condition()
        self._job: tuple[Any, int] | None = None
        self._results: list[tuple[Any, int]] = []
        self.busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="vlaforge-requester", daemon=True)
        self._thread.start()

    def submit(self, msg: Any, step: int) -> None:
        with self._cv:
            self._job, self.busy = (msg, step), True
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                msg, step = self._job  # type: ignore[misc]
                self._job = None
            try:
                result: Any = self._infer(msg)
            except Exception as e:  # reported by the control loop
                result = e
            with self._cv:
                self._results.append((result, step))
                self.busy = self._job is not None
                self._cv.notify_all()

    def take(self, timeout_s: float = 0.0) -> list[tuple[Any, int]]:
        """Results so far, waiting up to `timeout_s` for one if there is none."""
        with self._cv:
            if not self._results and timeout_s > 0 and self.busy:
                self._cv.wait_for(lambda: bool(self._results), timeout_s)
            out, self._results = self._results, []
            return out

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class ControlLoop:
    """Observation in, one safe action out, every control step.

    Args:
        client: a `PolicyClient` (or anything with `metadata` and `infer(msg, timeout_s) -> {"actions"}`).
        mode: "open_loop", "ensemble" or "async" (see `ActionQueue`).
        execute_steps: steps used per chunk (default: the server's `execute_steps`).
        guard: the action guard (default: the server embodiment's limits, hold = last action).
        watchdog_ms: with no fresh action for this long, hold. Also the longest a step waits for the server.
        refill: async mode: ask for the next chunk when at most this fraction of `execute_steps` is left.
        decay: ensembling weight m.
    """

    def __init__(
        self,
        client: Any,
        *,
        mode: str = "open_loop",
        execute_steps: int | None = None,
        guard: ActionGuard | None = None,
        watchdog_ms: float = 500.0,
        refill: float = 0.5,
        decay: float = 0.01,
    ):
        self.client = client
        meta = client.metadata
        self.embodiment = Embodiment.from_dict(meta["embodiment"]) if "embodiment" in meta else None
        if guard is None:
            if self.embodiment is None:
                raise ValueError(
                    "the server does not describe its robot; pass an ActionGuard with its limits"
                )
            guard = ActionGuard.from_embodiment(self.embodiment)
        self.guard = guard
        k = int(execute_steps or meta.get("execute_steps") or meta.get("chunk_size") or 1)
        self.queue = ActionQueue(mode, k, decay)
        self.mode = mode
        self.watchdog = Watchdog(watchdog_ms)
        self.refill_at = max(int(math.floor(refill * k)), 0)
        self.keys = meta.get("observation_keys")
        self.control_hz = float(
            meta.get("control_hz") or (self.embodiment.control_hz if self.embodiment else 10.0)
        )
        self._requester = _Requester(self._infer) if mode == "async" else None
        self._t = 0
        self._holding: str | None = None
        self._held_since = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, obs: Any) -> Any:
        if self.embodiment is None:
            return dict(obs)
        return observation_message(obs, self.keys, list(self.embodiment.camera_names))

    def _infer(self, msg: Any, timeout_s: float | None = None) -> np.ndarray:
        reply = self.client.infer(msg, timeout_s=self.watchdog.timeout_s if timeout_s is None else timeout_s)
        return np.asarray(reply["actions"], dtype=np.float32)

    def _report(self, step: int, kind: str, message: str) -> None:
        self.events.append({"step": step, "kind": kind, "message": message, "time": time.time()})
        (log.warning if kind != "resume" else log.info)("step %d: %s: %s", step, kind, message)

    def step(self, obs: Observation | Mapping[str, Any]) -> Step:
        """One control step (see the class docstring). Raises only `UnsafeActionError` (a non-finite or
        malformed action from the policy), after dropping the chunk it came from; send `error.hold`."""
        t = self._t
        self._t += 1
        failure: str | None = None
        if self._requester is not None:
            action, failure = self._step_async(obs, t)
        else:
            action = self.queue.pop(t) if self.mode == "open_loop" else None
            if action is None:
                # A request gets what is left of the watchdog period. Once (nearly) nothing is left the
                # robot holds anyway, and the request gets a whole period: a policy slower than what was
                # left (but faster than the watchdog) then still answers, and the loop resumes.
                remaining = self.watchdog.remaining_s()
                try:
                    timeout = remaining if remaining >= 0.1 else self.watchdog.timeout_s
                    chunk = self._infer(self._message(obs), timeout)
                    self.queue.add(chunk, t, t)
                    action = self.queue.pop(t)
                except Exception as e:  # the server is down, slow or refused: hold and report
                    failure = f"{type(e).__name__}: {e}"
        if action is None:
            reason = failure or "no action for this step yet"
            if self._holding is None:  # reported once per lapse; every Step carries its own reason
                self._report(t, "hold", f"no fresh action for {self.watchdog.age_ms():.0f} ms ({reason})")
                self._held_since = t
            self._holding = reason
            return Step(self.guard.hold_action(), True, reason, t)
        try:
            safe = self.guard(action)
        except UnsafeActionError as e:
            self.queue.clear()
            self._report(t, "unsafe", str(e))
            self._holding = str(e)
            raise
        self.watchdog.feed()
        if self._holding is not None:
            self._report(t, "resume", f"fresh actions again after {t - self._held_since} held steps")
            self._holding = None
        return Step(safe, False, None, t)

    def _step_async(self, obs: Any, t: int) -> tuple[np.ndarray | None, str | None]:
        assert self._requester is not None
        failure = None

        def absorb(results: list[tuple[Any, int]]) -> None:
            nonlocal failure
            for result, obs_step in results:
                if isinstance(result, Exception):
                    failure = f"{type(result).__name__}: {result}"
                elif self._holding is not None and obs_step >= self._held_since:
                    # Seen while holding: the robot has not moved since, so the chunk starts now (dropping
                    # the steps that elapsed would drop all of a chunk slower than itself, forever).
                    self.queue.add(result, t, t)
                else:
                    self.queue.add(result, obs_step, t)

        absorb(self._requester.take())
        if self.queue.remaining(t) <= self.refill_at and not self._requester.busy:
            self._requester.submit(self._message(obs), t)
        action = self.queue.pop(t)
        if action is None and self._requester.busy:
            absorb(self._requester.take(self.watchdog.remaining_s()))
            action = self.queue.pop(t)
        return action, (failure if action is None else None)

    def close(self) -> None:
        if self._requester is not None:
            self._requester.close()
        close = getattr(self.client, "close", None)
        if close is not None:
            close()


__all__ = [
    "MODES",
    "ActionGuard",
    "ActionQueue",
    "ControlLoop",
    "PolicyClient",
    "RateLimiter",
    "RemotePolicy",
    "ServerError",
    "ServerUnavailable",
    "Step",
    "UnsafeActionError",
    "Watchdog",
    "observation_message",
]

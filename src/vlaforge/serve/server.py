"""`vlaforge serve`: one process, one port, two protocols, many robots.

- **openpi websocket** (what `openpi-client`'s `WebsocketClientPolicy` speaks): after the handshake the
  server sends a msgpack metadata map; then every binary message is a msgpack-numpy observation and every
  reply `{"actions": float32 (H, D), "server_timing": {...}}`. An error is one text frame saying what was
  wrong, then close code 1011. A token, when set, travels as `Authorization: Api-Key <token>` (what
  openpi-client sends for its `api_key`) or `Authorization: Bearer <token>`.
- **OpenVLA HTTP** (what a client of OpenVLA's `vla-scripts/deploy.py` sends): `POST /act` with a
  json-numpy body `{"image": uint8 (H, W, 3), "instruction": str, "unnorm_key": str?}` (the key names a
  training dataset of a checkpoint trained on a mixture, whose statistics un-normalise); the reply is the
  json-numpy action: (D,) for a checkpoint that predicts one step (OpenVLA's own reply), the (H, D) chunk
  otherwise (as OpenVLA-OFT's server). The body may also be `{"encoded": "<json-numpy text>"}` (OpenVLA's
  "double-encoded" form), answered in kind. Errors are JSON `{"error": "..."}` with a 4xx/5xx status.
- `GET /healthz` answers 200 "OK" and closes (no token needed, no body read, nothing revealed);
  `GET /metadata` the metadata as JSON.

Why not websockets' `serve(process_request=...)`: its HTTP parser refuses any request with a body
(a Content-Length other than 0), so `POST /act` cannot pass through it. The server reads the HTTP request
head itself (bounded), answers plain HTTP requests, and hands websocket upgrades to websockets' sans-I/O
`ServerProtocol`, which does the handshake, framing, masking, ping/pong and closing; this module only moves
bytes and enforces the limits and timeouts.

Safety: binds 127.0.0.1 unless told otherwise; refuses requests without the token when one is set
(compared in constant time); decodes off the event loop with the strict codecs of `vlaforge.serve.codec`
(no pickle, only numeric dtypes, sizes checked, caps on bytes, dimensions, values and depth); checks every
observation against the checkpoint (`vlaforge.serve.observation`); bounds the request head, the body, the
number of connections, the queue, and the time a client may take to send a request or to read a reply;
gives a connection that has not shown the token a few seconds and one request, and at most
`max_unauthenticated` such connections at once (the oldest gives its slot to a newcomer); cancels the
request of a client that goes away; replies with a one-line error and keeps tracebacks in the server log.
What it loads is decided by its own command line; no request names a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import json
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from vlaforge.errors import InputError
from vlaforge.serve.batcher import Batcher, InternalError, ServerBusy
from vlaforge.serve.codec import (
    WireLimits,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
)
from vlaforge.serve.observation import ObservationSpec
from vlaforge.serve.wsconn import WebsocketConnection
from vlaforge.weights_hash import weights_sha256

log = logging.getLogger("vlaforge.serve")

PROTOCOL = "vlaforge-serve/1"
TOKEN_ENV = "VLAFORGE_TOKEN"
MAX_HEAD_BYTES = 16 * 1024
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass
class ServeConfig:
    """How to serve a policy (the `vlaforge serve` flags).

    Attributes:
        policy: the checkpoint directory to serve (e.g. `RUN/last`). The server alone decides what it loads.
        host: the address to bind. 127.0.0.1 (this machine only) unless told otherwise; 0.0.0.0 opens the
            port to the network (set a --token then).
        port: the TCP port (0: any free port, printed at start).
        token: the secret clients must send (`Authorization: Api-Key <token>` or `Bearer <token>`); None: the
            VLAFORGE_TOKEN environment variable, if set (which keeps it out of the process list), else none.
        max_batch: most requests from different connections in one forward pass (1: no batching).
        max_wait_ms: how long a request waits for others to share its forward pass.
        max_queue: most requests waiting for the model; beyond it, requests are refused as busy.
        max_connections: most connections at once; beyond it, a new one takes the slot of the connection that
            has waited longest without authenticating, else it is refused.
        max_unauthenticated: most connections at once that have not yet shown the token (or, without a
            token, sent a first request); beyond it, the one that has waited longest is closed.
        auth_timeout_s: a new connection must send a complete request head within this time, and is closed
            unless the head carries the token (health checks are answered, then closed too).
        max_message_mb: largest request (a websocket message or an HTTP body), in MiB; also the largest array.
        max_dim: largest size of any array dimension.
        request_timeout_s: longest time a request may wait for its actions before an error reply.
        io_timeout_s: longest time a client may take to send a request head or body, or to read a reply.
        idle_timeout_s: a connection silent for this long is closed (openpi-client pings every 20 s).
        camera_map: explicit wire key -> camera of the checkpoint (e.g. `observation/image=corner2`),
            replacing the default aliases (`images/<camera>`, `observation/image` for the first camera,
            `observation/wrist_image` for the second, ...: README "Serving").
        resize_images: accept camera images of any size (the policy resizes them); by default an image must
            have the checkpoint's size.
        device: torch device of the policy ("cpu", "cuda").
        threads: torch CPU threads (None: torch's default).
    """

    policy: str
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_queue: int = 256
    max_connections: int = 64
    max_unauthenticated: int = 16
    auth_timeout_s: float = 5.0
    max_message_mb: float = 32.0
    max_dim: int = 8192
    request_timeout_s: float = 30.0
    io_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    camera_map: dict[str, str] = field(default_factory=dict)
    resize_images: bool = False
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self) -> None:
        self.policy = str(self.policy)
        self.camera_map = {str(k): str(v) for k, v in dict(self.camera_map or {}).items()}
        if self.token is None:
            self.token = os.environ.get(TOKEN_ENV) or None
        if self.token is not None and len(self.token) < 8:
            raise InputError("--token must have at least 8 characters")
        for name in ("max_batch", "max_queue", "max_connections", "max_unauthenticated", "max_dim"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be in [0, 65535]; got {self.port}")
        if self.max_wait_ms < 0:
            raise InputError(f"--max-wait-ms must be >= 0; got {self.max_wait_ms}")
        if not 0 < self.max_message_mb <= 1024:
            raise InputError(f"--max-message-mb must be in (0, 1024]; got {self.max_message_mb}")
        for name in ("request_timeout_s", "io_timeout_s", "idle_timeout_s", "auth_timeout_s"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be > 0; got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1; got {self.threads}")

    @property
    def limits(self) -> WireLimits:
        n = int(self.max_message_mb * 2**20)
        return WireLimits(max_message_bytes=n, max_array_bytes=n, max_dim=self.max_dim)


class _HttpError(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Head:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    raw: bytes

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return "close" not in conn if self.version == "HTTP/1.1" else "keep-alive" in conn

    @property
    def is_upgrade(self) -> bool:
        return "websocket" in self.headers.get("upgrade", "").lower()


def _parse_head(raw: bytes) -> _Head:
    try:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        method, path, version = lines[0].split(" ")
    except ValueError:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP request line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _HttpError(HTTPStatus.BAD_REQUEST, f"unsupported protocol {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed HTTP header line")
        name = name.lower()
        if name in headers and name in ("content-length", "authorization", "transfer-encoding"):
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"header {name} appears twice")
        headers[name] = value.strip()
    if len(headers) > 100:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "too many headers")
    return _Head(method, path.split("?", 1)[0], version, headers, raw)


def _http_bytes(
    status: HTTPStatus, body: bytes, content_type: str, keep_alive: bool, extra: dict | None = None
) -> bytes:
    headers = {
        "Content-Type": content_type,
        "Content-Length": str(len(body)),
        "Connection": "keep-alive" if keep_alive else "close",
        "Server": "vlaforge",
        **(extra or {}),
    }
    head = f"HTTP/1.1 {status.value} {status.phrase}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return head.encode("latin-1") + b"\r\n" + body


def _json_error(status: HTTPStatus, message: str, keep_alive: bool) -> bytes:
    extra = {"WWW-Authenticate": 'Bearer realm="vlaforge"'} if status == HTTPStatus.UNAUTHORIZED else None
    return _http_bytes(status, json.dumps({"error": message}).encode(), "application/json", keep_alive, extra)


class PolicyServer:
    """Serves one policy over both protocols (see the module docstring).

    Args:
        policy: a `Policy` (anything with `embodiment`, `chunk_size`, `execute_steps`, `uses_state` and
            `predict_action_batch`).
        cfg: the settings; `cfg.policy` is only recorded (the caller loaded `policy`).
        info: extra metadata entries (e.g. the checkpoint's sha256).
    """

    def __init__(self, policy: Any, cfg: ServeConfig, info: dict[str, Any] | None = None):
        if int(getattr(policy, "history", 1)) > 1:
            raise InputError(
                f"this policy reads the last {policy.history} observations; the server answers one observation "
                "per request and keeps no history per client yet, so it cannot serve it (evaluate it in-process)"
            )
        self.policy, self.cfg = policy, cfg
        self.limits = cfg.limits
        self.spec = ObservationSpec.from_embodiment(
            policy.embodiment,
            needs_state=bool(getattr(policy, "uses_state", policy.embodiment.state_dim)),
            camera_map=cfg.camera_map or None,
            resize_images=cfg.resize_images,
            max_image_side=cfg.max_dim,
        )
        # A checkpoint trained on a mixture holds each dataset's statistics by name (OpenVLA's unnorm_key).
        self.unnorm_keys = list(getattr(policy, "unnorm_keys", None) or [])
        self.batcher = Batcher(
            policy.predict_action_batch,
            cfg.max_batch,
            cfg.max_wait_ms / 1000.0,
            cfg.max_queue,
            clients=lambda: len(self._connections),
        )
        self.metadata = {
            "server": "vlaforge",
            "protocol": PROTOCOL,
            "embodiment": policy.embodiment.to_dict(),
            "chunk_size": int(policy.chunk_size),
            "execute_steps": int(policy.execute_steps),
            "action_dim": int(policy.embodiment.action_dim),
            "control_hz": float(policy.embodiment.control_hz),
            "observation_keys": self.spec.describe(),
            "unnorm_keys": self.unnorm_keys,
            "max_batch": cfg.max_batch,
            "max_message_bytes": self.limits.max_message_bytes,
            **(info or {}),
        }
        self._packed_metadata = encode_msgpack(self.metadata)
        # Decoding and checking a request runs here, off the event loop: a large message then delays only
        # the robot that sent it (the codec's caps bound what any one message can cost).
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlaforge-decode")
        self._token = cfg.token.encode() if cfg.token else None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        # Connections that have not authenticated yet, oldest first (a dict keeps insertion order).
        self._unauthenticated: dict[asyncio.Task, None] = {}
        self.port: int | None = None
        self.stats = {"connections": 0, "requests": 0, "errors": 0, "refused": 0, "evicted": 0}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> int:
        """Binds and starts accepting; returns the port."""
        self.batcher.start()
        self._server = await asyncio.start_server(
            self._on_connection, self.cfg.host, self.cfg.port, limit=MAX_HEAD_BYTES
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stops accepting, closes every connection, stops the batcher."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
        await self.batcher.stop()
        self._decoder.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ connections
    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if (
            len(self._connections) >= self.cfg.max_connections
            or len(self._unauthenticated) >= self.cfg.max_unauthenticated
        ):
            self._evict()
        if len(self._connections) >= self.cfg.max_connections:
            self.stats["refused"] += 1
            await self._write(
                writer,
                _json_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections; retry later", False),
            )
            writer.close()
            return
        self._connections.add(task)
        self._unauthenticated[task] = None
        self.stats["connections"] += 1
        try:
            while True:
                # Until it authenticates a connection has a short deadline (it closes after one request).
                unauthenticated = task in self._unauthenticated
                if unauthenticated:
                    timeout = min(self.cfg.auth_timeout_s, self.cfg.io_timeout_s)
                else:
                    timeout = self.cfg.idle_timeout_s
                try:
                    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
                except asyncio.IncompleteReadError:
                    return  # the client went away
                except asyncio.LimitOverrunError:
                    await self._write(
                        writer,
                        _json_error(
                            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large", False
                        ),
                    )
                    return
                try:
                    head = _parse_head(raw)
                except _HttpError as e:
                    await self._write(writer, _json_error(e.status, str(e), False))
                    return
                if head.is_upgrade:
                    await self._websocket(head, reader, writer)
                    return
                keep = await self._http(head, reader, writer)
                if not keep:
                    return
        except (asyncio.TimeoutError, OSError, asyncio.CancelledError):
            pass  # a client that went away, timed out, or a server stopping
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._connections.discard(task)
            self._unauthenticated.pop(task, None)
            writer.close()

    def _evict(self) -> None:
        """Closes the connection that has waited longest without authenticating, so that a new one (perhaps
        a robot with the token) gets its slot: unauthenticated peers cannot hold every slot."""
        if not self._unauthenticated:
            return
        oldest = next(iter(self._unauthenticated))
        del self._unauthenticated[oldest]
        self._connections.discard(oldest)
        oldest.cancel()
        self.stats["evicted"] += 1

    def _authenticated(self) -> None:
        """The current connection showed the token (or, without one, made a real request)."""
        self._unauthenticated.pop(asyncio.current_task(), None)  # type: ignore[arg-type]

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        """Writes and waits until the client takes the bytes (a client that does not read times out)."""
        writer.write(data)
        await asyncio.wait_for(writer.drain(), self.cfg.io_timeout_s)

    def _authorized(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() not in ("api-key", "bearer"):
            return False
        return hmac.compare_digest(value.strip().encode(), self._token)

    # ------------------------------------------------------------------ HTTP
    async def _http(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answers one plain HTTP request; returns whether the connection stays open.

        Everything that can be refused from the head alone (path, method, token, size) is refused before
        any body is read, and the connection is then closed (its unread body would desynchronise it).
        """
        if head.path == "/healthz" and head.method == "GET":  # no token, no body read, then closed
            await self._write(writer, _http_bytes(HTTPStatus.OK, b"OK\n", "text/plain", False))
            return False
        keep = head.keep_alive
        refusal: tuple[HTTPStatus, str] | None = None
        if "transfer-encoding" in head.headers:
            refusal = HTTPStatus.NOT_IMPLEMENTED, "chunked bodies are not accepted; send Content-Length"
        elif head.path not in ("/act", "/metadata"):
            refusal = (
                HTTPStatus.NOT_FOUND,
                (f"no {head.path[:80]!r} here; use POST /act, GET /metadata, GET /healthz or a websocket"),
            )
        elif not self._authorized(head.headers.get("authorization")):
            self.stats["errors"] += 1
            refusal = (
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong token: send the header 'Authorization: Bearer <token>'",
            )
        elif head.path == "/metadata" and head.method != "GET":
            refusal = HTTPStatus.METHOD_NOT_ALLOWED, "use GET /metadata"
        elif head.path == "/act" and head.method != "POST":
            refusal = HTTPStatus.METHOD_NOT_ALLOWED, "use POST /act with a json-numpy body"
        length = -1
        if refusal is None:
            with contextlib.suppress(ValueError):
                length = int(head.headers.get("content-length", "0"))
            if length < 0:
                refusal = HTTPStatus.BAD_REQUEST, "invalid Content-Length"
            elif length > self.limits.max_message_bytes:
                refusal = (
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    (
                        f"body of {length} bytes; at most {self.limits.max_message_bytes} (the server's --max-message-mb)"
                    ),
                )
        if refusal is not None:
            await self._write(writer, _json_error(*refusal, False))
            return False
        self._authenticated()
        body = await asyncio.wait_for(reader.readexactly(length), self.cfg.io_timeout_s) if length else b""
        if head.path == "/metadata":
            body = encode_json(self.metadata).encode()
            await self._write(writer, _http_bytes(HTTPStatus.OK, body, "application/json", keep))
        else:
            work = asyncio.ensure_future(self._act(body))
            while not work.done():  # a client that goes away cancels its request
                await asyncio.wait({work}, timeout=0.05)
                if not work.done() and (reader.at_eof() or reader.exception() is not None):
                    work.cancel()
                    await asyncio.wait({work})
                    return False
            status, payload = work.result()
            await self._write(writer, _http_bytes(status, payload, "application/json", keep))
        return keep

    async def _act(self, body: bytes) -> tuple[HTTPStatus, bytes]:
        """POST /act: (status, JSON body)."""
        self.stats["requests"] += 1
        try:
            loop = asyncio.get_running_loop()
            obs, key, encoded = await loop.run_in_executor(self._decoder, self._parse_act, body)
            actions, _ = await self.batcher.submit(obs, self.cfg.request_timeout_s, key)
        except Exception as e:
            status, message = self._error(e)
            return status, json.dumps({"error": message}).encode()
        action = actions[0] if actions.shape[0] == 1 else actions  # OpenVLA replies with one (D,) action
        text = encode_json(action)
        return HTTPStatus.OK, (json.dumps(text) if encoded else text).encode()

    def _parse_act(self, body: bytes) -> tuple[Any, str | None, bool]:
        """On a decoder thread: a POST /act body -> (observation, unnorm_key, whether double-encoded)."""
        msg = decode_json(body, self.limits)
        encoded = isinstance(msg, dict) and set(msg) == {"encoded"}
        if encoded:  # OpenVLA's double-encoded form: the payload is a json-numpy string
            if not isinstance(msg["encoded"], str):
                raise InputError("'encoded' must be a json-numpy string")
            msg = decode_json(msg["encoded"], self.limits)
        if not isinstance(msg, dict):
            raise InputError(
                f"the body must be a JSON object {{'image', 'instruction'}}; got {type(msg).__name__}"
            )
        key = self._unnorm_key(msg.get("unnorm_key"))
        return self.spec.parse(msg, extra_keys=("unnorm_key",)), key, encoded

    def _parse_openpi(self, message: bytes) -> tuple[Any, str | None, float]:
        """On a decoder thread: a websocket message -> (observation, unnorm_key, decode ms)."""
        start = time.perf_counter()
        msg = decode_msgpack(message, self.limits)
        decode_ms = (time.perf_counter() - start) * 1000
        key = self._unnorm_key(msg.get("unnorm_key") if isinstance(msg, dict) else None)
        return self.spec.parse(msg, extra_keys=("unnorm_key",)), key, decode_ms

    def _unnorm_key(self, key: Any) -> str | None:
        """A request's `unnorm_key`, checked against the checkpoint's datasets before any compute."""
        if key is None:
            if len(self.unnorm_keys) > 1:
                raise InputError(
                    f"this checkpoint was trained on {len(self.unnorm_keys)} datasets; send unnorm_key, one of "
                    f"{self.unnorm_keys}"
                )
            return None
        if not self.unnorm_keys:
            raise InputError(
                f"unnorm_key {str(key)[:60]!r}: this checkpoint has one set of statistics; leave unnorm_key out"
            )
        if not isinstance(key, str) or key not in self.unnorm_keys:
            raise InputError(
                f"unnorm_key {str(key)[:60]!r} is not one of this checkpoint's datasets {self.unnorm_keys}"
            )
        return key

    def _error(self, e: Exception) -> tuple[HTTPStatus, str]:
        """An exception raised while answering -> (HTTP status, the one-line message for the client)."""
        self.stats["errors"] += 1
        if isinstance(e, InputError):
            log.info("bad request: %s", e)
            return HTTPStatus.BAD_REQUEST, f"bad request: {e}"
        if isinstance(e, ServerBusy):
            return HTTPStatus.SERVICE_UNAVAILABLE, f"server busy: {e}"
        if isinstance(e, asyncio.TimeoutError):
            return HTTPStatus.GATEWAY_TIMEOUT, (
                f"no actions within {self.cfg.request_timeout_s} s (the server is overloaded); retry later"
            )
        if isinstance(e, InternalError):
            return HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {e}"
        log.error("request failed", exc_info=e)
        return HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; the server log has the details"

    # ------------------------------------------------------------------ websocket
    async def _websocket(
        self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = WebsocketConnection(reader, writer, self.limits.max_message_bytes, self.cfg.io_timeout_s)
        try:
            if not await conn.handshake(head.raw, self._authorized_or_count, self._packed_metadata):
                return
            self._authenticated()
            while (got := await conn.next_message(self.cfg.idle_timeout_s)) is not None:
                work = asyncio.ensure_future(self._infer_openpi(*got))
                if not await conn.unless_gone(work):
                    return  # the client went away: its request was cancelled
                reply, error = work.result()
                if error is not None:
                    await conn.fail(error)
                    return
                await conn.send(reply)
        finally:
            conn.close()

    def _authorized_or_count(self, authorization: str | None) -> bool:
        ok = self._authorized(authorization)
        if not ok:
            self.stats["errors"] += 1
        return ok

    async def _infer_openpi(self, message: bytes, is_text: bool) -> tuple[bytes, str | None]:
        """One websocket request -> (packed reply, None) or (b"", error text)."""
        self.stats["requests"] += 1
        start = time.perf_counter()
        try:
            if is_text:
                raise InputError("send observations as binary msgpack messages, not text")
            loop = asyncio.get_running_loop()
            obs, key, decode_ms = await loop.run_in_executor(self._decoder, self._parse_openpi, message)
            actions, timing = await self.batcher.submit(obs, self.cfg.request_timeout_s, key)
        except Exception as e:
            return b"", self._error(e)[1]
        timing = {"decode_ms": decode_ms, **timing, "total_ms": (time.perf_counter() - start) * 1000}
        return encode_msgpack({"actions": np.asarray(actions, np.float32), "server_timing": timing}), None


# ------------------------------------------------------------------ running it
def openvla_sha256(root: Path) -> str:
    """The `model_sha256` announced for an OpenVLA checkpoint directory: the hash of its weights, every shard
    its index names in name order (as `openvla.Shards` opens them), cached beside them."""
    from vlaforge.models import openvla

    index = root / openvla.INDEX_FILE
    if not index.is_file():
        return weights_sha256([root / openvla.SINGLE_FILE])
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise InputError(f"{index}: not a safetensors index (needs a 'weight_map'): {e}") from e
    return weights_sha256([root / name for name in shards])


def load_served_policy(cfg: ServeConfig) -> tuple[Any, dict[str, Any]]:
    """Loads the checkpoint `cfg.policy` names; returns (policy, metadata entries about it)."""
    import torch

    from vlaforge.models import openvla
    from vlaforge.models.policy import Policy
    from vlaforge.policy_files import read_policy_dir

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if openvla.is_openvla_dir(cfg.policy):  # OpenVLA's own checkpoint, served as its deploy script does
        policy = Policy.from_pretrained(cfg.policy, device=cfg.device)
        root = Path(cfg.policy).resolve()
        return policy, {"checkpoint": root.name, "model_sha256": openvla_sha256(root)}
    files = read_policy_dir(cfg.policy)  # a vlaforge policy, or a LeRobot pi0 / SmolVLA directory
    policy = Policy.from_pretrained(files.root, device=cfg.device)
    info = {
        "checkpoint": Path(files.root).resolve().name,
        "model_sha256": weights_sha256([files.weights]),
    }
    return policy, info


class ServerThread:
    """A `PolicyServer` on its own event loop in a background thread (tests, benchmarks, notebooks).

    Use as a context manager, or call `start()` / `stop()`. `url` is `ws://host:port`, `http` the HTTP base.
    """

    def __init__(self, policy: Any, cfg: ServeConfig, info: dict[str, Any] | None = None):
        self.server = PolicyServer(policy, cfg, info)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlaforge-serve", daemon=True)
        self.port: int | None = None

    def start(self) -> ServerThread:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(30)
        return self

    def stop(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _shutdown(self) -> None:
        """Stops the server, then ends every task left on this loop (as `asyncio.run` does at exit), so
        that none outlives the loop; a connection accepted while stopping would otherwise."""
        await self.server.stop()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    @property
    def host(self) -> str:
        return self.server.cfg.host

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def check_startup(cfg: ServeConfig) -> None:
    """What `serve` checks before loading the checkpoint (seconds to minutes): --policy is a checkpoint, not
    a served policy; --device exists here; --port is free.

    Raises:
        InputError: naming the flag and what to do.
    """
    from vlaforge.devices import resolve_device

    if cfg.policy.startswith(("ws://", "wss://")):
        raise InputError(
            f"--policy {cfg.policy} is a served policy; serve needs a checkpoint directory (a vlaforge policy "
            f"or an OpenVLA checkpoint). To evaluate a served policy: vlaforge eval --policy {cfg.policy}"
        )
    resolve_device(cfg.device)
    if cfg.port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio.start_server binds
        try:
            s.bind((cfg.host, cfg.port))
        except OSError as e:
            raise _bind_error(cfg, e) from e


def _bind_error(cfg: ServeConfig, e: OSError) -> InputError:
    if e.errno == errno.EADDRINUSE:
        return InputError(
            f"--port {cfg.port}: {cfg.host}:{cfg.port} is already in use (another vlaforge serve?); "
            "choose another --port, or --port 0 for a free one"
        )
    return InputError(f"--host {cfg.host} --port {cfg.port}: cannot listen there ({e.strerror or e})")


def serve(cfg: ServeConfig) -> None:
    """`vlaforge serve`: loads the checkpoint and serves it until interrupted (Ctrl-C or SIGTERM)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    check_startup(cfg)
    policy, info = load_served_policy(cfg)
    if cfg.host not in LOOPBACK and cfg.token is None:
        log.warning(
            "serving on %s without a token: anyone who can reach this port can drive the robot; "
            "set --token or %s",
            cfg.host,
            TOKEN_ENV,
        )

    async def main() -> None:
        server = PolicyServer(policy, cfg, info)
        try:
            port = await server.start()
        except OSError as e:  # taken between the check and now
            await server.stop()
            raise _bind_error(cfg, e) from e
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not supported here
                loop.add_signal_handler(sig, stop.set)
        print(
            f"serving {cfg.policy} on ws://{cfg.host}:{port} (openpi websocket) and "
            f"http://{cfg.host}:{port}/act (OpenVLA); max batch {cfg.max_batch}, "
            f"token {'required' if cfg.token else 'not set'}",
            flush=True,
        )
        try:
            await stop.wait()
        finally:
            await server.stop()
            print(f"stopped; {server.stats}", flush=True)

    asyncio.run(main())


__all__ = ["PolicyServer", "ServeConfig", "ServerThread", "load_served_policy", "serve"]

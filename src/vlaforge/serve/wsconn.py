"""One websocket connection of `vlaforge serve`: websockets' sans-I/O `ServerProtocol` over asyncio streams.

The server (`vlaforge.serve.server`) reads the HTTP request head itself and hands an upgrade here. This class
moves bytes between the socket and the protocol object, which does the handshake, framing, masking,
ping/pong and closing (websockets' "sans-I/O" layer: websockets.readthedocs.io, "Integrate the Sans-I/O
layer"). It reads one chunk at a time, and keeps reading while a request is being computed, so that a
client that goes away cancels its request at once instead of leaving it queued until it times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

log = logging.getLogger("vlaforge.serve")


def close_reason(message: str) -> str:
    """A close-frame reason: at most 123 bytes of UTF-8."""
    return message.encode("utf-8")[:120].decode("utf-8", "ignore")


class WebsocketConnection:
    """The websocket side of one connection.

    Args:
        reader, writer: the connection's streams (the request head already read from `reader`).
        max_size: largest message accepted, in bytes (a larger one is closed with code 1009).
        io_timeout_s: longest wait for the client to take what is sent to it.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_size: int, io_timeout_s: float
    ):
        from websockets.server import ServerProtocol

        self.proto = ServerProtocol(max_size=max_size, logger=log)
        self.reader, self.writer, self.io_timeout_s = reader, writer, io_timeout_s
        self.max_size = max_size
        self.pending: list[Any] = []  # frames received, not yet handled
        self._reading: asyncio.Task | None = None  # one read at a time, kept across waits

    async def flush(self) -> None:
        """Sends what the protocol object has to send."""
        for data in self.proto.data_to_send():
            if data:
                self.writer.write(data)
            elif self.writer.can_write_eof():
                with contextlib.suppress(OSError):  # the client is gone already
                    self.writer.write_eof()
        await asyncio.wait_for(self.writer.drain(), self.io_timeout_s)

    async def handshake(
        self, raw_head: bytes, authorized: Callable[[str | None], bool], first: bytes
    ) -> bool:
        """Answers the upgrade request `raw_head`; when the token is right, sends `first` (the metadata).

        Returns whether the connection is open (False: refused, or a malformed handshake answered).
        """
        from websockets.http11 import Request
        from websockets.protocol import State

        self.proto.receive_data(raw_head)
        events = self.proto.events_received()
        if not events or not isinstance(events[0], Request):
            await self.flush()  # websockets answered the malformed handshake itself
            return False
        request = events[0]
        if not authorized(request.headers.get("Authorization")):
            response = self.proto.reject(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong token: send the header 'Authorization: Api-Key <token>'\n",
            )
        else:
            response = self.proto.accept(request)
        self.proto.send_response(response)
        await self.flush()
        if self.proto.state is not State.OPEN:
            return False
        await self.send(first)
        return True

    async def _receive(self, timeout: float | None) -> bool:
        """Reads what the client sent into `pending` (waiting up to `timeout`; None: the read is done
        already). False once the client is gone or closing."""
        from websockets.protocol import State

        if self._reading is None:
            self._reading = asyncio.ensure_future(self.reader.read(65536))
        try:
            data = await asyncio.wait_for(self._reading, timeout) if timeout else self._reading.result()
        except OSError:
            data = b""
        finally:
            if self._reading.done():
                self._reading = None
        if data:
            self.proto.receive_data(data)
        else:
            self.proto.receive_eof()
        self.pending.extend(self.proto.events_received())
        await self.flush()
        return bool(data) and self.proto.state is State.OPEN

    async def next_message(self, idle_timeout_s: float) -> tuple[bytes, bool] | None:
        """The next whole message as (data, is_text), fragments joined and pings answered; None when the
        client closed, went away, or was silent for `idle_timeout_s` (then closed with 1001)."""
        from websockets.frames import CloseCode, Opcode
        from websockets.protocol import State

        parts: list[bytes] = []
        opcode = None
        while True:
            if not self.pending:
                try:
                    alive = await self._receive(idle_timeout_s)
                except asyncio.TimeoutError:
                    self.proto.send_close(CloseCode.GOING_AWAY, "idle timeout")
                    await self.flush()
                    return None
                if self.proto.state is State.CLOSED or (not alive and not self.pending):
                    return None
                continue
            frame = self.pending.pop(0)
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                opcode, parts = frame.opcode, [frame.data]
            elif frame.opcode is Opcode.CONT:
                parts.append(frame.data)
            elif frame.opcode is Opcode.CLOSE:
                await self.flush()
                return None
            else:
                continue  # ping / pong
            if frame.fin and opcode is not None:
                return b"".join(parts), opcode is Opcode.TEXT

    async def unless_gone(self, work: asyncio.Future) -> bool:
        """Waits for `work` (a request's reply) while reading the connection: pings are answered, frames
        kept for later. A client that goes away (or starts closing) meanwhile cancels `work`: False."""
        while not work.done():
            if sum(len(f.data) for f in self.pending) > self.max_size:
                await asyncio.wait({work})  # a client that sends ahead is read no further (backpressure)
                break
            if self._reading is None:
                self._reading = asyncio.ensure_future(self.reader.read(65536))
            await asyncio.wait({work, self._reading}, return_when=asyncio.FIRST_COMPLETED)
            if self._reading is not None and self._reading.done() and not await self._receive(None):
                work.cancel()
                await asyncio.wait({work})
                return False
        return True

    async def send(self, data: bytes) -> None:
        self.proto.send_binary(data)
        await self.flush()

    async def fail(self, error: str) -> None:
        """Sends `error` as a text frame, then closes with code 1011 (what openpi's server does)."""
        from websockets.frames import CloseCode

        self.proto.send_text(error.encode("utf-8"))
        self.proto.send_close(CloseCode.INTERNAL_ERROR, close_reason(error))
        await self.flush()
        # Give the client a moment to answer the close, then drop the connection.
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await self._receive(1.0)

    def close(self) -> None:
        """Stops reading (the server closes the socket)."""
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None


__all__ = ["WebsocketConnection", "close_reason"]

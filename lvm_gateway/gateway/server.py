"""The client side of the HTTP server: the timeouts nginx has and uvicorn's protocol lacks.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that never
sends a byte or trickles its request head: 200 such connections stayed open for good and 300 of
them locked a gateway limited to 256 file descriptors out. This protocol arms a timer when a
connection opens and whenever a request begins; if the request's head is not complete in time,
the connection is closed (408 when a request had begun). Body reads are timed by the app
(gateway/bodies.py), the keep-alive idle time and the connection cap are uvicorn's own settings
(`--keep-alive-timeout`, `--max-connections`, answered 503 beyond).

It also hands request bodies to the app without uvicorn's two copies (see `_Cycle`).
"""

from __future__ import annotations

import asyncio
import os

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# Set by `lvm-gateway serve --client-header-timeout` in the environment every worker inherits.
HEADER_TIMEOUT_ENV = "LVMGW_CLIENT_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT_S = 10.0
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))

    _head_timer: asyncio.TimerHandle | None = None
    _head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._head_timer is None:  # a keep-alive connection's next request
            self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        self._head_begun = False
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and type(cycle) is RequestResponseCycle:  # a new request's
            cycle.__class__ = _Cycle
            cycle.body = _Pieces()  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_begun:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


class _Pieces:
    """A request body's pieces not yet handed to the app, as the parser gave them. uvicorn
    appends each piece to a bytearray and copies it out again for every ASGI message: two
    copies of a 4.75 MB context per request. Here a message of one piece is that piece."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, piece: bytes) -> _Pieces:  # uvicorn's on_body: `cycle.body += body`
        self.parts.append(piece)
        self.size += len(piece)
        return self

    def __len__(self) -> int:  # uvicorn's flow control reads the pending size
        return self.size

    def take(self) -> bytes:
        parts, self.parts, self.size = self.parts, [], 0
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle with `receive` taking the pending `_Pieces`; the rest of
    `receive` is uvicorn's (100-continue, flow control, disconnects)."""

    async def receive(self) -> ASGIReceiveEvent:
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body: _Pieces = self.body  # type: ignore[assignment]
        return {"type": "http.request", "body": body.take(), "more_body": self.more_body}

"""The client side of the HTTP server: the timeouts nginx has and uvicorn's protocol lacks.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that never
sends a byte or trickles its request head: 200 such connections stayed open for good and 300 of
them locked a gateway limited to 256 file descriptors out. This protocol gives the request head
a deadline when a connection opens and whenever a request begins; if the head is not complete in
time, the connection is closed (408 when a request had begun). Body reads are timed by the app
(gateway/bodies.py); the keep-alive idle time and the connection cap are uvicorn's own settings
(`--keep-alive-timeout`, timed here on the same per-connection timer as the head; and
`--max-connections`, answered 503 beyond).

It also sends each response's head and body in one write (OneWriteSend) and hands request
bodies to the app without uvicorn's two copies (`_Cycle`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

# Set by `lvm-gateway serve --client-header-timeout` in the environment every worker inherits.
HEADER_TIMEOUT_ENV = "LVMGW_CLIENT_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT_S = 10.0
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))

    # One timer per connection for both waits: the request head's deadline and, between
    # requests, the keep-alive idle deadline (uvicorn's wait, on this timer instead of a uvloop
    # timer of its own). Deadlines move with each request; the timer is not re-armed per
    # request: when it fires it acts on what is due and arms itself again for what is left (a
    # call_later and a cancel cost ~2.9 us, and each request had two).
    _timer: asyncio.TimerHandle | None = None
    _timer_at = 0.0  # the loop time it fires at
    _head_deadline: float | None = None  # None while no request head is awaited
    _idle_deadline: float | None = None  # None while not idle between requests
    _head_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self._wake_by(self.header_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_begun = True
        if self._head_deadline is None:  # a keep-alive connection's next request
            self._head_deadline = self._wake_by(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        self._head_begun = False
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and type(cycle) is RequestResponseCycle:  # a new request's
            cycle.__class__ = _Cycle
            cycle.body = _Pieces()  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # An instance attribute: the cycle's run_asgi passes `self.send` to the app.
        cycle.send = OneWriteSend(cycle)  # type: ignore[method-assign]
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        # uvicorn 0.54's own (constraints.txt pins it), but for where the keep-alive wait is timed.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_deadline = self._wake_by(self.timeout_keep_alive)

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this whenever bytes arrive: the connection is not idle.
        self._idle_deadline = None
        super()._unset_keepalive_if_required()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline = self._idle_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _wake_by(self, delay: float) -> float:
        """A deadline `delay` from now, with the timer firing no later than it."""
        deadline = self.loop.time() + delay
        if self._timer is not None and self._timer_at <= deadline:
            return deadline
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._timer_fired)
        self._timer_at = deadline
        return deadline

    def _timer_fired(self) -> None:
        self._timer = None
        head, idle = self._head_deadline, self._idle_deadline
        now = self.loop.time()
        if head is not None and head <= now:
            self._head_deadline = None
            if not self.transport.is_closing():
                if self._head_begun:
                    self.transport.write(_REQUEST_TIMEOUT)
                self.transport.close()
        elif idle is not None and idle <= now:
            self._idle_deadline = None
            self.timeout_keep_alive_handler()
        elif head is not None or idle is not None:
            self._wake_by(min(d for d in (head, idle) if d is not None) - now)


class OneWriteSend:
    """A cycle's ASGI send that writes a response's head with its first body message: one
    write() syscall instead of uvicorn's two (py-spy put ~10% of a small request's CPU in write
    syscalls, one of them the head alone).

    uvicorn's own send still does all the work (validation, framing, keep-alive, completion);
    only its transport writes pass through here: the head's is held, the next one carries it.
    The gateway sends a response's body right after its head, so holding it delays nothing.
    """

    __slots__ = ("_cycle", "_head", "_holding", "_send", "_transport")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        self._cycle = cycle
        self._send = cycle.send
        self._transport = cycle.transport
        self._head = b""
        self._holding = False  # this send is the one that writes the head

    async def __call__(self, message: Any) -> None:
        cycle = self._cycle
        if cycle.flow.write_paused:
            # uvicorn's send first waits for the client to read: no stand-in across that wait.
            self._flush()
            await self._send(message)
            return
        self._holding = not cycle.response_started
        cycle.transport = self  # type: ignore[assignment]
        try:
            await self._send(message)
        finally:
            cycle.transport = self._transport
            if not self._holding:
                self._flush()  # a body that wrote nothing (HEAD) still sends the head
            if cycle.response_complete:
                # No reference cycle (cycle -> this -> cycle) left for the garbage collector:
                # one per request made it run ~40 times as often.
                cycle.__dict__.pop("send", None)

    # The part of asyncio.Transport that uvicorn's send uses.
    def write(self, data: bytes) -> None:
        if self._holding:
            self._head = data
        elif self._head:
            self._transport.write(self._head + data)
            self._head = b""
        else:
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def _flush(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""


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

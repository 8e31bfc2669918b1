"""A lean HTTP/1.1 keep-alive client for the data plane: asyncio protocols and httptools.

Why not aiohttp's client: measured by `bench/client_compare.py` (figures in its docstring), it
costs several times more Python per call than this client, which would cap the gateway. A model
server speaks plain HTTP/1.1, so the client needs: a pool of persistent connections per
endpoint, one request at a time per connection, the C parser uvicorn also uses, and the framing
rules that keep one exchange from leaking into the next.

A proxy must never hand one request's answer to another, so a connection goes back to the pool
only when its last exchange ended exactly at a message boundary:
- interim 1xx responses (100, 103) are skipped; the final response is the answer;
- a close-delimited body (HTTP/1.0, or no Content-Length and no chunked coding) is read to EOF
  and the connection is spent;
- a response to HEAD carries no body whatever its Content-Length says; the parser cannot be told
  that, so the answer is taken at the end of its head and the connection is not reused;
- conflicting framing (Content-Length with Transfer-Encoding, two Content-Lengths), a malformed
  response, a body over the size limit, a reset, a timeout or bytes nobody asked for discard the
  connection;
- a reused idle connection that closes before any byte of the answer arrives (the server timed
  it out while idle) is retried once, on a FRESH connection: the other idle ones may be just as
  stale.

Bodies are passed through as received (Content-Encoding untouched); trailers of a chunked body
are read and dropped (the gateway answers with a Content-Length body).

A request body is written with its head in one write when small; a large one follows the head
in a second write of the same object (no join: a 4.4 MB join cost ~2 ms). A streamed body
(gateway/bodies.py StreamedBody) is written chunk by chunk as the client's bytes arrive, pausing
while the socket's buffer is full (pause_writing/resume_writing); `progress` tells the caller
when the wait is the client's (its next chunk) and when the upstream's, so a variant's timeout
counts only the time the upstream keeps the gateway waiting, not a slow upload. An answer that
arrives before the body is all sent ends the sending, and the connection is not reused (the
upstream has not read the rest).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httptools

from lvm_gateway.errors import BadResponseError, ConnectionLostError
from lvm_gateway.gateway.bodies import StreamedBody
from lvm_gateway.gateway.transport import Headers, Response

# Methods whose requests carry a Content-Length even when empty (RFC 9110 8.6).
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
# Larger bodies go with the head in one writev instead of a joined copy.
_JOIN_MAX: Final = 64 * 1024
_HIGH_WATER: Final = 1024 * 1024  # a streamed body waits while more than this is unsent


class _Conn(asyncio.Protocol):
    __slots__ = (
        "_body",
        "_drain",
        "_head",
        "_headers",
        "_in_head",
        "_limit",
        "_received",
        "_size",
        "_waiter",
        "closed",
        "keep_alive",
        "parser",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: Headers = []
        self._body: list[bytes] = []
        self._size = 0
        self._limit = 0
        self._head = False  # the request is a HEAD: the answer ends with its head
        self._in_head = False  # between message begin and headers complete (not trailers)
        self._received = False
        self._drain: asyncio.Future[None] | None = None  # set while the transport is paused
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # one write per request: never wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection is out of step
            self.close()
            return
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponseError(f"malformed response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides whether a body just ended

    def pause_writing(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if exc is None and not self._in_head and self._received and not self._framed():
            # A close-delimited body ends at a clean EOF (a reset is not an end).
            status = self.parser.get_status_code()
            if status >= 200:
                self._deliver(status)
                return
        why = exc or "by peer"
        self._fail(ConnectionLostError(f"connection closed: {why}", self._received))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._waiter is None:  # a second response to one request
            self.close()
        self._headers = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer: read, not forwarded
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head and self.parser.get_status_code() >= 200:
            self.keep_alive = False
            self._deliver(self.parser.get_status_code())
            self.close()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            self._fail(BadResponseError(f"response body larger than {self._limit} bytes"))
            self.close()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            if status == 101:  # never asked for an upgrade
                self._fail(BadResponseError("unexpected 101 Switching Protocols"))
                self.close()
            return  # an interim response: the final one follows on this connection
        self.keep_alive = self.parser.should_keep_alive()
        self._deliver(status)

    def _framed(self) -> bool:
        """Whether the response head set its length (Content-Length or Transfer-Encoding)."""
        return any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in self._headers)

    def _deliver(self, status: int) -> None:
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_result((status, self._headers, body, time.perf_counter()))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        self._body = []
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(
        self,
        data: bytes,
        head: bool,
        limit: int,
        loop: asyncio.AbstractEventLoop,
        body: tuple[bytes, ...] = (),
    ) -> asyncio.Future[Response]:
        self._waiter = waiter = loop.create_future()
        self._head = head
        self._limit = limit
        self._size = 0
        self._received = False
        assert self.transport is not None
        if body:
            self.transport.writelines((data, *body))
        else:
            self.transport.write(data)
        return waiter

    async def stream(
        self,
        body: StreamedBody,
        waiter: asyncio.Future[Response],
        progress: Callable[[bool], None] | None,
    ) -> Response:
        """Write `body` as it arrives after the head `send` wrote; the answer. `progress(True)`
        when the upstream is what we wait for (a write, a full socket buffer, the answer),
        `progress(False)` while we wait for the client's next chunk."""
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        chunks = aiter(body)
        try:
            while True:
                if progress is not None:
                    progress(False)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                if progress is not None:
                    progress(True)
                if waiter.done() or self.closed:
                    self.keep_alive = False  # answered early: the rest was never read
                    break
                self.transport.write(chunk)
                if self._drain is not None:
                    await self._drain
        except BaseException:
            self.close()  # the client's body failed (or we were cancelled) mid-request
            raise
        if progress is not None:
            progress(True)
        return await waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class EndpointPool:
    """Persistent connections to one host:port, at most `limit` of them open at once.

    `opened` counts connections ever made: tests and benchmarks read it to see reuse.
    """

    def __init__(self, base_url: str, limit: int, tls: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{base_url}: the data-plane client speaks http and https only")
        https = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if https else 80)
        self.prefix = parts.path.rstrip("/")
        self.host_header = parts.netloc.encode()
        self.limit = limit
        self.tls = (tls or ssl.create_default_context()) if https else None
        self.opened = 0
        self._idle: deque[_Conn] = deque()
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def _acquire(self, loop: asyncio.AbstractEventLoop, fresh: bool) -> tuple[_Conn, bool]:
        """A connection, and whether it was reused (the peer may have closed a reused one)."""
        while True:
            while self._idle and not fresh:
                conn = self._idle.pop()  # the most recently used: least likely to be stale
                if not conn.closed:
                    return conn, True
                self._open -= 1
            if self._open < self.limit:
                break
            if self._idle:  # a fresh one is needed at the limit: retire the oldest idle one
                self._idle.popleft().close()
                self._open -= 1
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: pass the free slot on
                raise
        self._open += 1
        try:
            if self.tls is None:
                _, conn = await loop.create_connection(_Conn, self.host, self.port)
            else:
                _, conn = await loop.create_connection(
                    _Conn, self.host, self.port, ssl=self.tls, server_hostname=self.host
                )
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self.opened += 1
        return conn, False

    def _release(self, conn: _Conn) -> None:
        if conn.closed or not conn.keep_alive or conn._waiter is not None:
            conn.close()
            self._open -= 1
        else:
            self._idle.append(conn)
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | StreamedBody,
        headers: dict[str, str],
        limit: int,
        progress: Callable[[bool], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Response:
        """Send one request; (status, headers, body) of its final response, body at most `limit`
        bytes. Raises the OSError family: ConnectionLostError, BadResponseError, connect errors.
        `loop`: the running loop, when the caller has it at hand (each look-up is a getpid()
        syscall on Python 3.11).

        The caller bounds the time with a deadline (gateway/deadline.py); a cancelled request closes
        its connection, since the response may still arrive on it.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        head = [method.encode(), b" ", (self.prefix + target).encode(), b" HTTP/1.1\r\nHost: ",
                self.host_header, b"\r\n"]  # fmt: skip
        if body or method in _BODY_METHODS:
            head += (b"Content-Length: ", str(len(body)).encode(), b"\r\n")
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n".encode("latin-1"))
        head.append(b"\r\n")
        rest: tuple[bytes, ...] = ()  # written after the head, in the same writev
        if isinstance(body, bytes) and len(body) <= _JOIN_MAX:
            head.append(body)
        elif isinstance(body, bytes):
            rest = (body,)
        elif body.done:  # received whole (done is set only at its full length): nothing to wait for
            rest = tuple(body.chunks)
        data = b"".join(head)
        is_head = method == "HEAD"
        conn, reused = await self._acquire(loop, fresh=False)
        try:
            return await self._exchange(conn, loop, data, is_head, limit, rest, body, progress)
        except ConnectionLostError as exc:
            if not reused or exc.received:
                raise
        # The server closed this idle connection as the request went out: nothing of an answer
        # came back, so send it again, once, on a new connection.
        conn, _ = await self._acquire(loop, fresh=True)
        return await self._exchange(conn, loop, data, is_head, limit, rest, body, progress)

    async def _exchange(
        self,
        conn: _Conn,
        loop: asyncio.AbstractEventLoop,
        data: bytes,
        is_head: bool,
        limit: int,
        rest: tuple[bytes, ...],
        body: bytes | StreamedBody,
        progress: Callable[[bool], None] | None,
    ) -> Response:
        try:
            waiter = conn.send(data, is_head, limit, loop, rest)
            if isinstance(body, StreamedBody) and not rest:
                return await conn.stream(body, waiter, progress)
            return await waiter
        finally:
            self._release(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

"""The reference model servers' HTTP/1.1: an asyncio protocol on httptools, nothing in between.

`lvm-serve` must answer in the time its profile names (phase1 0.5 ms, phase2 2.5 ms), so that a
rollout with the LVM plan's 5 ms p95 judges the model and not the web framework. On aiohttp an
answer took ~1 ms more than its work on this 2-core VM (request and stream objects, a task per
request, reading a body through a StreamReader); here a request costs one parser callback per
piece and one write. A model's latency is a deadline on the reply (`Reply.not_before`), met by
one loop timer, so a simulated GPU wait burns no CPU.

Requests on one connection are answered in order (pipelining); a connection with many requests
queued stops being read until they are answered.
"""

from __future__ import annotations

import asyncio
import http
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote

import httptools

from lvm_gateway.contract import oip

JSON_HEADERS = (("content-type", "application/json"),)
_QUEUE_LIMIT = 32  # requests queued on one connection before it stops being read
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query
    headers: dict[str, str]  # names lower-case
    body: bytes
    received_at: float  # time.perf_counter() when its last byte arrived


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS
    not_before: float = 0.0  # time.perf_counter() before which it is not sent


Handler = Callable[[Request], Reply | Awaitable[Reply]]


def error_reply(status: int, message: str) -> Reply:
    """A JSON `{"error": ...}` answer (the LVM protocol's and the v2 protocol's error body)."""
    return Reply(status, oip.error_body(message))


def encode(reply: Reply, keep_alive: bool) -> bytes:
    phrase = http.HTTPStatus(reply.status).phrase
    head = [f"HTTP/1.1 {reply.status} {phrase}\r\n"]
    head.extend(f"{name}: {value}\r\n" for name, value in reply.headers)
    if not keep_alive:
        head.append("connection: close\r\n")
    head.append(f"content-length: {len(reply.body)}\r\n\r\n")
    return "".join(head).encode("latin-1") + reply.body


class Http1Server(asyncio.Protocol):
    """One client connection. `handler` answers each request, at once or as a coroutine.

    `read_bodies=False` frames bodies without keeping them (the benchmark stub)."""

    def __init__(self, handler: Handler, max_body: int, read_bodies: bool = True) -> None:
        self.handler = handler
        self.max_body = max_body
        self.read_bodies = read_bodies
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._pieces: list[bytes] = []
        self._size = 0
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._task: asyncio.Future[Reply] | None = None
        self._paused = False
        self._last: Reply | None = None  # the answer to a request that broke the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()  # the client is gone: its model call need not finish

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:  # also what a callback raised, wrapped
            if isinstance(exc.__context__, _BodyTooLarge):
                self._fail(413, f"request body over {self.max_body} bytes")
            else:
                self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._pieces = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            raise _BodyTooLarge
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            raise _BodyTooLarge
        if self.read_bodies:
            self._pieces.append(body)

    def on_message_complete(self) -> None:
        pieces = self._pieces
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        request = Request(
            self.parser.get_method().decode("ascii"),
            unquote(httptools.parse_url(self._url).path.decode("latin-1")),
            self._headers,
            body,
            time.perf_counter(),
        )
        self._queue.append((request, self.parser.should_keep_alive()))
        if len(self._queue) >= _QUEUE_LIMIT and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._next()

    # -- answering, in order ---------------------------------------------------------------------
    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        request, keep_alive = self._queue[0]
        try:
            result = self.handler(request)
        except Exception as exc:  # a handler's bug answers this request, not the connection
            result = error_reply(500, f"internal error: {exc!r}")
        if isinstance(result, Reply):
            self._schedule(result, keep_alive)
            return
        self._task = task = asyncio.ensure_future(result)
        task.add_done_callback(lambda t: self._finished(t, keep_alive))

    def _finished(self, task: asyncio.Future[Reply], keep_alive: bool) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        reply = task.result() if exc is None else error_reply(500, f"internal error: {exc!r}")
        self._schedule(reply, keep_alive)

    def _schedule(self, reply: Reply, keep_alive: bool) -> None:
        wait = reply.not_before - time.perf_counter()
        if wait > 0:
            asyncio.get_running_loop().call_later(wait, self._send, reply, keep_alive)
        else:
            self._send(reply, keep_alive)

    def _send(self, reply: Reply, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(encode(reply, keep_alive))
        if not keep_alive:
            self.transport.close()
            return
        self._queue.popleft()
        self._busy = False
        if self._last is not None and not self._queue:
            self._fail_now(self._last)
            return
        # Never resumed while a broken request's answer waits: its parser must not be fed again.
        if self._paused and self._last is None and len(self._queue) < _QUEUE_LIMIT // 2:
            self._paused = False
            self.transport.resume_reading()
        self._next()

    def _fail(self, status: int, message: str) -> None:
        """Answer a request that cannot be parsed or read after the ones before it, then close:
        the framing is lost, so nothing after it is read."""
        if self.transport is None:
            return
        self._last = error_reply(status, message)
        if self._queue:  # the requests before it are answered first
            self.transport.pause_reading()
        else:
            self._fail_now(self._last)

    def _fail_now(self, reply: Reply) -> None:
        assert self.transport is not None
        self.transport.write(encode(reply, keep_alive=False))
        self.transport.close()


class _BodyTooLarge(Exception):
    pass

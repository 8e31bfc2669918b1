"""The client side of the HTTP server: an HTTP/1.1 protocol on httptools that runs under
uvicorn's process management (workers, lifespan, signals, graceful shutdown) in place of
uvicorn's own HttpToolsProtocol, and presents the app the same ASGI interface.

Why not uvicorn's: its per-request work (a RequestResponseCycle of ~20 attributes, an
asyncio.Event, two regex searches per response header, a head and a body written apart, the
body copied into and out of a bytearray) was ~25% of a small request's CPU in the gateway
(py-spy, one worker at 32 connections). Here a request is one slotted object, its body pieces
are handed to the app as the parser gave them, a response's head is checked by one regex and
leaves in one write with the body.

What uvicorn's protocol does and this one keeps: keep-alive (HTTP/1.1; HTTP/1.0 closes),
pipelining (later requests wait, reading paused, until the current response is complete),
Expect: 100-continue (answered on the app's first receive()), read and write flow control,
malformed requests answered 400 and closed, `--max-connections` answered 503, the keep-alive
idle timeout, graceful shutdown (idle connections close, busy ones after their response), the
`uvicorn.access` log when enabled, and uvicorn's date and server headers.

What it adds, as nginx has: a deadline for the request head when a connection opens and
whenever a request begins. uvicorn closes a keep-alive connection that stays idle after a
response, but not one that never sends a byte or trickles its request head: 200 such
connections stayed open for good and 300 of them locked a gateway limited to 256 file
descriptors out. If the head is not complete in time the connection is closed (408 when a
request had begun). Body reads are timed by the app (gateway/bodies.py).
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import re
import urllib.parse
from collections import deque
from typing import Any, Final

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.server import ServerState

# Set by `lvm-gateway serve --client-header-timeout` in the environment every worker inherits.
HEADER_TIMEOUT_ENV = "LVMGW_CLIENT_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT_S: Final = 10.0
_REQUEST_TIMEOUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST: Final = "Invalid HTTP request received."
# Body bytes a connection reads ahead of the app before it stops reading. uvicorn's 64 KiB
# paused and resumed reading around every 256 KiB socket read of a large body (two io_uring
# submissions and a loop iteration each, measured with strace); the app takes each piece as it
# arrives and charges the body to its budget, so this only bounds a body the app does not read.
READ_AHEAD_BYTES: Final = 1024 * 1024


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


_STATUS_LINES: Final = {status: _status_line(status) for status in range(100, 600)}
# A response head's header lines, checked at once: token names, values without control
# characters (a CR or LF from the app would split the response).
_HEADER_LINES: Final = re.compile(
    rb"(?:[!#$%&'*+\-.^_`|~0-9a-z]+: [^\x00-\x08\x0a-\x1f\x7f]*\r\n)*"
)
_NO_BODY_STATUSES: Final = (204, 304)

log: Final = logging.getLogger("uvicorn.error")


class GatewayHttpProtocol(asyncio.Protocol):
    header_timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_TIMEOUT_S))

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if not config.loaded:
            config.load()
        self.app = config.loaded_app
        self.loop = _loop or asyncio.get_event_loop()
        self.root_path = config.root_path
        self.keep_alive_s = float(config.timeout_keep_alive)  # uvicorn passes int or float
        self.max_concurrency = config.limit_concurrency
        self.server_state = server_state
        self.app_state = app_state
        self.access_logger = logging.getLogger("uvicorn.access")
        self.access_log = self.access_logger.hasHandlers()
        self.parser = httptools.HttpRequestParser(self)
        # A response to the first of pipelined requests may close the connection (Connection:
        # close) while later ones are still in the buffer: not a parse error.
        self.parser.set_dangerous_leniencies(lenient_data_after_close=True)

        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.scope_base: dict[str, Any] = {}
        self.parsing: _Exchange | None = None  # the request the parser is in
        self.active: _Exchange | None = None  # the request whose app runs, until its response
        self.pipeline: deque[tuple[_Exchange, Any]] = deque()
        self.draining = False  # shutting down: no further request on this connection
        self.read_paused = False
        self.writable: asyncio.Future[None] | None = None  # set while the transport is full

        # The request head under way.
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expect_continue = False

        # One timer per connection for both waits: the request head's deadline and, between
        # requests, the keep-alive idle deadline. Deadlines move with each request; the timer
        # is not re-armed per request: when it fires it acts on what is due and arms itself
        # again for what is left (a call_later and a cancel cost ~2.9 us, and each request
        # had two).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # the loop time it fires at
        self._head_deadline: float | None = None  # None while no request head is awaited
        self._idle_deadline: float | None = None  # None while not idle between requests
        self._head_begun = False

        # uvicorn's date and server headers as bytes, made again when uvicorn replaces them.
        self._defaults: list[tuple[bytes, bytes]] | None = None
        self._default_lines = b""

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        self.transport = transport
        server = _address(transport.get_extra_info("sockname"))
        client = _address(transport.get_extra_info("peername"))
        self.scope_base = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": server,
            "client": client,
            "scheme": "https" if transport.get_extra_info("sslcontext") else "http",
            "root_path": self.root_path,
        }
        self._head_deadline = self._wake_by(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._head_deadline = self._idle_deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for exchange in (self.active, *(e for e, _ in self.pipeline)):
            if exchange is not None and not exchange.complete:
                exchange.disconnected = True
                exchange.wake()
        self.pipeline.clear()
        self.parsing = self.active = None  # no protocol <-> request cycle left for the GC
        self.resume_writing()
        self.parser = None  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._idle_deadline = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch here (the gateway serves no WebSocket): what the head asked
            # was served as a plain request, what follows it is not read.
            log.warning("Unsupported upgrade request.")
        except httptools.HttpParserError:
            log.warning(_BAD_REQUEST)
            if not self.transport.is_closing():
                self.transport.write(
                    _STATUS_LINES[400] + b"content-type: text/plain; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                    % (len(_BAD_REQUEST), _BAD_REQUEST.encode())
                )
                self.transport.close()

    def eof_received(self) -> None:
        pass  # the transport closes

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.writable is not None:
            if not self.writable.done():
                self.writable.set_result(None)
            self.writable = None

    # -- uvicorn's server ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Graceful shutdown: an idle connection closes now, a busy one after its response."""
        self.draining = True
        if self.active is None:
            self.transport.close()

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.expect_continue = False
        self._head_begun = True
        if self._head_deadline is None:  # a keep-alive connection's next request
            self._head_deadline = self._wake_by(self.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        self._head_begun = False
        parser = self.parser
        version = parser.get_http_version()
        url = httptools.parse_url(self.url)
        raw_path: bytes = url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope = self.scope_base.copy()
        scope["method"] = parser.get_method().decode("ascii")
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path
        scope["query_string"] = url.query or b""
        scope["headers"] = self.headers
        scope["state"] = self.app_state.copy()
        if version != "1.1":
            scope["http_version"] = version
        keep_alive = version != "1.0" and parser.should_keep_alive()
        exchange = _Exchange(self, scope, keep_alive, self.expect_continue)
        self.parsing = exchange
        state, limit = self.server_state, self.max_concurrency
        app = self.app
        if limit is not None and (len(state.connections) >= limit or len(state.tasks) >= limit):
            log.warning("Exceeded concurrency limit.")
            app = service_unavailable
        if self.active is None:
            self._start(exchange, app)
        else:  # pipelined: read no further until the requests before it are answered
            self._pause_reading()
            self.pipeline.append((exchange, app))

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.complete:
            return  # answered already (e.g. 413): the rest of its body is read and dropped
        exchange.parts.append(body)
        exchange.size += len(body)
        if exchange.size > READ_AHEAD_BYTES:
            self._pause_reading()
        exchange.wake()

    def on_message_complete(self) -> None:
        exchange = self.parsing
        if exchange is None or exchange.complete:
            return
        exchange.more_body = False
        exchange.wake()

    # -- requests -----------------------------------------------------------------------------

    def _start(self, exchange: _Exchange, app: Any) -> None:
        self.active = exchange
        task = self.loop.create_task(exchange.run(app))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def response_complete(self) -> None:
        self.server_state.total_requests += 1
        self.active = None
        if self.transport.is_closing():
            return
        self._resume_reading()
        if self.pipeline:
            self._start(*self.pipeline.popleft())
        elif self.draining:
            self.transport.close()
        else:
            self._idle_deadline = self._wake_by(self.keep_alive_s)

    def default_lines(self) -> bytes:
        """uvicorn's default headers (date, server) as head lines: uvicorn swaps the list for
        a new one when the date changes, so the bytes are made once per list."""
        defaults = self.server_state.default_headers
        if defaults is not self._defaults:
            self._defaults = defaults
            self._default_lines = b"".join(b"%s: %s\r\n" % (n, v) for n, v in defaults)
        return self._default_lines

    def _pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()

    # -- the connection's timer ----------------------------------------------------------------

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
            self.transport.close()
        elif head is not None or idle is not None:
            self._wake_by(min(d for d in (head, idle) if d is not None) - now)


class _Exchange:
    """One request and its response: the ASGI receive and send of the app call serving it."""

    __slots__ = (
        "chunked",
        "complete",
        "conn",
        "continue_due",
        "disconnected",
        "handed_all",
        "head",
        "keep_alive",
        "more_body",
        "parts",
        "remaining",
        "scope",
        "size",
        "started",
        "waiter",
    )

    def __init__(
        self, conn: GatewayHttpProtocol, scope: dict[str, Any], keep_alive: bool, expect: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.continue_due = expect  # 100 Continue is sent when the app first reads the body
        # The request body's pieces not yet handed to the app, as the parser gave them.
        self.parts: list[bytes] = []
        self.size = 0
        self.more_body = True  # until the parser has seen the request's end
        self.handed_all = False  # the app has had the request's last body message
        self.waiter: asyncio.Future[None] | None = None  # receive() waiting for the parser
        self.disconnected = False
        self.started = False  # http.response.start seen
        self.head = b""  # the response head, held to leave with the first body bytes
        self.chunked = False
        self.remaining = 0  # Content-Length bytes still to send
        self.complete = False

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self, app: Any) -> None:
        try:
            result = await app(self.scope, self.receive, self.send)
        except BaseException as exc:
            log.error("Exception in ASGI application\n", exc_info=exc)
            if not self.started:
                await self._send_500()
            elif not self.complete:
                self.conn.transport.close()
        else:
            if result is not None:
                log.error("ASGI callable should return None, but returned '%s'.", result)
                self.conn.transport.close()
            elif not self.started and not self.disconnected:
                log.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.complete and not self.disconnected:
                log.error("ASGI callable returned without completing response.")
                self.conn.transport.close()

    async def receive(self) -> dict[str, Any]:
        conn = self.conn
        if self.continue_due:
            self.continue_due = False
            if not conn.transport.is_closing():
                conn.transport.write(_CONTINUE)
        # Wait for a body piece or the request's end; once the whole body was handed over, for
        # the client's disconnect or the response's completion.
        while not (self.disconnected or self.complete) and (
            self.handed_all or (self.more_body and not self.parts)
        ):
            conn._resume_reading()
            self.waiter = conn.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        # One message per socket read, never a join: the app keeps a large body's pieces as
        # they are (gateway/bodies.py) and takes the next one without waiting.
        parts = self.parts
        body = parts.pop(0) if parts else b""
        self.size -= len(body)
        more = self.more_body or bool(parts)
        self.handed_all = not more
        return {"type": "http.request", "body": body, "more_body": more}

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.writable is not None and not self.disconnected:
            self._flush()  # the held head goes out before the wait for the client to read
            await conn.writable
        if self.disconnected:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', got '{kind}'.")
            self.head = self._head(message["status"], message.get("headers", ()))
            self.started = True
            self.continue_due = False
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' after the response completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', got '{kind}'.")
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.scope["method"] == "HEAD":
            body = b""
        elif self.chunked:
            body = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                body += b"0\r\n\r\n"
        else:
            self.remaining -= len(body)
            if self.remaining < 0:
                raise RuntimeError("Response content longer than Content-Length")
            if not more and self.remaining:
                raise RuntimeError("Response content shorter than Content-Length")
        if self.head:
            body, self.head = self.head + body, b""
        if body:
            conn.transport.write(body)
        if not more:
            self.complete = True
            self.wake()
            if not self.keep_alive:
                conn.transport.close()
            conn.response_complete()

    def _head(self, status: int, headers: Any) -> bytes:
        """The response head; the framing and keep-alive it sets apply only once it is valid."""
        conn = self.conn
        keep_alive = self.keep_alive and not conn.draining
        length: int | None = None
        chunked = close = False
        # Four pieces per line, joined once: %-formatting each line was ~1% of a worker (perf).
        pieces: list[bytes] = []
        for name, value in headers:
            name = name.lower()
            if name == b"content-length" and length is None and not chunked:
                length = int(value)
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
            elif name == b"connection" and b"close" in [
                t.strip() for t in value.lower().split(b",")
            ]:
                keep_alive = False
                close = True
            pieces += (name, b": ", value, b"\r\n")
        block = b"".join(pieces)
        # A CR LF inside a value would read as a line of its own: hence the count.
        if block.count(b"\n") * 4 != len(pieces) or _HEADER_LINES.fullmatch(block) is None:
            raise RuntimeError("Invalid HTTP header name or value.")
        if not keep_alive and not close:
            block += b"connection: close\r\n"
        scope = self.scope
        body_allowed = scope["method"] != "HEAD" and status not in _NO_BODY_STATUSES
        if length is None and not chunked and body_allowed:
            chunked = True
            block += b"transfer-encoding: chunked\r\n"
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.remaining = 0 if chunked or length is None else length
        if conn.access_log:
            conn.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                _client_text(scope),
                scope["method"],
                _path_text(scope),
                scope["http_version"],
                status,
            )
        return _STATUS_LINES[status] + conn.default_lines() + block + b"\r\n"

    def _flush(self) -> None:
        if self.head:
            self.conn.transport.write(self.head)
            self.head = b""

    async def _send_500(self) -> None:
        await self.send({
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"21"),
                (b"connection", b"close"),
            ],
        })  # fmt: skip
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})


def _address(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return str(addr[0]), int(addr[1])
    return None  # a Unix socket


def _client_text(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def _path_text(scope: dict[str, Any]) -> str:
    query = scope["query_string"].decode("ascii")
    path = urllib.parse.quote(scope["path"])
    return f"{path}?{query}" if query else path

"""gateway/server.py's HTTP/1.1 protocol, fed bytes through a recording transport: framing,
one write per small response, keep-alive and close, pipelining in order, 100-continue, bodies
handed over as the parser gave them, malformed requests."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from lvm_gateway.gateway.server import READ_AHEAD_BYTES, GatewayHttpProtocol


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the request's body (and how many messages it came in) with a Content-Length."""
    pieces = []
    while True:
        message = await receive()
        pieces.append(message["body"])
        if not message["more_body"]:
            break
    body = b"%s %s %d:" % (scope["method"].encode(), scope["path"].encode(), len(pieces))
    body += b"".join(pieces)
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def chunked(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ab", "more_body": True})
    await send({"type": "http.response.body", "body": b"c"})


def exchange(*feeds: bytes, app: Any = echo) -> RecordingTransport:
    """Feed the protocol each of `feeds` in turn, letting the app run in between."""
    transport = RecordingTransport()

    async def run() -> None:
        config = Config(app, lifespan="off", log_config=None)
        state = ServerState()
        protocol = GatewayHttpProtocol(config, state, {}, asyncio.get_running_loop())
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for data in feeds:
            protocol.data_received(data)
            for _ in range(10):
                await asyncio.sleep(0)
        protocol.connection_lost(None)

    asyncio.run(run())
    return transport


def _strip_date(data: bytes) -> bytes:
    return b"\r\n".join(ln for ln in data.split(b"\r\n") if not ln.startswith(b"date: "))


def test_head_and_body_leave_in_one_write() -> None:
    t = exchange(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert len(t.writes) == 1
    assert t.writes[0] == b"HTTP/1.1 200 OK\r\ncontent-length: 17\r\n\r\nPOST /infer 1:abc"
    assert not t.closed


def test_pipelined_requests_are_answered_in_order() -> None:
    t = exchange(
        b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\n1"
        b"GET /b HTTP/1.1\r\n\r\n"
        b"POST /c HTTP/1.1\r\nContent-Length: 2\r\n\r\n33"
    )
    answers = b"".join(t.writes)
    assert answers.index(b"POST /a 1:1") < answers.index(b"GET /b 1:") < answers.index(b"POST /c")
    assert answers.endswith(b"POST /c 1:33")
    assert t.reading


def test_a_body_in_pieces_is_handed_over_as_it_arrives() -> None:
    t = exchange(
        b"POST /x HTTP/1.1\r\nContent-Length: 6\r\n\r\nab", b"cd", b"ef",
    )  # fmt: skip
    assert t.writes[-1].endswith(b"POST /x 3:abcdef")


def test_reading_stops_only_when_a_body_runs_a_mebibyte_ahead_of_the_app() -> None:
    async def run(size: int) -> bool:
        started = asyncio.Event()

        async def reads_late(scope: dict[str, Any], receive: Any, send: Any) -> None:
            started.set()
            await asyncio.sleep(3600)  # never reads: the pieces pile up in the connection

        transport = RecordingTransport()
        config = Config(reads_late, lifespan="off", log_config=None)
        protocol = GatewayHttpProtocol(config, ServerState(), {}, asyncio.get_running_loop())
        protocol.connection_made(transport)  # type: ignore[arg-type]
        head = b"POST /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (4 * READ_AHEAD_BYTES)
        protocol.data_received(head)
        await started.wait()
        for _ in range(size // (256 * 1024)):  # socket reads of a large body
            protocol.data_received(b"x" * (256 * 1024))
        reading = transport.reading
        protocol.connection_lost(None)
        return reading

    assert asyncio.run(run(READ_AHEAD_BYTES)) is True
    assert asyncio.run(run(READ_AHEAD_BYTES + 256 * 1024)) is False


def test_chunked_request_and_response() -> None:
    t = exchange(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert t.writes[-1].endswith(b"POST /x 1:abc")
    t = exchange(b"GET / HTTP/1.1\r\n\r\n", app=chunked)
    assert b"".join(t.writes).endswith(
        b"transfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    )


def test_head_request_sends_the_head_alone() -> None:
    t = exchange(b"HEAD /x HTTP/1.1\r\n\r\n")
    assert t.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n"]


def test_http_10_and_connection_close_close_after_the_answer() -> None:
    for request in (b"GET /x HTTP/1.0\r\n\r\n", b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"):
        t = exchange(request)
        assert t.closed
        assert b"connection: close\r\n" in t.writes[0]


def test_expect_100_continue_is_answered_when_the_app_reads() -> None:
    t = exchange(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", b"hi")
    assert t.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert t.writes[1].endswith(b"POST /x 1:hi")


def test_malformed_request_is_a_400_and_the_connection_closes() -> None:
    t = exchange(b"NOT HTTP AT ALL\r\n\r\n")
    assert t.closed
    assert _strip_date(t.writes[0]).startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_header_value_that_would_split_the_response_is_refused() -> None:
    async def bad(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"x-evil", b"a\r\nset-cookie: b"), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    t = exchange(b"GET / HTTP/1.1\r\n\r\n", app=bad)
    assert t.writes[0].startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"set-cookie" not in b"".join(t.writes)

"""gateway/server.py's OneWriteSend: a response's head and body leave in one transport write,
with uvicorn's own send doing the framing."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from lvm_gateway.gateway.server import OneWriteSend


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def respond(method: str, body: bytes, keep_alive: bool = True) -> RecordingTransport:
    transport = RecordingTransport()
    log = logging.getLogger("test")

    async def run() -> None:
        cycle = RequestResponseCycle(
            scope={"type": "http", "method": method, "path": "/", "http_version": "1.1"},
            transport=transport,
            flow=FlowControl(transport),
            logger=log,
            access_logger=log,
            access_log=False,
            default_headers=[],
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=lambda: None,
        )
        cycle.send = send = OneWriteSend(cycle)  # as the protocol installs it
        headers: list[Any] = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        assert transport.writes == []  # held for the body
        await send({"type": "http.response.body", "body": body})
        assert cycle.response_complete and cycle.transport is transport
        assert "send" not in vars(cycle)  # no reference cycle left behind for the GC

    asyncio.run(run())
    return transport


def test_head_and_body_are_one_write() -> None:
    t = respond("POST", b'{"ok":1}')
    assert t.writes == [b'HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{"ok":1}']


def test_a_head_request_and_an_empty_body_still_send_the_head() -> None:
    assert respond("HEAD", b"abc").writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n"]
    assert respond("GET", b"").writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]


def test_the_response_is_written_before_a_closing_connection_closes() -> None:
    t = respond("GET", b"x", keep_alive=False)
    assert t.closed
    assert t.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\nx"]

"""The gateway under granian's RSGI interface: the same GatewayApp, fed RSGI's request objects.

granian (Rust, hyper) owns the sockets and HTTP parsing; each request reaches `__rsgi__` with a
scope object and a protocol object. The adapter presents them as the ASGI scope, `receive` and
`send` the app already uses, so the routing, policies, dispatch and records are exactly the ones
uvicorn runs: a body up to the app's WHOLE_MAX_BYTES arrives in one `await protocol()` call, a
larger one chunk by chunk (`async for`), which the app forwards as it arrives when it streams
(gateway/bodies.py). The
answer goes back in one `response_bytes` call.

Client limits differ: gateway/server.py's request-head timeout is in its own protocol under uvicorn;
under granian its own `http1` settings apply (`lvm-gateway serve --server granian`, serve.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from lvm_gateway.gateway.app import WHOLE_MAX_BYTES, GatewayApp

_LAST = {"type": "http.request", "body": b"", "more_body": False}


class RSGIGateway:
    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    # granian calls these two around a worker's life, outside a running loop.
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.app.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.app.shutdown())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
        host, _, port = scope.client.rpartition(":")
        asgi_scope = {
            "type": "http",
            "method": scope.method,
            "path": scope.path,
            "query_string": scope.query_string.encode("latin-1"),
            "headers": headers,
            "client": (host, int(port or 0)),
            "scheme": scope.scheme,
        }
        length = scope.headers.get("content-length")
        whole = length is not None and length.isdigit() and int(length) <= WHOLE_MAX_BYTES
        receive = _whole(protocol) if whole else _chunks(protocol)
        start: dict[str, Any] = {}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            out = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
            protocol.response_bytes(start["status"], out, message.get("body", b""))

        await self.app(asgi_scope, receive, send)


def _whole(protocol: Any) -> Any:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": await protocol(), "more_body": False}

    return receive


def _chunks(protocol: Any) -> Any:
    chunks = aiter(protocol)

    async def receive() -> dict[str, Any]:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return _LAST
        return {"type": "http.request", "body": chunk, "more_body": True}

    return receive

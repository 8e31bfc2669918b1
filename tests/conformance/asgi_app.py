"""A tiny ASGI app served by a real uvicorn in the conformance suite.

/echo answers what it received (method, headers, body size) with end-to-end headers of its own;
/stream sends its body in pieces without a Content-Length, so uvicorn frames it chunked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

STREAM_PIECES = [b"alpha-", b"beta-", b"gamma"]


async def app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for piece in STREAM_PIECES:
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    body = orjson.dumps({
        "method": scope["method"],
        "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
        "body_bytes": size,
    })  # fmt: skip
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"x-model-version", b"7"),
                    (b"cache-control", b"no-store"), (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})

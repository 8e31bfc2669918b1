"""The seam between the data plane and the wire: what a variant's endpoint is asked to do.

`h1pool.EndpointPool` is the transport that talks HTTP/1.1 to a model server; `MockTransport`
answers in-process from a function, as httpx's MockTransport does, so that a benchmark or a
test can run the whole app without a socket. `upstream.UpstreamPool` takes the factory.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from lvm_gateway.errors import BadResponseError
from lvm_gateway.gateway.bodies import StreamedBody

Headers = list[tuple[bytes, bytes]]
# Status, response headers as received, body, and time.perf_counter() when its last byte was
# read: the upstream's latency ends there, not when the awaiting task next runs on a busy loop.
Response = tuple[int, Headers, bytes, float]


class Transport(Protocol):
    """One upstream address. `request` raises the OSError family (errors.ConnectionLostError,
    errors.BadResponseError, connect errors) and is bounded in time by its caller."""

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | StreamedBody,
        headers: dict[str, str],
        limit: int,
        progress: Callable[[bool], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Response: ...

    def close(self) -> None: ...


# (base URL, connection limit, TLS context or None) -> the transport to that address.
TransportFactory = Callable[[str, int, ssl.SSLContext | None], Transport]

# (method, path and query, headers, whole body) -> (status, response headers, body).
Handler = Callable[[str, str, dict[str, str], bytes], tuple[int, Headers, bytes]]


class MockTransport:
    """Answers every request with `handler`'s result; a streamed body is read whole first.
    `factory` gives one to every endpoint of every variant."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def factory(self, url: str, limit: int, tls: ssl.SSLContext | None) -> Transport:
        return self

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
        data = body if isinstance(body, bytes) else b"".join([c async for c in body])
        status, raw, answer = self.handler(method, target, headers, data)
        if len(answer) > limit:
            raise BadResponseError(f"response body larger than {limit} bytes")
        return status, raw, answer, time.perf_counter()

    def close(self) -> None:
        pass

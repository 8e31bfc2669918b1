"""Request bodies read into memory within two bounds: one per request, one for all at once.

The per-request limit answers 413; a client that stops sending its body for `timeout_s` gets
a 408. The shared budget bounds the gateway's memory however many
large bodies arrive together: a body that would take the bytes buffered by all requests in
flight past the budget is refused with a 503 (retry later), so six parallel 60 MiB uploads
cost at most the budget, not 1 GiB of RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from lvm_gateway.errors import BadRequestError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyBudget:
    def __init__(self, budget_bytes: int, timeout_s: float = 30.0) -> None:
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s  # the longest wait for the next piece of a body
        self.in_use = 0  # bytes held by requests in flight

    @contextlib.asynccontextmanager
    async def read(self, receive: Receive, limit: int) -> AsyncIterator[bytes]:
        """The whole body, charged to the budget until the block ends."""
        held = 0
        try:
            message = await self._next(receive)
            chunks = []
            while True:
                chunk: bytes = message.get("body", b"")
                held += len(chunk)
                self.in_use += len(chunk)
                if held > limit:
                    raise BadRequestError(f"request body larger than {limit} bytes", status=413)
                if self.in_use > self.budget_bytes:
                    raise BadRequestError(
                        f"gateway busy: request bodies in flight exceed its {self.budget_bytes}"
                        " byte buffer budget; retry shortly",
                        status=503,
                    )
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
                message = await self._next(receive)
            yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            self.in_use -= held

    async def _next(self, receive: Receive) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await receive()
        except TimeoutError:
            raise BadRequestError(
                f"request body not received: nothing arrived for {self.timeout_s:g} s", status=408
            ) from None

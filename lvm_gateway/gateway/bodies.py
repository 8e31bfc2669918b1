"""Request bodies within two bounds: one per request, one for all at once; read whole, or
streamed to the upstream as they arrive.

The per-request limit answers 413; a client that stops sending its body for `timeout_s` gets
a 408. The shared budget bounds the gateway's memory however many
large bodies arrive together: a body that would take the bytes buffered by all requests in
flight past the budget is refused with a 503 (retry later), so six parallel 60 MiB uploads
cost at most the budget, not 1 GiB of RSS.

A streamed body (`stream`) has its Content-Length charged to the budget up front (413 and 503
are answered before a byte is forwarded) and is pumped from the client by a task while upstream
calls read it: each reader starts from the first chunk, so a retry on another endpoint, a
fallback or a mirrored copy replays the chunks already held (kept by reference, never joined)
and then follows the arrival. A stall of `timeout_s` (408) or a body that ends short fails
every reader with that error.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from types import CoroutineType
from typing import Any

from lvm_gateway.errors import BadRequestError
from lvm_gateway.gateway.deadline import Deadline, DeadlineClock, clock_on_running_loop

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyBudget:
    def __init__(self, budget_bytes: int, timeout_s: float = 30.0) -> None:
        self.budget_bytes = budget_bytes
        self.timeout_s = timeout_s  # the longest wait for the next piece of a body
        self.in_use = 0  # bytes held by requests in flight
        self._clock: DeadlineClock | None = None  # the waits' timer, on the running loop

    def read(self, receive: Receive, limit: int) -> BufferedBody:
        """The whole body (`async with ... as body`), charged to the budget until the block
        ends."""
        return BufferedBody(self, receive, limit)

    async def _gather(self, receive: Receive, limit: int, held: list[int]) -> bytes:
        message = await self._next(receive)
        chunks = []
        while True:
            chunk: bytes = message.get("body", b"")
            held[0] += len(chunk)
            self.in_use += len(chunk)
            if held[0] > limit:
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
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @contextlib.asynccontextmanager
    async def stream(
        self, receive: Receive, limit: int, length: int, whole: bool = False
    ) -> AsyncIterator[StreamedBody]:
        """A body of `length` bytes (the client's Content-Length), forwarded as it arrives; with
        `whole`, received in full first (its chunks unjoined), so it leaves in one write."""
        if length > limit:
            raise BadRequestError(f"request body larger than {limit} bytes", status=413)
        if self.in_use + length > self.budget_bytes:
            raise BadRequestError(
                f"gateway busy: request bodies in flight exceed its {self.budget_bytes}"
                " byte buffer budget; retry shortly",
                status=503,
            )
        self.in_use += length
        body = StreamedBody(length)
        pump: asyncio.Task[None] | None = None
        try:
            if whole:
                await self._fill(receive, body)
            else:
                pump = asyncio.create_task(self._pump(receive, body))
            yield body
        finally:
            self.in_use -= length
            if pump is not None and not pump.done():  # answered before the client finished
                pump.cancel()

    async def _pump(self, receive: Receive, body: StreamedBody) -> None:
        """`_fill` on a task of its own: the client's error reaches the body's readers."""
        try:
            await self._fill(receive, body)
        except BadRequestError as exc:
            body.fail(exc)

    async def _fill(self, receive: Receive, body: StreamedBody) -> None:
        """Feed `body` until the client's last byte; BadRequestError if it stalls or ends short."""
        while True:
            message = await self._next(receive)
            body.feed(message.get("body", b""))
            if not message.get("more_body"):
                break
        if body.received != body.length:
            raise BadRequestError(
                f"request body ended after {body.received} of its {body.length} bytes"
            )
        body.finish()

    async def _next(self, receive: Receive) -> dict[str, Any]:
        # A small body has arrived with the head, so the server's receive() answers without
        # waiting: run it one step first and arm the timeout only when it has to wait.
        pending = receive()
        # The concrete type: an isinstance check against the Coroutine ABC costs ~0.15 us more.
        if isinstance(pending, CoroutineType):
            try:
                waiting_on = pending.send(None)
            except StopIteration as done:
                message: dict[str, Any] = done.value
                return message
            pending = _Resumed(pending, waiting_on)
        # Each wait of a large body used to arm an `asyncio.timeout`: three getpid() syscalls
        # and a timer; the waits share one timer now (gateway/deadline.py).
        clock = self._clock = clock_on_running_loop(self._clock, self.timeout_s)
        try:
            with Deadline(clock.loop, self.timeout_s, clock):
                return await pending
        except TimeoutError:
            raise BadRequestError(
                f"request body not received: nothing arrived for {self.timeout_s:g} s", status=408
            ) from None


class _Resumed:
    """Awaits a coroutine that was already run up to its first suspension (`waiting_on`, what
    it yielded there): what `await` would have done from that point on."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, dict[str, Any]], waiting_on: Any) -> None:
        self._coro, self._waiting_on = coro, waiting_on

    def __await__(self) -> Generator[Any, Any, dict[str, Any]]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (the timeout's too) goes on into it
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as done:
                    return done.value


class BufferedBody:
    """`BodyBudget.read`'s context: a class rather than a generator-based context manager,
    which costs several microseconds more on every request."""

    __slots__ = ("_budget", "_held", "_limit", "_receive")

    def __init__(self, budget: BodyBudget, receive: Receive, limit: int) -> None:
        self._budget, self._receive, self._limit = budget, receive, limit
        self._held = [0]

    async def __aenter__(self) -> bytes:
        try:
            return await self._budget._gather(self._receive, self._limit, self._held)
        except BaseException:
            self._budget.in_use -= self._held[0]
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._budget.in_use -= self._held[0]


class StreamedBody:
    """A request body arriving from the client, readable from the start by any number of
    upstream calls while it arrives (see the module docstring)."""

    __slots__ = ("_changed", "_error", "chunks", "done", "finished_at", "length", "received")

    def __init__(self, length: int) -> None:
        self.length = length
        self.chunks: list[bytes] = []
        self.received = 0
        self.done = False
        self.finished_at = 0.0  # time.perf_counter() when the last byte arrived
        self._error: BadRequestError | None = None
        self._changed = asyncio.Event()

    def __len__(self) -> int:
        return self.length

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self.chunks.append(chunk)
            self.received += len(chunk)
            self._wake()

    def finish(self) -> None:
        self.done = True
        self.finished_at = time.perf_counter()
        self._wake()

    def fail(self, exc: BadRequestError) -> None:
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        i = 0
        while True:
            while i < len(self.chunks):
                yield self.chunks[i]
                i += 1
            if self._error is not None:
                raise self._error
            if self.done:
                return
            await self._changed.wait()

    def edges(self, n: int) -> bytes:
        """The first and last `n` bytes held (all of them when fewer), without a join of the
        middle: where a JSON document's `tmd_codes` is found."""
        if self.received <= 2 * n:
            return b"".join(self.chunks)
        return _take(self.chunks, n) + b" " + _take(self.chunks[::-1], n, tail=True)


def _take(chunks: list[bytes], n: int, tail: bool = False) -> bytes:
    """The first n bytes of `chunks` (with tail: the last n of the chunks given in reverse)."""
    parts: list[bytes] = []
    for chunk in chunks:
        part = chunk[-n:] if tail else chunk[:n]
        parts.append(part)
        n -= len(part)
        if n == 0:
            break
    return b"".join(parts[::-1] if tail else parts)

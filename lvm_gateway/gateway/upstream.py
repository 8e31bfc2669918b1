"""The upstream client pool: per-variant endpoints with their own health, retries, error mapping.

The transport is `h1pool` (asyncio + httptools), not httpx or aiohttp: httpx's async pool
measured ~600-740 req/s on this machine, and `bench/client_compare.py` measures aiohttp's client
against h1pool (figures in its docstring). Library errors are translated at this boundary into
the UpstreamError family, and `error_body` is the one place that maps them to 502/504.

Health is per endpoint, as Envoy's outlier detection does it: an endpoint that fails
`CONSECUTIVE_ERRORS` times in a row (5xx, connection failure, timeout), or more than
`FAILURE_RATIO` of at least `FAILURE_MIN_REQUESTS` calls in a `FAILURE_WINDOW_S` window, is
ejected for `BASE_EJECTION_S` x 2^(ejections-1) (at most `MAX_EJECTION_S`), then re-admitted;
a clean window earns one ejection back. A failed call is retried on another endpoint that is
not ejected, each endpoint at most once per request, up to the route's `retry.attempts` and for
the kinds its `retry.on` names, while the variant's retry budget lasts (retries may add the
route's `retry.budget` share of the request rate plus `RETRY_MIN_PER_S` a second), so a sick
endpoint cannot multiply the load. When every endpoint is ejected the variant still tries one
(Envoy's panic routing): its failures then reach the variant's circuit, which thus opens only
when no endpoint is left. Each attempt has the variant's timeout; a bad response (framing, size)
is the upstream's fault but not retried, since another endpoint would likely answer the same.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson

from lvm_gateway.config.spec import DEFAULT_RETRY, RetrySpec, VariantSpec
from lvm_gateway.errors import (
    BadResponseError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from lvm_gateway.gateway.bodies import StreamedBody
from lvm_gateway.gateway.deadline import Deadline, DeadlineClock, clock_on_running_loop
from lvm_gateway.gateway.h1pool import EndpointPool
from lvm_gateway.gateway.headers import end_to_end
from lvm_gateway.gateway.transport import TransportFactory

CONSECUTIVE_ERRORS: Final = 5
FAILURE_WINDOW_S: Final = 10.0
FAILURE_MIN_REQUESTS: Final = 20
FAILURE_RATIO: Final = 0.5
BASE_EJECTION_S: Final = 2.0
MAX_EJECTION_S: Final = 60.0
RETRY_RATIO: Final = 0.2
RETRY_MIN_PER_S: Final = 10.0
RETRY_MAX_TOKENS: Final = 20.0
# The error kinds a route's `retry.on` names.
_RETRY_KIND = {"connect": "connect", "status": "5xx", "timeout": "timeout"}


# Not frozen, though never changed: built per request, and a frozen dataclass's __init__
# (object.__setattr__ per field) costs ~3x as much.
@dataclass(slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[bytes, bytes], ...] = ()  # end-to-end headers passed to the client
    received_at: float = 0.0  # time.perf_counter() at its last byte; 0.0 when not from a wire


class Endpoint:
    """One upstream address: its connection pool and its outlier-detection state."""

    __slots__ = (
        "_failed",
        "_ok",
        "_window_end",
        "consecutive",
        "ejected_until",
        "ejections",
        "pool",
        "url",
    )

    def __init__(
        self, url: str, limit: int, tls: ssl.SSLContext | None, transport: TransportFactory
    ) -> None:
        self.url = url
        self.pool = transport(url, limit, tls)
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self._ok = 0
        self._failed = 0
        self._window_end = 0.0

    def available(self, now: float) -> bool:
        return self.ejected_until <= now

    def success(self, now: float) -> None:
        self.consecutive = 0
        self._ok += 1
        if now >= self._window_end:
            self._close_window(now)

    def failure(self, now: float) -> None:
        self.consecutive += 1
        self._failed += 1
        if self.consecutive >= CONSECUTIVE_ERRORS:
            self._eject(now)
        elif now >= self._window_end:
            self._close_window(now)

    def _close_window(self, now: float) -> None:
        total = self._ok + self._failed
        if total >= FAILURE_MIN_REQUESTS and self._failed > FAILURE_RATIO * total:
            self._eject(now)
            return
        if self._failed == 0 and self.ejections:
            self.ejections -= 1
        self._ok = self._failed = 0
        self._window_end = now + FAILURE_WINDOW_S

    def _eject(self, now: float) -> None:
        self.ejections += 1
        backoff = BASE_EJECTION_S * 2 ** min(self.ejections - 1, 16)
        self.ejected_until = now + min(MAX_EJECTION_S, backoff)
        self.consecutive = self._ok = self._failed = 0
        self._window_end = self.ejected_until + FAILURE_WINDOW_S


class RetryBudget:
    """Tokens for retries: each request adds RETRY_RATIO, time adds RETRY_MIN_PER_S a second."""

    __slots__ = ("_last", "_tokens")

    def __init__(self) -> None:
        self._tokens = RETRY_MAX_TOKENS
        self._last = 0.0

    def deposit(self, ratio: float = RETRY_RATIO) -> None:
        if self._tokens < RETRY_MAX_TOKENS:
            self._tokens += ratio

    def withdraw(self, now: float) -> bool:
        tokens = min(RETRY_MAX_TOKENS, self._tokens + (now - self._last) * RETRY_MIN_PER_S)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True


class VariantClient:
    __slots__ = ("_clock", "_next", "budget", "endpoints", "max_bytes", "name", "spec", "timeout_s")

    def __init__(self, name: str, spec: VariantSpec, transport: TransportFactory) -> None:
        self.name = name
        self.spec = spec
        tls = spec.tls.context() if spec.tls is not None else None
        self.endpoints = tuple(
            Endpoint(u, spec.max_connections, tls, transport) for u in spec.endpoints
        )
        self.timeout_s = spec.timeout_ms / 1000.0
        self.max_bytes = spec.max_response_bytes
        self.budget = RetryBudget()
        self._next = 0
        self._clock: DeadlineClock | None = None  # this variant's timeouts, on the running loop

    @property
    def healthy_endpoints(self) -> int:
        now = asyncio.get_running_loop().time()
        return sum(ep.available(now) for ep in self.endpoints)

    def _first(self, now: float) -> int:
        """Round-robin over the endpoints not ejected; over all of them when none is left."""
        n = len(self.endpoints)
        start = self._next
        for i in range(n):
            idx = (start + i) % n
            if self.endpoints[idx].available(now):
                self._next = (idx + 1) % n
                return idx
        self._next = (start + 1) % n
        return start

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | StreamedBody,
        headers: dict[str, str],
        retry: RetrySpec = DEFAULT_RETRY,
    ) -> UpstreamResponse:
        """One call, retried on other endpoints as the route's `retry` allows (module
        docstring); UpstreamError otherwise."""
        clock = self._clock = clock_on_running_loop(self._clock, self.timeout_s)
        loop = clock.loop
        now = loop.time()
        endpoints = self.endpoints
        n = len(endpoints)
        idx = first = self._first(now) if n > 1 else 0
        self.budget.deposit(retry.budget)
        tries = 1
        while True:
            ep = endpoints[idx]
            try:
                with Deadline(loop, self.timeout_s, clock) as deadline:
                    streamed = isinstance(body, StreamedBody)
                    progress = self._progress(deadline, loop) if streamed else None
                    status, raw, data, received_at = await ep.pool.request(
                        method, target, body, headers, self.max_bytes, progress, loop
                    )
            except TimeoutError as exc:
                err: UpstreamError = UpstreamTimeoutError(
                    self.name, f"no answer within {self.spec.timeout_ms:g} ms from {ep.url}"
                )
                err.__cause__ = exc
            except BadResponseError as exc:
                ep.failure(loop.time())
                raise UpstreamStatusError(self.name, f"bad response from {ep.url}: {exc}") from exc
            except OSError as exc:
                err = UpstreamConnectError(self.name, f"{ep.url} unreachable: {exc}")
                err.__cause__ = exc
            else:
                if status < 500:
                    ep.success(loop.time())
                    ctype, passed = end_to_end(raw)
                    return UpstreamResponse(status, data, ctype, passed, received_at)
                err = UpstreamStatusError(self.name, f"{ep.url} answered HTTP {status}")
            now = loop.time()
            ep.failure(now)
            if tries >= retry.attempts or _RETRY_KIND[err.kind] not in retry.on:
                raise err
            idx = self._retry_target(idx, first, now) if n > 1 else -1
            if idx < 0 or not self.budget.withdraw(now):
                raise err
            tries += 1

    def _progress(
        self, deadline: Deadline, loop: asyncio.AbstractEventLoop
    ) -> Callable[[bool], None]:
        """For a streamed body: the timeout runs only while the upstream is awaited."""

        def progress(upstream: bool) -> None:
            deadline.reschedule(loop.time() + self.timeout_s if upstream else None)

        return progress

    def _retry_target(self, idx: int, first: int, now: float) -> int:
        """The next endpoint after `idx` not ejected and not yet tried (tries go round from
        `first`), or -1."""
        n = len(self.endpoints)
        for step in range(1, n):
            nxt = (idx + step) % n
            if nxt == first:
                return -1
            if self.endpoints[nxt].available(now):
                return nxt
        return -1

    def close(self) -> None:
        for ep in self.endpoints:
            ep.pool.close()


class UpstreamPool:
    """One client per variant; a hot reload keeps the clients whose spec did not change.
    `transport` makes each endpoint's (h1pool's by default; transport.MockTransport in-process)."""

    def __init__(self, transport: TransportFactory = EndpointPool) -> None:
        self.transport = transport
        self.clients: dict[str, VariantClient] = {}
        self._retired: list[VariantClient] = []

    def configure(self, variants: dict[str, VariantSpec]) -> None:
        old = self.clients
        new: dict[str, VariantClient] = {}
        for name, spec in variants.items():
            client = old.get(name)
            new[name] = (
                client
                if client is not None and client.spec == spec
                else VariantClient(name, spec, self.transport)
            )
        # Replaced clients may still carry in-flight requests: close them later, not now.
        self._retired.extend(c for n, c in old.items() if new.get(n) is not c)
        self.clients = new

    def endpoint_states(self) -> Iterator[tuple[str, str, bool, int]]:
        """(variant, url, admitted, ejections) of every endpoint, for /metrics."""
        now = asyncio.get_running_loop().time()
        for name, client in self.clients.items():
            for ep in client.endpoints:
                yield name, ep.url, ep.available(now), ep.ejections

    async def close_retired(self, grace_s: float) -> None:
        retired, self._retired = self._retired, []
        if retired:
            await asyncio.sleep(grace_s)
            for c in retired:
                c.close()

    def close(self) -> None:
        for c in [*self.clients.values(), *self._retired]:
            c.close()
        self.clients, self._retired = {}, []


def error_body(exc: UpstreamError, request_id: str) -> tuple[int, bytes]:
    """The one mapping from upstream failures to what the client sees."""
    payload: dict[str, Any] = {
        "error": exc.kind,
        "message": str(exc),
        "variant": exc.variant,
        "request_id": request_id,
    }
    return exc.status, orjson.dumps(payload)

"""The gateway's ASGI application: route, decide, proxy, record.

A plain ASGI callable rather than a framework: the data plane's only routes are the configured
proxy paths plus four fixed endpoints, and every microsecond on this path is paid per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from lvm_gateway.config.load import Config, Route, load_config
from lvm_gateway.config.spec import FEEDBACK_PATH, HEALTH_PATH, METRICS_PATH, READY_PATH
from lvm_gateway.errors import BadRequestError, ConfigError, UpstreamError
from lvm_gateway.gateway.circuit import Circuits
from lvm_gateway.gateway.dispatch import Call, Dispatcher, RecorderLike
from lvm_gateway.gateway.feedback import FeedbackIntake
from lvm_gateway.gateway.metrics import MetricsRecorder, RecordsCollector, RolloutCollector
from lvm_gateway.gateway.mirror import Mirror
from lvm_gateway.gateway.records import PredictionRecords
from lvm_gateway.gateway.reload import ConfigWatcher
from lvm_gateway.gateway.upstream import UpstreamPool, error_body
from lvm_gateway.policies.base import Decision, RequestInfo, RoutingView
from lvm_gateway.redisconn import open_client

log = logging.getLogger("lvm_gateway")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024 * 1024
# Not forwarded upstream: hop-by-hop headers, and the framing headers the upstream client sets.
_DROP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "content-length", "transfer-encoding", "upgrade",
     "proxy-connection", "te", "trailer", "expect"}
)  # fmt: skip
_JSON = b"application/json"

Headers = tuple[tuple[bytes, bytes], ...]
# A fixed endpoint: (scope, receive) -> (status, body, content type, extra headers).
Endpoint = Callable[[Scope, Receive], Awaitable[tuple[int, bytes, bytes]]]


class DataPlaneLike(Protocol):
    """What the gateway needs from the control plane (rollout.dataplane.RolloutDataPlane)."""

    @property
    def weights(self) -> Mapping[str, float]: ...
    @property
    def shadow(self) -> Mapping[str, float]: ...
    @property
    def connected(self) -> bool: ...
    @property
    def phases(self) -> Mapping[str, str]: ...
    @property
    def notifications(self) -> Mapping[tuple[str, str, str], int]: ...
    @property
    def recorder(self) -> RecorderLike: ...
    async def start(self, config: Config) -> None: ...
    async def on_config(self, config: Config) -> None: ...
    async def stop(self) -> None: ...


def _json(status: int, payload: dict[str, Any]) -> tuple[int, bytes]:
    return status, orjson.dumps(payload)


class GatewayApp:
    def __init__(
        self,
        config: Config,
        dataplane: DataPlaneLike,
        redis_url: str,
        registry: CollectorRegistry | None = None,
        watch: bool = True,
    ) -> None:
        self.config = config
        self.dataplane = dataplane
        self.redis_url = redis_url
        self.redis: aioredis.Redis | None = None
        self.registry = registry or CollectorRegistry()
        self.metrics = MetricsRecorder(self.registry)
        self.rollout_collector = RolloutCollector(
            lambda: self.dataplane.weights,
            lambda: self.dataplane.connected,
            lambda: self.dataplane.phases,
            lambda: self.dataplane.notifications,
        )
        self.registry.register(self.rollout_collector)
        self.pool = UpstreamPool()
        self.circuits = Circuits({}, self.metrics.circuit)
        fb = config.spec.feedback
        self.records = PredictionRecords(config.spec.redis_prefix, fb.ttl_seconds, fb.sample_rate)
        self.dispatch = Dispatcher(
            self.pool, self.circuits, self.metrics, dataplane.recorder, self.records
        )
        self.records_collector = RecordsCollector(lambda: self.records.dropped)
        self.registry.register(self.records_collector)
        self.feedback = FeedbackIntake(self.records, dataplane.recorder, self.metrics)
        self.mirror = Mirror(self.dispatch, self.metrics, config.spec.mirror_max_inflight)
        self.watcher = (
            ConfigWatcher(config.source, self._reload) if watch and config.source else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.random
        self._started = False
        # The fixed endpoints: path -> (methods, handler). Configured routes may not take these
        # paths (config.spec.RESERVED_PATHS).
        self._fixed: dict[str, tuple[frozenset[str], Endpoint]] = {
            FEEDBACK_PATH: (frozenset({"POST"}), self._feedback_http),
            HEALTH_PATH: (frozenset({"GET", "HEAD"}), self._healthz),
            READY_PATH: (frozenset({"GET", "HEAD"}), self._readyz),
            METRICS_PATH: (frozenset({"GET", "HEAD"}), self._metrics),
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        self._apply(self.config)
        self.metrics.reload(True, time.time())
        self.redis = open_client(self.redis_url, timeout_s=1.0)
        await self.dataplane.start(self.config)
        self._background(self._flush_records())
        if self.watcher is not None:
            self._background(self.watcher.run())
        self._started = True

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        # Finished tasks leave the set, so one per config reload does not accumulate.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.mirror.drain(timeout_s=2.0)
        await self.dataplane.stop()
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.records.flush(self.redis)
            await self.redis.aclose()
        self.pool.close()

    def _apply(self, config: Config) -> None:
        self.pool.configure(dict(config.variants))
        self.circuits.configure({n: v.circuit for n, v in config.variants.items()})
        self.mirror.max_inflight = config.spec.mirror_max_inflight
        fb = config.spec.feedback
        self.records.configure(config.spec.redis_prefix, fb.ttl_seconds, fb.sample_rate)
        self.config = config

    async def _flush_records(self) -> None:
        """Prediction records reach Redis within ~100 ms; while Redis is down they wait, bounded."""
        assert self.redis is not None
        failing = False
        while True:
            await asyncio.sleep(0.1)
            try:
                await self.records.flush(self.redis)
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("prediction records not flushed, will retry: %s", exc)
                failing = True
                await asyncio.sleep(1.0)
                continue
            failing = False

    async def _reload(self, path: str) -> None:
        try:
            config = load_config(path)
        except ConfigError as exc:
            self.metrics.reload(False, time.time())
            log.error(
                "config reload rejected, still serving %s: %s",
                self.config.digest,
                "; ".join(exc.errors),
            )
            return
        self._apply(config)
        self.metrics.reload(True, time.time())
        log.info("config reloaded from %s (digest %s)", path, config.digest)
        await self.dataplane.on_config(config)
        self._background(self.pool.close_retired(grace_s=60.0))

    # -- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # report start-up failure to the server, then stop
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        route = self.config.routes.get(path)
        if route is None:
            await self._fixed_endpoint(path, scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or os.urandom(12).hex()
        variant = "none"
        extra: Headers = ()
        try:
            if scope["method"] not in route.methods:
                allowed = ", ".join(sorted(route.methods))
                extra += ((b"allow", allowed.encode()),)
                raise BadRequestError(
                    f"{scope['method']} not allowed on {path}; use {allowed}", status=405
                )
            body = await _read_body(receive)
            status, payload, ctype, variant = await self._proxy(
                route, scope, headers, body, request_id
            )
        except BadRequestError as exc:
            self.metrics.bad_request(path)
            status, payload = _json(
                exc.status, {"error": "bad_request", "message": str(exc), "request_id": request_id}
            )
            ctype = _JSON
        except Exception:  # never a 500: a bug here is logged loudly and answered as a 502
            log.exception("unexpected error proxying %s", path)
            status, payload = _json(
                502,
                {
                    "error": "gateway_error",
                    "message": "internal gateway error (logged)",
                    "request_id": request_id,
                },
            )
            ctype = _JSON
        extra += ((b"x-request-id", request_id.encode()), (b"x-variant", variant.encode()))
        await _respond(send, status, payload, ctype, extra)
        self.metrics.request(path, variant, status, time.perf_counter() - started)

    async def _proxy(
        self, route: Route, scope: Scope, headers: dict[str, str], body: bytes, request_id: str
    ) -> tuple[int, bytes, bytes, str]:
        view = RoutingView(
            weights=self.dataplane.weights,
            shadow=self.dataplane.shadow,
            open_circuits=self.circuits.open_set(),
            inflight=self.dispatch.inflight,
            draw=self._random(),
            mirror_draw=self._random(),
        )
        request = RequestInfo(headers, body)
        decision = route.policy.decide(request, view)
        forward = {k: v for k, v in headers.items() if k not in _DROP_HEADERS}
        forward["x-request-id"] = request_id
        target = route.path + (
            f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        )
        call = Call(target, body, forward, request_id, request.lane() if route.inspect else None)
        if decision.mirror is not None:
            self.mirror.submit(decision.mirror, call)
        served = decision.variant
        try:
            resp = await self.dispatch.serve(decision, call, served=True)
        except UpstreamError as exc:
            fallback = decision.fallback if route.fallback else None
            if fallback is None:
                status, payload = error_body(exc, request_id)
                return status, payload, _JSON, served
            self.metrics.fallback(route.path, served, fallback)
            served = fallback
            try:
                resp = await self.dispatch.serve(Decision(fallback), call, served=True)
            except UpstreamError as exc2:
                status, payload = error_body(exc2, request_id)
                return status, payload, _JSON, served
        return resp.status, resp.body, resp.content_type.encode() or _JSON, served

    # -- fixed endpoints ---------------------------------------------------------------------

    async def _fixed_endpoint(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self._fixed.get(path)
        if entry is None:
            status, body = _json(404, {
                "error": "not_found",
                "message": f"no route for {path}",
                "routes": sorted(self.config.routes),
            })  # fmt: skip
            await _respond(send, status, body, _JSON, ())
            return
        methods, handler = entry
        if scope["method"] not in methods:
            allowed = ", ".join(sorted(methods))
            status, body = _json(405, {
                "error": "method_not_allowed",
                "message": f"{scope['method']} not allowed on {path}; use {allowed}",
            })  # fmt: skip
            if path == FEEDBACK_PATH:
                self.metrics.feedback("rejected")
            await _respond(send, status, body, _JSON, ((b"allow", allowed.encode()),))
            return
        status, body, ctype = await handler(scope, receive)
        await _respond(send, status, body, ctype, ())

    async def _feedback_http(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        assert self.redis is not None
        try:
            status, payload = await self.feedback.receive(
                self.redis, await _read_body(receive), self.config.spec.feedback
            )
        except BadRequestError as exc:
            self.metrics.feedback("rejected")
            status, payload = exc.status, {"error": "bad_request", "message": str(exc)}
        except (RedisError, OSError) as exc:
            status, payload = (
                503,
                {
                    "error": "redis_unavailable",
                    "message": f"feedback store unreachable, retry later: {exc}",
                },
            )
        return status, orjson.dumps(payload), _JSON

    async def _healthz(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        return 200, b'{"status":"ok"}', _JSON

    async def _metrics(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        return 200, generate_latest(self._exposed_registry()), CONTENT_TYPE_LATEST.encode()

    def _exposed_registry(self) -> CollectorRegistry:
        # With --workers N every worker writes its samples to shared files; any worker answers
        # a scrape with the merged view, so counters never jump between scrapes.
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        merged.register(self.rollout_collector)
        merged.register(self.records_collector)
        return merged

    async def _readyz(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        # Degraded (no Redis) still serves with the last known weights, so it stays in rotation.
        if not self._started:
            return 503, b'{"status":"starting"}', _JSON
        connected = self.dataplane.connected
        status, body = _json(200, {
            "status": "ready" if connected else "degraded",
            "redis": "connected" if connected else "unreachable",
            "config": self.config.digest,
        })  # fmt: skip
        return status, body, _JSON


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequestError(f"request body larger than {MAX_BODY_BYTES} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, ctype: bytes, extra: Headers) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})

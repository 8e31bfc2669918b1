"""The gateway's ASGI application: route, decide, proxy, record.

A plain ASGI callable rather than a framework: the data plane's only routes are the configured
proxy paths plus four fixed endpoints, and every microsecond on this path is paid per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final, Protocol

import orjson
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from redis.exceptions import RedisError

from lvm_gateway.config.load import Config, Route, load_config
from lvm_gateway.config.spec import (
    FEEDBACK_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    READY_PATH,
    read_secret,
)
from lvm_gateway.contract.lvm import TMD_SCAN_BYTES
from lvm_gateway.contract.oip import (
    HEADER_LENGTH,
    HEALTH_LIVE_PATH,
    HEALTH_READY_PATH,
    PREDICTED,
    PROTOCOL,
    model_metadata,
    model_of,
    parse_request_head,
)
from lvm_gateway.errors import BadRequestError, ConfigError, UpstreamError
from lvm_gateway.gateway.bodies import BodyBudget, Receive, StreamedBody
from lvm_gateway.gateway.circuit import Circuits
from lvm_gateway.gateway.dispatch import Call, Dispatcher, RecorderLike
from lvm_gateway.gateway.feedback import FeedbackIntake
from lvm_gateway.gateway.headers import upstream_request_headers
from lvm_gateway.gateway.ids import FeedbackTokens, client_id, new_gateway_id
from lvm_gateway.gateway.metrics import (
    FLUSH_INTERVAL_S,
    EndpointsCollector,
    MetricsRecorder,
    RecordsCollector,
    RolloutCollector,
)
from lvm_gateway.gateway.mirror import Mirror
from lvm_gateway.gateway.records import PredictionRecords
from lvm_gateway.gateway.reload import ConfigWatcher
from lvm_gateway.gateway.upstream import UpstreamPool, error_body
from lvm_gateway.policies.base import Decision, RequestInfo, RoutingView
from lvm_gateway.redisconn import binary, open_client, pause, raise_if_cancelled

log: Final = logging.getLogger("lvm_gateway")

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON: Final = b"application/json"

Headers = tuple[tuple[bytes, bytes], ...]
# Smaller bodies arrive in one ASGI message anyway: streaming them would only add overhead.
STREAM_MIN_BYTES: Final = 64 * 1024
# A body that could stream is received whole first, its chunks unjoined, and leaves with the
# request head in one writev when it is at most this large. Measured with a fast local client
# (one gateway worker, 2026-12-02, whole bodies then still joined): at 100 context vectors
# (950 KB) -0.11 ms p50 at 1 connection and +22% req/s at 8 (5 pairs: the upstream is woken
# once, not once per chunk); at 250 (2.4 MB) even at 1 connection, +28% at 8; at 500 (4.75 MB)
# streaming halved p50 and doubled req/s. The budget charges either the same.
WHOLE_MAX_BYTES: Final = 2 * 1024 * 1024
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
    def routing(self) -> str: ...
    @property
    def analyses(self) -> Mapping[str, Mapping[str, Any]]: ...
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


def _internal_error(**fields: str) -> tuple[int, bytes]:
    """Never a 500: a bug in the gateway is logged loudly by the caller and answered as a 502."""
    return _json(
        502, {"error": "gateway_error", "message": "internal gateway error (logged)", **fields}
    )


def _request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (ASGI gives bytes, as sent)."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class GatewayApp:
    def __init__(
        self,
        config: Config,
        dataplane: DataPlaneLike,
        redis_url: str,
        registry: CollectorRegistry | None = None,
        watch: bool = True,
        upstreams: UpstreamPool | None = None,
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
            lambda: self.dataplane.analyses,
            lambda: self.dataplane.phases,
            lambda: self.dataplane.notifications,
        )
        self.registry.register(self.rollout_collector)
        self.pool = upstreams or UpstreamPool()  # in-process: UpstreamPool(MockTransport(...))
        self.circuits = Circuits({}, self.metrics.circuit)
        fb = config.spec.feedback
        self.records = PredictionRecords(config.spec.redis_prefix, fb.ttl_seconds, fb.sample_rate)
        self.dispatch = Dispatcher(
            self.pool, self.circuits, self.metrics, dataplane.recorder, self.records
        )
        self.records_collector = RecordsCollector(lambda: self.records.dropped)
        self.registry.register(self.records_collector)
        self.endpoints_collector = EndpointsCollector(self.pool.endpoint_states)
        self.registry.register(self.endpoints_collector)
        self.bodies = BodyBudget(
            config.spec.limits.buffered_body_bytes, config.spec.limits.body_timeout_seconds
        )
        self.tokens = FeedbackTokens()
        self.feedback_bearer: str | None = None
        self.feedback = FeedbackIntake(self.records, self.tokens, dataplane.recorder, self.metrics)
        self.mirror = Mirror(self.dispatch, self.metrics, config.spec.mirror_max_inflight)
        self.watcher = (
            ConfigWatcher(config.source, self._reload) if watch and config.source else None
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.random
        self._started = False
        self.config_error: str | None = None  # why the file on disk is not what serves
        self._held_cache: frozenset[str] = frozenset()
        self._held_for: tuple[Mapping[str, float] | None, Config | None] = (None, None)
        # The fixed endpoints: path -> (methods, handler). Configured routes may not take these
        # paths (config.spec.RESERVED_PATHS).
        self._fixed: dict[str, tuple[frozenset[str], Endpoint]] = {
            FEEDBACK_PATH: (frozenset({"POST"}), self._feedback_http),
            HEALTH_PATH: (frozenset({"GET", "HEAD"}), self._healthz),
            READY_PATH: (frozenset({"GET", "HEAD"}), self._readyz),
            METRICS_PATH: (frozenset({"GET", "HEAD"}), self._metrics),
        }
        # The v2 protocol's health and model metadata endpoints, while a route speaks it.
        self._v2: dict[str, tuple[frozenset[str], Endpoint]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def startup(self) -> None:
        self._apply(self.config)
        self.metrics.reload(True, time.time())
        self.redis = open_client(self.redis_url, timeout_s=1.0)
        await self.dataplane.start(self.config)
        self._background(self._flush_records())
        self._background(self._flush_metrics())
        if not self.tokens.ready:
            # Start-up may wait a moment for the key, so the first answers can be recorded.
            task = asyncio.create_task(self._share_token_key())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)
            if not task.done():
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
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
        self.metrics.flush()  # with --workers N, into the files a sibling's scrape reads
        await self.dataplane.stop()
        if self.redis is not None:
            with contextlib.suppress(RedisError, OSError):
                await self.records.flush(self.redis)
            await self.redis.aclose()
        self.pool.close()

    def _apply(self, config: Config) -> None:
        fb = config.spec.feedback
        secret = read_secret(fb.secret_env, "feedback.secret_env") if fb.secret_env else None
        bearer = (
            read_secret(fb.bearer_token_env, "feedback.bearer_token_env")
            if fb.bearer_token_env
            else None
        )
        self.pool.configure(dict(config.variants))
        if secret is not None:
            self.tokens.set_key(secret.encode())
        self.feedback_bearer = bearer
        self.circuits.configure({n: v.circuit for n, v in config.variants.items()})
        self.mirror.max_inflight = config.spec.mirror_max_inflight
        self.records.configure(config.spec.redis_prefix, fb.ttl_seconds, fb.sample_rate)
        self.bodies.budget_bytes = config.spec.limits.buffered_body_bytes
        self.bodies.timeout_s = config.spec.limits.body_timeout_seconds
        self._v2 = self._v2_endpoints(config)
        self._one_protocol = frozenset(
            path
            for path, r in config.routes.items()
            if all(config.variants[v].protocol == r.protocol for v in r.policy.leaves())
        )
        self.config = config

    def _v2_endpoints(self, config: Config) -> dict[str, tuple[frozenset[str], Endpoint]]:
        models = {model_of(r.path) for r in config.routes.values() if r.protocol == PROTOCOL}
        if not models:
            return {}
        get = frozenset({"GET", "HEAD"})

        async def ready(scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
            # The protocol's health answers are the status alone, with an empty body.
            return (200 if self._started else 503), b"", _JSON

        out: dict[str, tuple[frozenset[str], Endpoint]] = {
            HEALTH_READY_PATH: (get, ready),
            HEALTH_LIVE_PATH: (get, self._empty_ok),
        }
        for model in sorted(m for m in models if m is not None):
            doc = orjson.dumps(model_metadata(model, "lvm-gateway"))

            async def metadata(
                scope: Scope, receive: Receive, doc: bytes = doc
            ) -> tuple[int, bytes, bytes]:
                return 200, doc, _JSON

            out[f"/v2/models/{model}"] = (get, metadata)
            out[f"/v2/models/{model}/ready"] = (get, ready)
        return out

    async def _empty_ok(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        return 200, b"", _JSON

    async def _flush_records(self) -> None:
        """Prediction records reach Redis within ~100 ms; while Redis is down they wait, bounded."""
        assert self.redis is not None
        failing = False
        while True:
            await pause(0.1)
            try:
                await self.records.flush(self.redis)
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                if not failing:
                    log.warning("prediction records not flushed, will retry: %s", exc)
                failing = True
                await pause(1.0)
                continue
            failing = False

    async def _flush_metrics(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            self.metrics.flush()

    async def _share_token_key(self) -> None:
        """Every replica signs feedback tokens with one random key, created once in Redis. Until
        Redis answers no token can be issued, so no answer is recorded for feedback."""
        assert self.redis is not None
        key_name = self.records.keys.feedback_key
        backoff = 0.1
        while not self.tokens.ready:
            try:
                await self.redis.set(key_name, os.urandom(32).hex(), nx=True)
                key = await self.redis.get(key_name)
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                log.debug("feedback token key waits for Redis: %s", exc)
                await pause(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if key is not None:
                self.tokens.set_key(binary(key))

    async def _reload(self, path: str) -> None:
        try:
            config = load_config(path)
            self._apply(config)  # all or nothing: the upstream pool swaps in one assignment
        except Exception as exc:  # whatever an edit does, the last good config serves
            self.metrics.reload(False, time.time())
            errors = (
                exc.errors if isinstance(exc, ConfigError) else [f"{type(exc).__name__}: {exc}"]
            )
            self.config_error = "; ".join(errors)
            log.error(
                "config reload rejected, still serving %s: %s",
                self.config.digest,
                self.config_error,
            )
            return
        self.config_error = None
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
        headers = _request_headers(scope)
        gateway_id = new_gateway_id()
        request_id = gateway_id  # what the client sees: its own X-Request-Id when it sent one
        variant = "none"
        extra: Headers = ()
        try:
            cid = client_id(headers.get("x-request-id"))
            request_id = cid or gateway_id
            if scope["method"] not in route.methods:
                allowed = ", ".join(sorted(route.methods))
                extra += ((b"allow", allowed.encode()),)
                raise BadRequestError(
                    f"{scope['method']} not allowed on {path}; use {allowed}", status=405
                )
            limits = self.config.spec.limits
            length = self._streams(route, headers)
            reader = (
                self.bodies.stream(
                    receive, limits.max_body_bytes, length, whole=length <= WHOLE_MAX_BYTES
                )
                if length
                else self.bodies.read(receive, limits.max_body_bytes)
            )
            async with reader as body:
                status, payload, ctype, variant, passed, recorded = await self._proxy(
                    route, scope, headers, body, gateway_id, cid
                )
            extra += passed
            if recorded and status == 200:
                extra += ((b"x-feedback-token", self.tokens.issue(gateway_id).encode()),)
        except BadRequestError as exc:
            self.metrics.bad_request(path)
            status, payload = _json(
                exc.status, {"error": exc.code, "message": str(exc), "request_id": request_id}
            )
            ctype = _JSON
            if exc.status == 503:
                extra += ((b"retry-after", b"1"),)
        except Exception:  # never a 500: a bug here is logged loudly and answered as a 502
            log.exception("unexpected error proxying %s", path)
            status, payload = _internal_error(request_id=request_id)
            ctype = _JSON
        extra += ((b"x-request-id", request_id.encode()), (b"x-variant", variant.encode()))
        await _respond(send, status, payload, ctype, extra)
        self.metrics.request(path, variant, status, time.perf_counter() - started)

    def _streams(self, route: Route, headers: dict[str, str]) -> int:
        """The body's length when it is streamed to the upstream as it arrives, else 0.

        Streamed: an LVM JSON route (a v2 request's JSON object is read before routing) whose
        variants all speak it (a translation needs the whole body), a Content-Length body over
        STREAM_MIN_BYTES, and no policy on the route that needs the body given these headers
        (context_length without X-Context-Length, tmd without X-TMD-*). Retries, fallbacks and
        mirrored copies replay the chunks held (bodies.StreamedBody), so they need no buffer of
        their own; the memory budget is charged the same either way. Up to WHOLE_MAX_BYTES the
        chunks are all received before the first upstream write (still unjoined)."""
        raw = headers.get("content-length")
        if raw is None or "transfer-encoding" in headers or route.protocol == PROTOCOL:
            return 0
        try:
            length = int(raw)
        except ValueError:
            return 0
        if length <= STREAM_MIN_BYTES or route.path not in self._one_protocol:
            return 0
        return 0 if route.policy.needs_body(headers) else length

    async def _proxy(
        self,
        route: Route,
        scope: Scope,
        headers: dict[str, str],
        body: bytes | StreamedBody,
        gateway_id: str,
        cid: str | None,
    ) -> tuple[int, bytes, bytes, str, Headers, bool]:
        """(status, body, content type, serving variant, end-to-end response headers, answer
        recorded for feedback)."""
        request_id = cid or gateway_id
        oip = None
        if route.protocol == PROTOCOL:
            assert isinstance(body, bytes)  # v2 bodies are read whole (_streams)
            oip = parse_request_head(body, headers.get(HEADER_LENGTH))
            if route.inspect and PREDICTED not in oip.outputs:
                raise BadRequestError(
                    f"this route inspects predictions: outputs must include {PREDICTED}"
                )
        weights = self.dataplane.weights
        view = RoutingView(
            weights=weights,
            shadow=self.dataplane.shadow,
            open_circuits=self.circuits.open_set(),
            held=self._held(weights),
            inflight=self.dispatch.inflight,
            draw=self._random(),
            mirror_draw=self._random(),
        )
        request = RequestInfo(headers, b"" if isinstance(body, StreamedBody) else body, oip)
        decision = route.policy.decide(request, view)
        client = scope.get("client")
        inspected = route.inspect or decision.fanout  # a mixture reads its experts' answers
        peer = client[0] if client else None
        scheme = scope.get("scheme", "http")  # optional in ASGI
        forward = upstream_request_headers(headers, peer, scheme, request_id, inspected)
        query = f"?{scope['query_string'].decode()}" if scope["query_string"] else ""
        record = route.inspect and self.tokens.ready and self.records.sampled(gateway_id)
        lane = request.lane() if route.inspect else None
        lane_of = None
        if route.inspect and isinstance(body, StreamedBody):
            # The body's TMD code is known once its edges arrived: read then, not now.
            lane_of = functools.partial(_edge_lane, headers, body)
        call = Call(
            route.path + query,
            body,
            forward,
            gateway_id,
            lane,
            cid,
            record,
            scope["method"],
            route.protocol,
            oip,
            model_of(route.path) or "",
            query,
            lane_of=lane_of,
            retry=route.retry,
        )
        if decision.diverted is not None:
            self.dispatch.divert(decision.diverted, call.lane)
        if decision.mirror is not None:
            self.mirror.submit(decision.mirror, call)
        served = decision.variant
        try:
            resp = await self.dispatch.serve(decision, call, served=True)
        except UpstreamError as exc:
            fallback = decision.fallback if route.fallback else None
            if fallback is None:
                status, payload = error_body(exc, request_id)
                return status, payload, _JSON, served, (), False
            self.metrics.fallback(route.path, served, fallback)
            served = fallback
            try:
                resp = await self.dispatch.serve(Decision(fallback), call, served=True)
            except UpstreamError as exc2:
                status, payload = error_body(exc2, request_id)
                return status, payload, _JSON, served, (), False
        ctype = resp.content_type.encode() or _JSON
        return resp.status, resp.body, ctype, served, resp.headers, record

    def _held(self, weights: Mapping[str, float]) -> frozenset[str]:
        """The variants a rollout holds at weight 0; recomputed only when the weights mapping
        (swapped whole by the snapshot) or the config changes."""
        seen_weights, seen_config = self._held_for
        if weights is not seen_weights or self.config is not seen_config:
            held: set[str] = set()
            for route in self.config.routes.values():
                if route.rollout is not None and weights.get(route.rollout, 0.0) == 0.0:
                    held |= route.canary_leaves - {route.stable}
            self._held_cache = frozenset(held)
            self._held_for = (weights, self.config)
        return self._held_cache

    # -- fixed endpoints ---------------------------------------------------------------------

    async def _fixed_endpoint(self, path: str, scope: Scope, receive: Receive, send: Send) -> None:
        entry = self._fixed.get(path) or self._v2.get(path)
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
        try:
            status, body, ctype = await handler(scope, receive)
        except Exception:  # never a 500: a bug here is logged loudly and answered as a 502
            log.exception("unexpected error answering %s", path)
            status, body = _internal_error()
            ctype = _JSON
        await _respond(send, status, body, ctype, ())

    async def _feedback_http(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        assert self.redis is not None
        headers = _request_headers(scope)
        try:
            if self.feedback_bearer is not None and not hmac.compare_digest(
                headers.get("authorization", ""), f"Bearer {self.feedback_bearer}"
            ):
                raise BadRequestError("POST /v1/feedback needs its bearer token", status=401)
            limit = self.config.spec.limits.feedback_body_bytes
            async with self.bodies.read(receive, limit) as body:
                status, payload = await self.feedback.receive(
                    self.redis, body, headers.get("x-feedback-token"), self.config.spec.feedback
                )
        except BadRequestError as exc:
            self.metrics.feedback("rejected")
            status, payload = exc.status, {"error": exc.code, "message": str(exc)}
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
        self.metrics.flush()
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
        merged.register(self.endpoints_collector)
        return merged

    async def _readyz(self, scope: Scope, receive: Receive) -> tuple[int, bytes, bytes]:
        # Degraded still serves (last known weights, last good config), so it stays in rotation;
        # the reasons say what an operator should look at.
        if not self._started:
            return 503, b'{"status":"starting"}', _JSON
        connected = self.dataplane.connected
        reasons = [] if connected else [f"redis unreachable: routing by {self.dataplane.routing}"]
        if not self.tokens.ready:
            reasons.append("no feedback token key yet: answers are not recorded for feedback")
        if self.config_error is not None:
            reasons.append(
                f"config stale: {self.config.source} failed to load: {self.config_error}"
            )
        status, body = _json(200, {
            "status": "degraded" if reasons else "ready",
            "redis": "connected" if connected else "unreachable",
            "config": self.config.digest,
            "config_stale": self.config_error is not None,
            "reasons": reasons,
        })  # fmt: skip
        return status, body, _JSON


def _edge_lane(headers: dict[str, str], body: StreamedBody) -> str:
    return RequestInfo(headers, body.edges(TMD_SCAN_BYTES)).lane()


async def _respond(send: Send, status: int, body: bytes, ctype: bytes, extra: Headers) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})

"""The request path in-process: the ASGI app, dispatch, upstream pool and mirror, driven by ASGI
messages, with a fake control plane behind the gateway's protocols and a real loopback upstream
(an aiohttp server on 127.0.0.1). No process is started."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web

from lvm_gateway.config.load import Config, parse_config
from lvm_gateway.contract.windows import COUNTERS, EMPTY, ERRORS, INVALID, REQUESTS, lane_field
from lvm_gateway.gateway.app import GatewayApp

DIM = 768
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # the unit tests never need Redis


class FakeRecorder:
    """The window recorder protocol, keeping every count in memory."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def record_request(
        self, variant: str, latency_s: float, error: bool, lane: str | None = None
    ) -> None:
        self.incr(variant, REQUESTS, lane=lane)
        if error:
            self.incr(variant, ERRORS, lane=lane)

    def incr(self, variant: str, metric: str, n: int = 1, lane: str | None = None) -> None:
        self.counts[(variant, metric)] += n
        if lane is not None:
            self.counts[(variant, lane_field(metric, lane))] += n


@dataclass
class FakeControlPlane:
    """The DataPlaneLike protocol: weights the test sets, a recorder the test reads."""

    weights: Mapping[str, float] = field(default_factory=dict)
    shadow: Mapping[str, float] = field(default_factory=dict)
    connected: bool = True
    phases: Mapping[str, str] = field(default_factory=dict)
    notifications: Mapping[tuple[str, str, str], int] = field(default_factory=dict)
    recorder: FakeRecorder = field(default_factory=FakeRecorder)
    configs: list[Config] = field(default_factory=list)

    async def start(self, config: Config) -> None:
        self.configs.append(config)

    async def on_config(self, config: Config) -> None:
        self.configs.append(config)

    async def stop(self) -> None:
        return None


def prediction(value: float = 1.0, best: float = 0.9) -> dict[str, Any]:
    vec = [0.0] * DIM
    vec[0] = value
    return {"predicted_vector": vec, "neighbors": [{"id": "c1", "score": best}]}


@dataclass
class Upstream:
    url: str
    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)


async def start_upstream(name: str) -> tuple[web.AppRunner, Upstream]:
    """A model server double on loopback whose behaviour the request picks (X-Mode)."""
    up = Upstream("")

    async def infer(request: web.Request) -> web.Response:
        body = await request.read()
        up.seen.append((request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        mode = request.headers.get("X-Mode", "ok")
        if mode == "500":
            return web.json_response({"error": "boom"}, status=500)
        if mode == "nan":
            text = orjson.dumps(prediction()).decode().replace("1.0", "NaN", 1)
            return web.Response(body=text.encode(), content_type="application/json")
        best = 0.1 if mode == "empty" else 0.9
        doc = {**prediction(best=best), "model_type": name}
        return web.json_response(doc, dumps=lambda d: orjson.dumps(d).decode())

    app = web.Application()
    app.router.add_post("/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    up.url = f"http://127.0.0.1:{port}"
    return runner, up


@pytest.fixture
async def upstreams() -> AsyncIterator[dict[str, Upstream]]:
    started = [await start_upstream(n) for n in ("phase1", "phase2")]
    yield {"phase1": started[0][1], "phase2": started[1][1]}
    for runner, _ in started:
        await runner.cleanup()


def config(upstreams: dict[str, Upstream], policy: Any, **extra: Any) -> Config:
    doc = {
        "variants": {n: {"url": u.url, "timeout_ms": 2000} for n, u in upstreams.items()},
        "routes": [{"path": "/infer", "policy": policy}],
        "rollouts": {"phase2": {"route": "/infer"}},
        **extra,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(doc)))


CANARY = {"canary": {"stable": "phase1", "canary": "phase2", "weight": 0}}


@pytest.fixture
async def app(upstreams: dict[str, Upstream]) -> AsyncIterator[tuple[GatewayApp, FakeControlPlane]]:
    cp = FakeControlPlane()
    gw = GatewayApp(config(upstreams, CANARY), cp, UNREACHABLE_REDIS, watch=False)
    await gw.startup()
    yield gw, cp
    await gw.shutdown()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def asgi(app: GatewayApp, method: str, path: str, body: bytes = b"", **headers: str) -> Reply:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()],
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, *rest = sent
    return Reply(
        start["status"],
        {k.decode(): v.decode() for k, v in start["headers"]},
        b"".join(m.get("body", b"") for m in rest),
    )


BODY = orjson.dumps({"context_vectors": [[0.1] * DIM]})


async def test_the_control_planes_weight_routes_and_the_lane_header_is_counted(app) -> None:
    gw, cp = app
    r = await asgi(gw, "POST", "/infer", BODY, x_tmd_domain="3")
    assert r.status == 200 and r.headers["x-variant"] == "phase1"
    cp.weights = {"phase2": 100.0}
    r = await asgi(gw, "POST", "/infer", BODY, x_tmd_domain="3")
    assert r.status == 200 and r.headers["x-variant"] == "phase2"
    assert r.json()["model_type"] == "phase2"
    # Routed by X-TMD-Domain, counted under the same lane.
    assert cp.recorder.counts[("phase2", lane_field(REQUESTS, "lane_3"))] == 1
    assert cp.recorder.counts[("phase1", lane_field(REQUESTS, "lane_3"))] == 1
    assert cp.recorder.counts[("phase2", lane_field(REQUESTS, "none"))] == 0


async def test_the_body_lane_is_found_without_headers(app) -> None:
    gw, cp = app
    body = orjson.dumps({"context_vectors": [[0.1] * DIM], "tmd_codes": [12, 1, 2]})
    assert (await asgi(gw, "POST", "/infer", body)).status == 200
    assert cp.recorder.counts[("phase1", lane_field(REQUESTS, "lane_12"))] == 1


async def test_a_failing_canary_is_answered_by_stable_and_counted_against_the_canary(
    app,
) -> None:
    gw, cp = app
    cp.weights = {"phase2": 100.0}
    r = await asgi(gw, "POST", "/infer", BODY, x_mode="nan")
    # NaN from phase2: invalid, fallback to phase1 whose answer (also NaN) fails too -> 502.
    assert r.status == 502 and r.json()["error"]
    assert cp.recorder.counts[("phase2", INVALID)] == 1
    assert cp.recorder.counts[("phase2", ERRORS)] == 1
    r = await asgi(gw, "POST", "/infer", BODY, x_mode="empty")
    assert r.status == 200
    assert cp.recorder.counts[("phase2", EMPTY)] == 1


async def test_a_shadow_step_mirrors_a_copy_that_the_user_never_sees(app, upstreams) -> None:
    gw, cp = app
    cp.shadow = {"phase2": 100.0}
    r = await asgi(gw, "POST", "/infer", BODY, x_request_id="abc")
    assert r.status == 200 and r.headers["x-variant"] == "phase1"
    for _ in range(200):  # the copy is a detached task: wait for it to be answered and counted
        if cp.recorder.counts[("phase2", REQUESTS)]:
            break
        await asyncio.sleep(0.01)
    (path, headers, body) = upstreams["phase2"].seen[0]
    assert path == "/infer" and body == BODY
    assert headers["x-mirror"] == "1" and headers["x-request-id"] == "abc"
    assert cp.recorder.counts[("phase2", REQUESTS)] == 1


async def test_fixed_endpoints_answer_only_their_methods(app) -> None:
    gw, _ = app
    assert (await asgi(gw, "GET", "/healthz")).status == 200
    r = await asgi(gw, "POST", "/metrics")
    assert r.status == 405 and r.headers["allow"] == "GET, HEAD"
    r = await asgi(gw, "GET", "/v1/feedback")
    assert r.status == 405 and r.headers["allow"] == "POST"
    r = await asgi(gw, "GET", "/infer")
    assert r.status == 405 and r.headers["allow"] == "POST"
    r = await asgi(gw, "GET", "/nowhere")
    assert r.status == 404 and r.json()["routes"] == ["/infer"]
    metrics = (await asgi(gw, "GET", "/metrics")).body.decode()
    assert "lvmgw_prediction_records_dropped_total 0.0" in metrics


async def test_a_malformed_feedback_is_a_400_before_any_redis_call(app) -> None:
    gw, _ = app
    r = await asgi(gw, "POST", "/v1/feedback", b"{not json")
    assert r.status == 400 and "not valid JSON" in r.json()["message"]


async def test_every_counter_the_data_plane_writes_is_one_the_contract_names(app) -> None:
    gw, cp = app
    cp.weights = {"phase2": 50.0}
    for mode in ("ok", "nan", "empty", "500"):
        for i in range(4):
            await asgi(gw, "POST", "/infer", BODY, x_mode=mode, x_user_id=f"u{i}")
    written = {name.split("@", 1)[0] for _, name in cp.recorder.counts}
    assert written and written <= COUNTERS
    assert not math.isnan(sum(cp.recorder.counts.values()))

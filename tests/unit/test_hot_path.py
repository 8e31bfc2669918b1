"""The request path in-process: the ASGI app, dispatch, upstream pool and mirror, driven by ASGI
messages, with a fake control plane behind the gateway's protocols and a real loopback upstream
(an aiohttp server on 127.0.0.1). No process is started."""

from __future__ import annotations

import asyncio
import inspect
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
from lvm_gateway.config.spec import RetrySpec
from lvm_gateway.contract.windows import COUNTERS, EMPTY, ERRORS, INVALID, REQUESTS, lane_field
from lvm_gateway.gateway.app import GatewayApp
from lvm_gateway.gateway.dispatch import Call

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
    routing: str = "redis"
    analyses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
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
        # Tokens signed with a configured secret: no Redis is needed for the shared key.
        "feedback": {"secret_env": "LVMGW_TEST_FEEDBACK_SECRET"},
        **extra,
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(doc)))


@pytest.fixture(autouse=True)
def _feedback_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVMGW_TEST_FEEDBACK_SECRET", "unit-test-secret")


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
    assert 'lvmgw_upstream_endpoint_up{endpoint="http://127.0.0.1:' in metrics


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


OVERRIDE = {"header": {"header": "X-Variant", "default": CANARY}}


async def test_no_client_can_override_to_a_canary_its_rollout_holds_at_zero(
    upstreams, monkeypatch
) -> None:
    cp = FakeControlPlane(weights={"phase2": 0.0})  # e.g. rolled back
    gw = GatewayApp(config(upstreams, OVERRIDE), cp, UNREACHABLE_REDIS, watch=False)
    await gw.startup()
    r = await asgi(gw, "POST", "/infer", BODY, x_variant="phase2")
    assert r.status == 403 and "held at weight 0" in r.json()["message"]
    assert (await asgi(gw, "POST", "/infer", BODY, x_variant="phase1")).status == 200
    cp.weights = {"phase2": 20.0}  # the rollout lets users on it: overrides may follow
    r = await asgi(gw, "POST", "/infer", BODY, x_variant="phase2")
    assert r.status == 200 and r.headers["x-variant"] == "phase2"
    # With a token configured, every override needs it, held or not.
    monkeypatch.setenv("OVERRIDE_TOKEN", "s3cret")
    guarded = {"header": {"header": "X-Variant", "token_env": "OVERRIDE_TOKEN", "default": CANARY}}
    await gw.shutdown()
    gw = GatewayApp(config(upstreams, guarded), cp, UNREACHABLE_REDIS, watch=False)
    await gw.startup()
    assert (await asgi(gw, "POST", "/infer", BODY, x_variant="phase1")).status == 403
    r = await asgi(gw, "POST", "/infer", BODY, x_variant="phase2", x_override_token="wrong")
    assert r.status == 403 and "X-Override-Token" in r.json()["message"]
    r = await asgi(gw, "POST", "/infer", BODY, x_variant="phase2", x_override_token="s3cret")
    assert r.status == 200 and r.headers["x-variant"] == "phase2"
    await gw.shutdown()


async def test_a_recorded_answer_carries_a_token_that_verifies(app) -> None:
    gw, _ = app
    gw.records.configure("p", 60, 1.0)  # record every answer
    r = await asgi(gw, "POST", "/infer", BODY, x_request_id="trace-me")
    assert r.status == 200 and r.headers["x-request-id"] == "trace-me"
    gateway_id = gw.tokens.verify(r.headers["x-feedback-token"])
    assert gateway_id != "trace-me"
    record = await gw.records.fetch(_NoRedis(), gateway_id)
    assert record is not None and record.client_id == "trace-me"


class _NoRedis:
    """Records still in the local buffer are found without a Redis round trip."""

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return {}


async def test_the_controllers_evidence_is_exported_per_rollout_and_test(app) -> None:
    gw, cp = app
    cp.analyses = {
        "phase2": {
            "evidence": [
                {"test": "error_rate", "canary": 0.02, "baseline": 0.001, "difference": 0.019,
                 "lower": 0.012, "upper": 0.026, "statistic": 4.1, "threshold": 3.2,
                 "margin": 0.005, "standing": "harm"},
                {"test": "lane_hit5@lane_3", "canary": None, "baseline": None,
                 "difference": None, "lower": None, "upper": None, "statistic": None,
                 "threshold": None, "margin": 0.15, "standing": "insufficient"},
            ]
        }
    }  # fmt: skip
    text = (await asgi(gw, "GET", "/metrics")).body.decode()
    assert 'lvmgw_rollout_analysis_difference{rollout="phase2",test="error_rate"} 0.019' in text
    assert 'lvmgw_rollout_analysis_interval_lower{rollout="phase2",test="error_rate"} 0.012' in text
    harm = 'lvmgw_rollout_analysis_standing{rollout="phase2",standing="harm",test="error_rate"} 1.0'
    assert harm in text
    assert 'test="lane_hit5@lane_3"} 0.15' in text  # its margin, with no estimate yet
    assert 'lvmgw_rollout_analysis_estimate{rollout="phase2",test="lane_hit5@lane_3"}' not in text


async def test_a_fixed_endpoint_that_fails_answers_502_not_500(app) -> None:
    gw, _ = app

    def broken() -> Mapping[str, str]:
        raise RuntimeError("a collector bug")

    gw.rollout_collector.phases = broken
    r = await asgi(gw, "GET", "/metrics")
    assert r.status == 502 and r.json()["error"] == "gateway_error"
    assert (await asgi(gw, "GET", "/healthz")).status == 200


def test_a_mirrored_call_keeps_every_field_but_its_headers() -> None:
    """`Call.mirrored` lists the constructor's arguments by hand (a compiled class cannot be
    copied generically): a field added to Call and not to the copy fails here."""
    call = Call(
        "/infer?x=1", b"{}", {"x-request-id": "r1"}, "gw1", "lane_3", "c1", True, "PUT",
        "oip-v2", None, "lvm", "?x=1", lambda: "lane_4", RetrySpec(attempts=2),
    )  # fmt: skip
    call.translated["lvm-json"] = (b"{}", {})
    copy = call.mirrored()
    assert copy.headers == {"x-request-id": "r1", "x-mirror": "1"}
    assert call.headers == {"x-request-id": "r1"}
    # Its attributes, compiled or not (a compiled class has no __slots__ to read).
    fields = [n for n, v in vars(Call).items() if inspect.isdatadescriptor(v) and n[0] != "_"]
    assert len(fields) == 15
    for name in fields:
        if name != "headers":
            assert getattr(copy, name) is getattr(call, name), name

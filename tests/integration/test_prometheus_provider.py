"""Prometheus as a metric provider, against a real Prometheus (Debian's package) scraping a real
`lvm-gateway serve` on loopback, whose in-process controller queries it each interval."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from lvm_gateway.contract.rollout import Phase, ProviderMetric, RolloutStatus
from lvm_gateway.procs import free_port, start, stop, wait_http
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.analysis import Verdict
from lvm_gateway.rollout.providers import measure
from tests.integration.gateway_env import Gateway, gateway, infer_body, model_servers
from tests.rolloutkit import rollout_store

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None:
    pytest.skip(
        "the prometheus binary is missing (Debian package `prometheus`; .ci/run installs it)",
        allow_module_level=True,
    )

# A variant's request rate and the canary's p95, as Prometheus computes them from /metrics.
RATE = 'sum(rate(lvmgw_requests_total{variant="{{%s}}"}[10s]))'
P95 = (
    "histogram_quantile(0.95, sum by (le) "
    '(rate(lvmgw_request_duration_seconds_bucket{variant="{{canary}}"}[10s])))'
)
BODY = infer_body()


def policy(prefix: str, servers: dict[str, str], prom: str, metrics: list[dict[str, Any]]) -> str:
    provided = [
        {k: v for k, v in m.items() if k != "query"}
        | {"provider": {"prometheus": {"address": prom, "query": m["query"]}}}
        for m in metrics
    ]
    return yaml.safe_dump({
        "redis_prefix": prefix,
        "variants": {name: {"url": url} for name, url in servers.items()},
        "routes": [{"path": "/infer", "fallback": False, "policy": {"canary": {
            "stable": "phase1", "canary": "phase2", "weight": 0,
            "sticky": {"header": "X-User-Id"}}}}],
        "rollouts": {"phase2": {
            "route": "/infer", "steps": [50, 100], "step_min_seconds": 1,
            "interval_seconds": 0.5, "min_requests": 5, "failure_limit": 2,
            "success": {"error_rate_max": 0.5}, "rollback": {"error_rate_max": 0.9},
            "metrics": provided,
        }},
    }, sort_keys=False)  # fmt: skip


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    with model_servers({"phase1": ["phase1"], "phase2": ["phase2"]}) as urls:
        yield urls


@contextmanager
def stack(
    redis_url: str, servers: dict[str, str], tmp: Path, metrics: list[dict[str, Any]]
) -> Iterator[tuple[Gateway, str]]:
    """A gateway whose rollout queries a Prometheus that scrapes that gateway every second."""
    port = free_port()
    prom = f"http://127.0.0.1:{port}"
    prefix = f"p{uuid.uuid4().hex[:8]}"
    with gateway(policy(prefix, servers, prom, metrics), redis_url, tmp) as gw:
        config = tmp / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "lvm-gateway",
                                "static_configs": [{"targets": [gw.url.removeprefix("http://")]}]}],
        }))  # fmt: skip
        proc = start(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            log=tmp / "prometheus.log",
        )  # fmt: skip
        try:
            wait_http(f"{prom}/-/ready", 30, proc)
            gw.wait_until(lambda: scraped(prom), 15)
            yield gw, prom
        finally:
            stop(proc)


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    doc = httpx.get(f"{prom}/api/v1/query", params={"query": promql}, timeout=2).json()
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def scraped(prom: str) -> bool:
    return any(r["value"][1] == "1" for r in query(prom, "up"))


async def drive(gw: Gateway, redis_url: str, within_s: float) -> RolloutStatus:
    """Start the rollout and send traffic (many users) until it settles or time runs out."""
    async with (
        rollout_store(redis_url, gw.config) as store,
        httpx.AsyncClient(base_url=gw.url, timeout=5) as http,
    ):
        await ops.start(store, "phase2", "test")
        deadline = time.monotonic() + within_s
        user = 0
        while time.monotonic() < deadline:
            await asyncio.gather(*(
                http.post("/infer", content=BODY, headers={
                    "content-type": "application/json", "X-User-Id": f"u{user + j}"})
                for j in range(8)
            ))  # fmt: skip
            user += 8
            status = await store.get("phase2")
            if status.phase not in (Phase.PROGRESSING, Phase.PAUSED):
                return status
            await asyncio.sleep(0.05)
        return await store.get("phase2")


async def history(redis_url: str, gw: Gateway) -> list[dict[str, Any]]:
    async with rollout_store(redis_url, gw.config) as store:
        return await store.history("phase2")


def metric(name: str, query: str, **bounds: float) -> dict[str, Any]:
    return {"name": name, "query": query, **bounds}


async def test_queries_substitute_names_and_reduce_to_one_number(
    redis_url: str, redis_client: redis.Redis, servers: dict[str, str], tmp_path: Path
) -> None:
    with stack(redis_url, servers, tmp_path, []) as (gw, prom):
        status = RolloutStatus(name="phase2", stable="phase1", canary="phase2")

        def spec(name: str, query: str, address: str = prom) -> ProviderMetric:
            return ProviderMetric.model_validate({
                "name": name, "rollback_max": 1000.0,
                "provider": {"prometheus": {"address": address, "query": query}},
            })  # fmt: skip

        dead = f"http://127.0.0.1:{free_port()}"
        deadline = time.monotonic() + 15
        while True:
            for _ in range(10):  # to the stable variant: the canary's weight is 0
                gw.infer(headers={"X-User-Id": "someone"})
            stable, canary, many, gone = await measure([
                spec("stable_rps", RATE % "stable"), spec("canary_rps", RATE % "canary"),
                spec("many", "up or vector(1)"), spec("gone", "vector(1)", dead),
            ], status)  # fmt: skip
            if stable.value or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert stable.value is not None and stable.value > 0 and stable.verdict == Verdict.PASS
    # {{canary}} became "phase2", which served nothing: no number, so no verdict either way.
    assert (canary.value, canary.verdict) == (None, Verdict.INSUFFICIENT)
    assert many.verdict == Verdict.INSUFFICIENT and "2 series" in (many.where or "")
    assert gone.verdict == Verdict.INSUFFICIENT and "unreachable" in (gone.where or "")


async def test_a_breaching_prometheus_metric_rolls_the_canary_back(
    redis_url: str, redis_client: redis.Redis, servers: dict[str, str], tmp_path: Path
) -> None:
    # Any canary traffic at all breaches: the point is that Prometheus's number decides.
    rps = metric("canary_rps", RATE % "canary", success_max=0.0005, rollback_max=0.001)
    with stack(redis_url, servers, tmp_path, [rps]) as (gw, _):
        done = await drive(gw, redis_url, 25)
        events = await history(redis_url, gw)
    assert done.phase == Phase.ROLLED_BACK, done
    assert "canary_rps" in done.reason and "2 consecutive" in done.reason
    assert events[-1]["metrics"]["canary_rps"] > 0.001


async def test_a_healthy_prometheus_metric_lets_the_canary_be_promoted(
    redis_url: str, redis_client: redis.Redis, servers: dict[str, str], tmp_path: Path
) -> None:
    p95 = metric("canary_p95_seconds", P95, success_max=0.05, rollback_max=0.1)
    with stack(redis_url, servers, tmp_path, [p95]) as (gw, prom):
        done = await drive(gw, redis_url, 30)
        events = await history(redis_url, gw)
        # The gateway exports the phase the alerts and the dashboard read.
        promoted = 'lvmgw_rollout_phase{rollout="phase2",phase="Promoted"} == 1'
        gw.wait_until(lambda: bool(query(prom, promoted)), 10)
    assert done.phase == Phase.PROMOTED, done
    judged = [e["metrics"] for e in events if e["actor"] == "controller" and e["metrics"]]
    assert judged and all(0 < m["canary_p95_seconds"] <= 0.05 for m in judged)

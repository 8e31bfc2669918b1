"""Metrics measured outside the gateway: a rollout's `metrics:` entries, queried each interval.

    metrics:
      - name: p99_latency
        provider:
          prometheus:
            address: http://prometheus:9090
            query: histogram_quantile(0.99, sum by (le) (rate(
                     lvmgw_request_duration_seconds_bucket{variant="{{canary}}"}[2m])))
        success_max: 0.05
        rollback_max: 0.1

The controller calls `measure` before each analysis (the I/O lives here) and hands the results
to `reconcile(..., extra=...)`, where they are judged with the built-in metrics: a breach counts
toward failure_limit, a miss of the success bound holds, and no number at all (an empty result,
an unreachable Prometheus, a query that returns several series) holds the rollout like thin
traffic does, until max_hold_seconds pauses it. The query must reduce to one number.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

import httpx

from lvm_gateway.contract.rollout import ProviderMetric, RolloutStatus
from lvm_gateway.rollout.analysis import MetricResult, Verdict, violates

log = logging.getLogger(__name__)


class ProviderError(Exception):
    """The provider gave no single number; the message says why (for logs and `where`)."""


def promql_string(value: str) -> str:
    """`value` safe inside a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(query: str, status: RolloutStatus) -> str:
    names = {"canary": status.canary or "", "stable": status.stable or "", "rollout": status.name}
    for key, value in names.items():
        query = query.replace("{{" + key + "}}", promql_string(value))
    return query


async def query_prometheus(
    http: httpx.AsyncClient, address: str, query: str, timeout_s: float
) -> float | None:
    """One instant query reduced to one number; None for an empty result or NaN."""
    try:
        response = await http.get(
            f"{address}/api/v1/query", params={"query": query}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        raise ProviderError(f"prometheus unreachable: {type(exc).__name__}") from exc
    try:
        doc = response.json()
    except ValueError:
        raise ProviderError(f"prometheus answered HTTP {response.status_code}, not JSON") from None
    if doc.get("status") != "success":
        raise ProviderError(f"prometheus: {doc.get('errorType')}: {doc.get('error')}")
    data = doc["data"]
    if data["resultType"] == "scalar":
        raw = data["result"][1]
    elif data["resultType"] == "vector":
        if not data["result"]:
            return None
        if len(data["result"]) > 1:
            raise ProviderError(f"{len(data['result'])} series; aggregate the query to one")
        raw = data["result"][0]["value"][1]
    else:
        raise ProviderError(f"a {data['resultType']} result; use an instant vector or scalar")
    value = float(raw)
    return None if math.isnan(value) else value


def judge(metric: ProviderMetric, value: float | None, where: str | None = None) -> MetricResult:
    """The built-in metrics' rule, with one sample needed: the number or nothing."""
    kind = metric.kind
    ok, bad = metric.bound("success", kind), metric.bound("rollback", kind)
    if value is None:
        verdict = Verdict.INSUFFICIENT
    elif bad is not None and violates(value, kind, bad):
        verdict = Verdict.BREACH
    elif ok is not None and violates(value, kind, ok):
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.PASS
    samples = 0 if value is None else 1
    return MetricResult(metric.name, kind, value, samples, 1, ok, bad, verdict, where)


async def measure(
    metrics: Iterable[ProviderMetric], status: RolloutStatus
) -> tuple[MetricResult, ...]:
    """Every provider metric of a rollout, queried concurrently and judged."""
    metrics = tuple(metrics)
    if not metrics:
        return ()
    async with httpx.AsyncClient() as http:

        async def one(metric: ProviderMetric) -> MetricResult:
            prom = metric.provider.prometheus
            try:
                value = await query_prometheus(
                    http, prom.address, render(prom.query, status), prom.timeout_seconds
                )
            except ProviderError as exc:
                log.warning("rollout %s: metric %s: %s", status.name, metric.name, exc)
                return judge(metric, None, str(exc))
            return judge(metric, value)

        return tuple(await asyncio.gather(*(one(m) for m in metrics)))

"""The hot path's metric tallies reach prometheus_client as if each value had been observed."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from lvm_gateway.gateway.metrics import LATENCY_BUCKETS, MetricsRecorder


def _samples(registry: CollectorRegistry, prefix: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name.startswith(prefix)
    }


def test_flushed_histograms_equal_observed_ones() -> None:
    """Values on bucket bounds, between them, past the last and at zero land where
    prometheus_client's observe() puts them, and the sums agree."""
    rng = random.Random(7)
    values = [*LATENCY_BUCKETS, 0.0, 12.5, 1e-9, *(rng.uniform(0, 0.2) for _ in range(500))]
    registry = CollectorRegistry()
    metrics = MetricsRecorder(registry)
    reference = CollectorRegistry()
    expected = Histogram(
        "lvmgw_upstream_duration_seconds", "", ["variant"], buckets=LATENCY_BUCKETS,
        registry=reference,
    )  # fmt: skip
    for i, v in enumerate(values):
        metrics.upstream("a", v)
        expected.labels("a").observe(v)
        if i == 100:
            metrics.flush()  # tallies add up across flushes
    metrics.flush()
    got = _samples(registry, "lvmgw_upstream_duration_seconds")
    want = _samples(reference, "lvmgw_upstream_duration_seconds")
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_request_tallies_wait_for_flush() -> None:
    registry = CollectorRegistry()
    metrics = MetricsRecorder(registry)
    for status in (200, 200, 502):
        metrics.request("/infer", "canary", status, 0.003)
    metrics.empty_hit("canary", "1-2-3")
    assert "lvmgw_requests_total{" not in generate_latest(registry).decode()
    metrics.flush()
    metrics.flush()  # nothing new: nothing added twice
    value = registry.get_sample_value
    assert (
        value("lvmgw_requests_total", {"route": "/infer", "variant": "canary", "status": "200"})
        == 2
    )
    assert (
        value("lvmgw_requests_total", {"route": "/infer", "variant": "canary", "status": "502"})
        == 1
    )
    assert (
        value(
            "lvmgw_request_duration_seconds_bucket",
            {"route": "/infer", "variant": "canary", "le": "0.005"},
        )
        == 3
    )
    assert value("lvmgw_empty_hits_total", {"variant": "canary", "lane": "1-2-3"}) == 1

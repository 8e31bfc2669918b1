"""Provider metrics (a rollout's `metrics:`): their validation, query templating and verdicts."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from lvm_gateway.contract.rollout import ProviderMetric, RolloutSpec, RolloutStatus
from lvm_gateway.rollout.analysis import Verdict
from lvm_gateway.rollout.providers import judge, render

PROM = {"prometheus": {"address": "http://prom:9090/", "query": "up"}}


def metric(**fields: Any) -> ProviderMetric:
    return ProviderMetric.model_validate({"name": "m", "provider": PROM, **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "at least one bound"),
        ({"success_max": 1, "rollback_min": 0}, "one side"),
        ({"success_max": 2, "rollback_max": 1}, "rollback_max (1) must be >= success_max (2)"),
        ({"success_min": 1, "rollback_min": 2}, "rollback_min (2) must be <= success_min (1)"),
        ({"name": "p95_ms", "rollback_max": 1}, "built-in metric"),
        ({"name": "p99 latency", "rollback_max": 1}, "pattern"),
        ({"rollback_max": 1, "provider": {"prometheus": {"address": "prom:9090", "query": "up"}}},
         "not an http(s) URL"),
    ],
)  # fmt: skip
def test_a_provider_metric_names_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        metric(**fields)


def test_metric_names_are_unique_within_a_rollout() -> None:
    doc = {"name": "m", "provider": PROM, "rollback_max": 1}
    with pytest.raises(ValidationError, match="unique"):
        RolloutSpec.model_validate({"route": "/infer", "metrics": [doc, doc]})


def test_placeholders_become_escaped_names() -> None:
    status = RolloutStatus(name="r1", stable="phase1", canary='odd"name\\')
    query = 'x{variant="{{canary}}", other="{{stable}}", rollout="{{rollout}}"}'
    assert render(query, status) == 'x{variant="odd\\"name\\\\", other="phase1", rollout="r1"}'
    assert metric(rollback_max=1).provider.prometheus.address == "http://prom:9090"


@pytest.mark.parametrize(
    ("bounds", "value", "verdict"),
    [
        ({"success_max": 0.05, "rollback_max": 0.1}, 0.01, Verdict.PASS),
        ({"success_max": 0.05, "rollback_max": 0.1}, 0.07, Verdict.FAIL),
        ({"success_max": 0.05, "rollback_max": 0.1}, 0.2, Verdict.BREACH),
        ({"success_min": 0.6, "rollback_min": 0.5}, 0.4, Verdict.BREACH),
        ({"success_min": 0.6}, 0.61, Verdict.PASS),
        ({"rollback_max": 0.1}, None, Verdict.INSUFFICIENT),
    ],
)
def test_a_number_is_judged_like_the_built_in_metrics(
    bounds: dict[str, float], value: float | None, verdict: Verdict
) -> None:
    result = judge(metric(**bounds), value)
    assert result.verdict == verdict
    assert (result.samples, result.needed) == ((0, 1) if value is None else (1, 1))

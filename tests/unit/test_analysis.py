"""Pure analysis: metrics from merged windows, verdicts per bound, certain breaches on thin data."""

from __future__ import annotations

import pytest

from lvm_gateway.rollout.analysis import METRICS, Verdict, analyse
from lvm_gateway.rollout.observations import (
    LATENCY_BOUNDS_MS,
    Observations,
    VariantWindow,
    latency_field,
    quantile_ms,
)
from lvm_gateway.rollout.spec import RolloutSpec, Thresholds


def window(n: int, errors: int = 0, latency_ms: float = 1.0) -> VariantWindow:
    counts = {"n": n, "err": errors, latency_field(latency_ms / 1000): n} if n else {}
    return VariantWindow(counts)


def spec(**kw: object) -> RolloutSpec:
    return RolloutSpec.model_validate({"route": "/infer", "min_requests": 100, **kw})


def verdicts(obs: Observations, s: RolloutSpec) -> dict[str, Verdict]:
    return {r.metric: r.verdict for r in analyse(obs, s).results}


def test_every_threshold_key_names_a_registered_metric() -> None:
    for key in Thresholds.model_fields:
        metric, kind = key.rsplit("_", 1)
        assert kind in ("max", "min")
        assert metric in METRICS, key


def test_healthy_canary_passes() -> None:
    a = analyse(Observations(canary=window(500, 0, 2.0)), spec())
    assert a.passed and not a.breached and not a.insufficient
    assert a.values()["error_rate"] == 0.0
    assert 1.5 < a.values()["p95_ms"] <= 2.0


def test_between_success_and_rollback_is_fail_not_breach() -> None:
    v = verdicts(Observations(canary=window(500, 0, 7.0)), spec())
    assert v == {"p95_ms": Verdict.FAIL, "error_rate": Verdict.PASS}


def test_rollback_bound_breached() -> None:
    a = analyse(Observations(canary=window(500, 10, 20.0)), spec())
    assert {r.metric for r in a.breached} == {"p95_ms", "error_rate"}
    assert "p95_ms" in a.breached[0].describe() or "error_rate" in a.breached[0].describe()


def test_thin_data_is_insufficient() -> None:
    a = analyse(Observations(canary=window(50, 0, 2.0)), spec())
    assert a.insufficient and not a.passed and not a.breached
    assert set(verdicts(Observations(canary=window(50)), spec()).values()) == {Verdict.INSUFFICIENT}


def test_thin_data_with_a_certain_breach_is_a_breach() -> None:
    # 5 errors in 50 requests: even if the next 50 all succeed, 5/100 > 1%.
    v = verdicts(Observations(canary=window(50, 5, 2.0)), spec())
    assert v["error_rate"] == Verdict.BREACH
    # 50 slow requests: even padded with 50 fast ones the p95 stays above 10 ms.
    v = verdicts(Observations(canary=window(50, 0, 40.0)), spec())
    assert v["p95_ms"] == Verdict.BREACH
    # ... but 3 slow requests among 50 could still be diluted below 5%.
    obs = Observations(canary=VariantWindow({"n": 50, latency_field(0.04): 3,
                                             latency_field(0.001): 47}))  # fmt: skip
    assert verdicts(obs, spec())["p95_ms"] == Verdict.INSUFFICIENT


def test_no_traffic_and_no_guard_is_insufficient_not_pass() -> None:
    assert verdicts(Observations(), spec(min_requests=0))["p95_ms"] == Verdict.INSUFFICIENT


def test_unset_bounds_are_not_judged() -> None:
    s = spec(success={"p95_ms_max": 5}, rollback={"p95_ms_max": 10})
    assert set(verdicts(Observations(canary=window(500)), s)) == {"p95_ms"}


def test_min_bound_metric_plugs_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new metric needs a registered function and a threshold field, nothing else."""
    from lvm_gateway.rollout import analysis

    monkeypatch.setitem(
        analysis.METRICS,
        "hit5",
        analysis.Metric(
            "hit5",
            "",
            lambda o, pad: (
                (o.canary.get("hit5") + pad) / (o.canary.get("fb") + pad)
                if o.canary.get("fb") + pad
                else None
            ),
            lambda o: o.canary.get("fb"),
        ),
    )

    class Quality(Thresholds):
        hit5_min: float | None = None

    s = spec().model_copy(
        update={"success": Quality(hit5_min=0.6), "rollback": Quality(hit5_min=0.55)}
    )
    good = VariantWindow({"n": 500, "fb": 200, "hit5": 130})
    bad = VariantWindow({"n": 500, "fb": 200, "hit5": 100})
    meh = VariantWindow({"n": 500, "fb": 200, "hit5": 115})
    assert verdicts(Observations(canary=good), s) == {"hit5": Verdict.PASS}
    assert verdicts(Observations(canary=bad), s) == {"hit5": Verdict.BREACH}
    assert verdicts(Observations(canary=meh), s) == {"hit5": Verdict.FAIL}


def test_quantile_from_histogram_interpolates_and_merges() -> None:
    a = VariantWindow({"n": 90, latency_field(0.001): 90})
    b = VariantWindow({"n": 10, latency_field(0.050): 10})
    merged = a.merged(b.counts)
    assert merged.requests == 100
    p95 = quantile_ms(merged.histogram(), 0.95)
    assert p95 is not None and 40 < p95 <= 50
    assert quantile_ms(a.histogram(), 0.5) is not None
    assert quantile_ms([0] * len(merged.histogram()), 0.95) is None
    over = VariantWindow({latency_field(99.0): 1})
    assert quantile_ms(over.histogram(), 0.95) == LATENCY_BOUNDS_MS[-1]


def test_latency_field_edges() -> None:
    assert latency_field(0.0) == "lat:0"
    assert latency_field(0.00025) == "lat:0"  # upper bounds are inclusive
    assert latency_field(0.000251) == "lat:1"
    assert latency_field(1e9) == f"lat:{len(LATENCY_BOUNDS_MS)}"

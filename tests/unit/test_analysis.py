"""Pure analysis: metrics from merged windows, verdicts per bound, certain breaches on thin data."""

from __future__ import annotations

import pytest

from lvm_gateway.contract.rollout import RolloutSpec, Thresholds
from lvm_gateway.contract.windows import LATENCY_BOUNDS_MS, latency_field
from lvm_gateway.rollout.analysis import (
    LANE_GUARD_ALPHA,
    LANE_GUARD_TAU,
    METRICS,
    Verdict,
    analyse,
)
from lvm_gateway.rollout.observations import Observations, VariantWindow, quantile_ms
from lvm_gateway.rollout.stats import compare


def window(n: int, errors: int = 0, latency_ms: float = 1.0) -> VariantWindow:
    counts = {"n": n, "err": errors, latency_field(latency_ms / 1000): n} if n else {}
    return VariantWindow(counts)


LATENCY_ONLY = {
    "success": {"p95_ms_max": 5, "error_rate_max": 0.001},
    "rollback": {"p95_ms_max": 10, "error_rate_max": 0.01},
}


# These tests exercise the SLO guards alone; the judge (canary vs stable) is off.
GUARDS_ONLY = {"judge": {"margins": {}}}


def spec(**kw: object) -> RolloutSpec:
    return RolloutSpec.model_validate(
        {"route": "/infer", "min_requests": 100, **LATENCY_ONLY, **GUARDS_ONLY, **kw}
    )


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
    a = analyse(Observations(canary=window(500, 50, 20.0)), spec())
    assert {r.metric for r in a.breached} == {"p95_ms", "error_rate"}
    assert "p95_ms" in a.breached[0].describe() or "error_rate" in a.breached[0].describe()


def test_past_the_rollback_bound_within_noise_is_fail_not_breach() -> None:
    # 2% errors in 500 requests is past the 1% limit, but sampling noise could explain it at
    # some look of a long rollout: hold (and pause if it lasts), no rollback on chance.
    assert verdicts(Observations(canary=window(500, 10)), spec())["error_rate"] == Verdict.FAIL
    # The same rate over 20,000 requests is evidence.
    assert verdicts(Observations(canary=window(20_000, 400)), spec())["error_rate"] == (
        Verdict.BREACH
    )


def test_thin_data_is_insufficient() -> None:
    a = analyse(Observations(canary=window(50, 0, 2.0)), spec())
    assert a.insufficient and not a.passed and not a.breached
    assert set(verdicts(Observations(canary=window(50)), spec()).values()) == {Verdict.INSUFFICIENT}


def test_thin_data_with_a_certain_breach_is_a_breach() -> None:
    # 25 errors in 50 requests: even if the next 50 all succeed, 25/100 > 1%, and 50% errors
    # on 50 requests is beyond noise.
    v = verdicts(Observations(canary=window(50, 25, 2.0)), spec())
    assert v["error_rate"] == Verdict.BREACH
    # 5 in 50 would also end above 1% at 100 requests, but 10% on 50 samples is not evidence
    # of a rate above 1% at every look of a long rollout: wait for the samples.
    v = verdicts(Observations(canary=window(50, 5, 2.0)), spec())
    assert v["error_rate"] == Verdict.INSUFFICIENT
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


QUALITY = {
    "min_feedback": 100,
    "success": {"hit5_min": 0.60, "empty_rate_max": 0.10, "lane_delta_max": 0.15,
                "invalid_rate_max": 0.0},
    "rollback": {"hit5_min": 0.55, "empty_rate_max": 0.20, "lane_delta_max": 0.20,
                 "invalid_rate_max": 0.01},
}  # fmt: skip


def quality(feedback: int, hit5: int, empty: int = 0, invalid: int = 0) -> VariantWindow:
    return VariantWindow({"n": 1000, "feedback": feedback, "hit5": hit5, "empty": empty,
                          "invalid": invalid})  # fmt: skip


def test_quality_metrics_judge_feedback() -> None:
    s = spec(**QUALITY)
    good = verdicts(Observations(canary=quality(200, 130, empty=50)), s)
    assert good == {
        "hit5": Verdict.PASS,
        "empty_rate": Verdict.PASS,
        "lane_delta": Verdict.INSUFFICIENT,  # no lane has feedback on both sides
        "invalid_rate": Verdict.PASS,
    }
    assert verdicts(Observations(canary=quality(200, 115)), s)["hit5"] == Verdict.FAIL
    assert verdicts(Observations(canary=quality(200, 100)), s)["hit5"] == Verdict.FAIL  # noise?
    assert verdicts(Observations(canary=quality(200, 60)), s)["hit5"] == Verdict.BREACH
    assert verdicts(Observations(canary=quality(50, 45)), s)["hit5"] == Verdict.INSUFFICIENT
    # 5 hits in 50 may still end at 55/100, no breach yet; from 4 in 50 it is certain.
    assert verdicts(Observations(canary=quality(50, 5)), s)["hit5"] == Verdict.INSUFFICIENT
    assert verdicts(Observations(canary=quality(50, 4)), s)["hit5"] == Verdict.BREACH
    assert verdicts(Observations(canary=quality(200, 130, empty=400)), s)["empty_rate"] == (
        Verdict.BREACH
    )
    v = verdicts(Observations(canary=quality(200, 130, invalid=5)), s)
    assert v["invalid_rate"] == Verdict.FAIL
    v = verdicts(Observations(canary=quality(200, 130, invalid=50)), s)
    assert v["invalid_rate"] == Verdict.BREACH


def test_lane_delta_compares_each_lane_with_stable() -> None:
    s = spec(**QUALITY)

    def lanes(hits: dict[str, int]) -> VariantWindow:
        counts = {"n": 10_000, "feedback": 4000, "hit5": sum(hits.values())}
        for lane, h in hits.items():
            counts[f"feedback@{lane}"] = 1000
            counts[f"hit5@{lane}"] = h
        return VariantWindow(counts)

    stable = lanes({"lane_0": 600, "lane_1": 600, "lane_2": 600, "lane_3": 600})
    # Overall Hit@5 looks fine (0.6375) but lane_3 is 40% below stable there.
    canary = lanes({"lane_0": 700, "lane_1": 700, "lane_2": 790, "lane_3": 360})
    a = analyse(Observations(canary=canary, stable=stable), s)
    result = {r.metric: r for r in a.results}
    assert result["hit5"].verdict == Verdict.PASS
    assert result["lane_delta"].verdict == Verdict.BREACH
    # 40% below stable on 1,000 feedbacks each, net of noise: the anytime-valid lower bound of
    # the shortfall (Bonferroni over the 16 lanes), relative to stable's rate there.
    ev = compare("lane_3", (360, 1000), (600, 1000), 0.0, LANE_GUARD_ALPHA, LANE_GUARD_TAU,
                 higher_is_worse=False)  # fmt: skip
    assert ev.lower is not None and 0.2 < ev.lower / 0.6 < 0.4
    assert result["lane_delta"].value == pytest.approx(ev.lower / 0.6)
    even = analyse(Observations(canary=stable, stable=stable), s)
    assert {r.metric: r.verdict for r in even.results}["lane_delta"] == Verdict.PASS
    # A 20% raw shortfall on 40 feedbacks a side is within sampling noise: no breach.
    noisy = lanes({"lane_0": 600, "lane_1": 600, "lane_2": 600, "lane_3": 480})
    thin = {k: (v // 25 if "@" in k else v) for k, v in noisy.counts.items()}
    thin_stable = {k: (v // 25 if "@" in k else v) for k, v in stable.counts.items()}
    calm = analyse(Observations(canary=VariantWindow(thin), stable=VariantWindow(thin_stable)), s)
    assert {r.metric: r.value for r in calm.results}["lane_delta"] == 0.0
    # At 100% the stable variant serves no one in the step: quality is judged on the whole
    # rollout's windows, so the per-lane baseline from earlier steps still applies.
    at_full = Observations(
        canary=VariantWindow({"n": 1000}),
        stable=VariantWindow(),
        canary_rollout=canary,
        stable_rollout=stable,
    )
    result = {r.metric: r for r in analyse(at_full, s).results}
    assert result["lane_delta"].value > 0.2
    assert result["lane_delta"].verdict == Verdict.BREACH
    assert result["lane_delta"].where == "lane_3"
    assert result["hit5"].value == pytest.approx(2550 / 4000)


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

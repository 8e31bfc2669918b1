"""The canary-vs-baseline judge inside analyse/reconcile: harm, clearing, holding, lanes, a dead
canary, and the evidence every analysis carries."""

from __future__ import annotations

import pytest

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.contract.windows import LATENCY_BOUNDS_MS, latency_field
from lvm_gateway.errors import InvalidTransitionError
from lvm_gateway.rollout import transitions as t
from lvm_gateway.rollout.analysis import (
    CIRCUIT_OPEN,
    DIVERTED,
    Standing,
    alpha_per_test,
    analyse,
    planned_tests,
    slow_bucket,
)
from lvm_gateway.rollout.observations import Observations, VariantWindow
from lvm_gateway.rollout.reconcile import ActionKind, reconcile

T0 = 2_000_000.0
LATENCY = {"success": {"p95_ms_max": 5, "error_rate_max": 0.001},
           "rollback": {"p95_ms_max": 10, "error_rate_max": 0.01}}  # fmt: skip
SPEC = RolloutSpec.model_validate(
    {"route": "/infer", "steps": [10, 20, 50, 100], "step_min_seconds": 30, "min_requests": 200,
     "max_hold_seconds": 600, **LATENCY}
)  # fmt: skip


def traffic(n: int, errors: int = 0, latency_ms: float = 2.0, **extra: int) -> VariantWindow:
    return VariantWindow({"n": n, "err": errors, latency_field(latency_ms / 1000): n, **extra})


def started(spec: RolloutSpec = SPEC, step: int = 0) -> RolloutStatus:
    s = t.start(RolloutStatus("ro"), spec, "stable", "canary", T0)
    return t.enter_step(s, spec, step, T0, "x") if step else s


def standings(a: object) -> dict[str, Standing]:
    return {j.evidence.test: j.standing for j in a.judgements}  # type: ignore[attr-defined]


def test_tests_follow_the_bounds_and_share_alpha() -> None:
    traffic_tests, feedback, lanes = planned_tests(SPEC)
    assert (traffic_tests, feedback, lanes) == (["error_rate", "slow_rate"], [], False)
    # Bonferroni over 2 traffic tests and 2 guards, each restarting in 4 steps.
    assert alpha_per_test(SPEC, planned_tests(SPEC), 2) == pytest.approx(0.05 / 16)
    full = RolloutSpec(route="/infer")
    assert planned_tests(full) == (
        ["error_rate", "invalid_rate", "empty_rate", "slow_rate"], ["hit1", "hit5", "hit10"], True
    )  # fmt: skip
    off = RolloutSpec.model_validate({**SPEC.model_dump(), "judge": {"margins": {}}})
    assert planned_tests(off) == ([], [], False) and analyse(Observations(), off).judgements == ()


def test_slow_bucket_rounds_the_slo_up_to_a_bucket_edge() -> None:
    assert LATENCY_BOUNDS_MS[slow_bucket(5.0) - 1] == 5.0
    assert LATENCY_BOUNDS_MS[slow_bucket(5.5) - 1] == 6.0


def test_a_canary_worse_than_stable_rolls_back_at_once_with_readable_evidence() -> None:
    # 3% errors against stable's 0.1% over 4,000 requests: harm, no failure_limit to wait out,
    # though the SLO guard alone (1% rollback bound) would also say so two analyses later.
    obs = Observations(canary=traffic(4000, 120), stable=traffic(36000, 36))
    s, action = reconcile(started(), obs, SPEC, T0 + 5)
    assert action.kind == ActionKind.ROLLBACK and s.phase == Phase.ROLLED_BACK
    assert "evidence of harm" in s.reason and "error_rate" in s.reason
    assert action.analysis is not None
    (ev,) = [e for e in action.analysis.evidence() if e["test"] == "error_rate"]
    assert ev["canary"] == pytest.approx(0.03) and ev["baseline"] == pytest.approx(0.001)
    assert ev["lower"] > ev["margin"] and ev["statistic"] > ev["threshold"]
    assert (ev["verdict"], ev["standing"], ev["needed"]) == ("harm", "harm", 200)
    # 0.8% vs 0.01% over 40,000 requests: within the SLO guard's rollback bound, yet harm.
    subtle = analyse(Observations(canary=traffic(40_000, 320), stable=traffic(40_000, 4)), SPEC)
    assert not subtle.breached and [j.evidence.test for j in subtle.harmed] == ["error_rate"]
    with pytest.raises(InvalidTransitionError, match="evidence of harm"):
        t.advance(started(), SPEC, T0, subtle)
    assert t.advance(started(), SPEC, T0, subtle, force=True).step == 1


def test_a_dead_canary_is_rolled_back_not_promoted() -> None:
    # Killed in its last step: its circuit opens and stable absorbs the traffic. The requests
    # it should have served count as its failures...
    last = started(step=3)
    dead = traffic(300, 10, diverted=3000)
    obs = Observations(canary=dead, stable=VariantWindow(), stable_rollout=traffic(50_000, 50))
    s, action = reconcile(last, obs, SPEC, T0 + 60)
    assert s.phase == Phase.ROLLED_BACK
    assert action.analysis is not None and action.analysis.requests == 3300
    assert [j.evidence.test for j in action.analysis.harmed] == ["error_rate"]
    # ... and a diverted request (its circuit open) is a rollback signal by itself, before any
    # rate is evident: the data plane diverts only around an open circuit.
    tripped = Observations(canary=traffic(300, 10, **{DIVERTED: 1}), stable=traffic(2700))
    s, action = reconcile(last, tripped, SPEC, T0 + 5)
    assert action.kind == ActionKind.ROLLBACK and "circuit opened" in s.reason
    assert CIRCUIT_OPEN == DIVERTED


def test_a_suspect_canary_holds_then_pauses_at_the_previous_steps_weight() -> None:
    # 0.7% errors vs 0.1%: past the 0.5-point margin, not (yet) proven.
    obs = Observations(canary=traffic(2000, 14), stable=traffic(8000, 8))
    at_50 = started(step=2)
    held, action = reconcile(at_50, obs, SPEC, T0 + 60)
    assert held is at_50 and action.kind == ActionKind.HOLD
    assert "error_rate suspect" in action.reason
    paused, action = reconcile(at_50, obs, SPEC, T0 + 600)
    assert action.kind == ActionKind.PAUSE
    assert (paused.phase, paused.step, paused.weight) == (Phase.PAUSED, 2, 20.0)
    # The operator resumes: the step's own weight again, a fresh clock.
    resumed = t.resume(paused, SPEC, T0 + 700)
    assert (resumed.phase, resumed.weight, resumed.step_started_at) == (
        Phase.PROGRESSING, 50.0, T0 + 700,
    )  # fmt: skip


def test_pausing_after_a_shadow_step_keeps_mirroring_and_serves_no_one() -> None:
    spec = SPEC.model_copy(update={"steps": ("shadow", 10.0, 100.0), "shadow_percent": 50.0})
    at_10 = started(spec, step=1)
    paused = t.hold_back(at_10, spec, T0 + 1, "why")
    assert (paused.phase, paused.weight, paused.mirror) == (Phase.PAUSED, 0.0, 50.0)


def test_at_full_weight_traffic_is_judged_against_what_stable_did_before() -> None:
    # A few stragglers still reach stable in the step (sticky sessions, retries): too few to
    # judge against, so the baseline is stable's whole rollout.
    for straggling in (VariantWindow(), traffic(17)):
        obs = Observations(
            canary=traffic(40_000, 40), stable=straggling, stable_rollout=traffic(40_000, 40)
        )
        a = analyse(obs, SPEC)
        assert standings(a)["error_rate"] == Standing.CLEAR
        (ev,) = [j.evidence for j in a.judgements if j.evidence.test == "error_rate"]
        assert ev.baseline_samples == 40_000


QSPEC = RolloutSpec.model_validate(
    {"route": "/infer", "steps": [10, 100], "min_requests": 100, "min_feedback": 100,
     "judge": {"lane_min_feedback": 40}}
)  # fmt: skip


def quality(per_lane: dict[str, tuple[int, int]]) -> VariantWindow:
    """(hits, feedback) per lane; totals, Hit@1/10 and a healthy traffic window to go with."""
    counts: dict[str, int] = {"n": 5000, latency_field(0.002): 5000}
    for lane, (hits, fb) in per_lane.items():
        counts[f"hit5@{lane}"], counts[f"feedback@{lane}"] = hits, fb
    for c in ("hit1", "hit5", "hit10", "feedback"):
        src = "hit5" if c.startswith("hit") else "feedback"
        counts[c] = sum(v for k, v in counts.items() if k.startswith(f"{src}@"))
    return VariantWindow(counts)


def test_lanes_without_enough_feedback_block_until_judged_or_waived() -> None:
    stable = quality({"lane_0": (1300, 2000), "lane_1": (130, 200)})
    canary = quality({"lane_0": (1300, 2000), "lane_1": (10, 15)})
    a = analyse(Observations(canary=canary, stable=stable), QSPEC)
    lanes = {k: v for k, v in standings(a).items() if k.startswith("lane_hit5")}
    # lane_1 is short of feedback; lanes nobody asked about are not judged at all.
    assert lanes == {"lane_hit5@lane_0": Standing.CLEAR, "lane_hit5@lane_1": Standing.INSUFFICIENT}
    s, action = reconcile(started(QSPEC), Observations(canary=canary, stable=stable), QSPEC,
                          T0 + 60)  # fmt: skip
    assert action.kind == ActionKind.HOLD and "lane_hit5@lane_1: 15/40 samples" in action.reason
    waived = RolloutSpec.model_validate(
        {**QSPEC.model_dump(), "judge": {"lane_min_feedback": 40, "waive_lanes": ["lane_1"]}}
    )
    s, action = reconcile(started(waived), Observations(canary=canary, stable=stable), waived,
                          T0 + 60)  # fmt: skip
    assert action.kind == ActionKind.ADVANCE, action.reason
    # A waived lane's harm still counts.
    broken = quality({"lane_0": (1300, 2000), "lane_1": (20, 200)})
    s, action = reconcile(started(waived), Observations(canary=broken, stable=stable), waived,
                          T0 + 60)  # fmt: skip
    assert s.phase == Phase.ROLLED_BACK and "lane_hit5@lane_1" in s.reason


def test_waiving_an_unknown_lane_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"unknown lane\(s\) \['lane_16'\]"):
        RolloutSpec.model_validate({"route": "/x", "judge": {"waive_lanes": ["lane_16"]}})

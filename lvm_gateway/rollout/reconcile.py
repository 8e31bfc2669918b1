"""The controller's decision for one rollout at one instant. Pure: no clock, no I/O.

not Progressing                    hold: the controller waits
canary circuit open                RolledBack, weight 0
judge: harm on any test            RolledBack, weight 0 (anytime-valid evidence: no failure_limit)
breach of an SLO guard             failures+1; at failure_limit -> RolledBack, weight 0
thin data (guard or judge test     hold; after max_hold_seconds in the step -> Paused at the
  short of its samples)              previous step's weight ("insufficient traffic")
a suspect test or an unmet         hold; after max_hold_seconds -> Paused at the previous
  success bound                      step's weight: a suspect canary does not keep its users
every guard passes, every judge    next step; after the last step -> Promoted
  test clear, step_min_seconds done
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.rollout.analysis import Analysis, MetricResult, Standing, Verdict, analyse
from lvm_gateway.rollout.observations import Observations
from lvm_gateway.rollout.transitions import enter_step, hold_back, promote, rollback


class ActionKind(StrEnum):
    HOLD = "hold"
    FAILURE = "failure"  # one more breaching analysis, below failure_limit
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    PAUSE = "pause"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    reason: str
    analysis: Analysis | None = None
    metrics: Mapping[str, float | None] = field(default_factory=dict)


def judged(
    observations: Observations, spec: RolloutSpec, extra: tuple[MetricResult, ...] = ()
) -> Analysis:
    """The analysis of the counted metrics plus `extra`: results measured elsewhere (a rollout's
    provider metrics, rollout/providers.py), judged by the same verdicts."""
    analysis = analyse(observations, spec)
    return replace(analysis, results=analysis.results + extra) if extra else analysis


def reconcile(
    status: RolloutStatus,
    observations: Observations,
    spec: RolloutSpec,
    now: float,
    extra: tuple[MetricResult, ...] = (),
) -> tuple[RolloutStatus, Action]:
    if status.phase != Phase.PROGRESSING:
        return status, Action(ActionKind.HOLD, f"{status.phase}: the controller waits")
    analysis = judged(observations, spec, extra)
    metrics = analysis.values()
    metrics["requests"] = analysis.requests

    def act(kind: ActionKind, reason: str) -> Action:
        return Action(kind, reason, analysis, metrics)

    if analysis.circuit_open:
        reason = f"rollback: the canary's circuit opened ({analysis.circuit_open}x in the step)"
        return rollback(status, now, reason), act(ActionKind.ROLLBACK, reason)
    if analysis.harmed:
        reason = "rollback: evidence of harm: " + "; ".join(
            j.evidence.describe() for j in analysis.harmed
        )
        return rollback(status, now, reason), act(ActionKind.ROLLBACK, reason)
    if analysis.breached:
        failures = status.failures + 1
        what = "; ".join(r.describe() for r in analysis.breached)
        if failures >= spec.failure_limit:
            reason = f"rollback: {what} ({failures} consecutive analyses)"
            return rollback(status, now, reason), act(ActionKind.ROLLBACK, reason)
        reason = f"analysis breached {failures}/{spec.failure_limit}: {what}"
        changed = status.evolve(failures=failures, updated_at=now, reason=reason)
        return changed, act(ActionKind.FAILURE, reason)

    base = status.evolve(failures=0, updated_at=now) if status.failures else status
    elapsed = now - (status.step_started_at if status.step_started_at is not None else now)
    timed_out = elapsed >= spec.max_hold_seconds
    short = [j for j in analysis.holding if j.standing == Standing.INSUFFICIENT]
    if analysis.insufficient or short:
        guard = (analysis.requests, analysis.min_requests)
        thin = [f"requests {guard[0]}/{guard[1]}"] if guard[0] < guard[1] else []
        thin += [  # metrics short of their own guard (feedback), not the request count again
            r.describe()
            for r in analysis.results
            if r.verdict == Verdict.INSUFFICIENT and (r.samples, r.needed) != guard
        ]
        thin += [j.describe() for j in short]
        detail = "; ".join(dict.fromkeys(thin))
        if timed_out:
            reason = f"insufficient traffic after {elapsed:.0f}s: {detail}"
            return hold_back(base, spec, now, reason), act(ActionKind.PAUSE, reason)
        return base, act(ActionKind.HOLD, f"waiting for traffic: {detail}")
    if not analysis.passed:
        what = "; ".join(
            [r.describe() for r in analysis.results if r.verdict != Verdict.PASS]
            + [j.describe() for j in analysis.holding]
        )
        if timed_out:
            reason = f"success criteria not met after {elapsed:.0f}s: {what}"
            return hold_back(base, spec, now, reason), act(ActionKind.PAUSE, reason)
        return base, act(ActionKind.HOLD, f"holding: {what}")
    if elapsed < spec.min_seconds(status.step):  # a timed pause step's duration, at least
        wait = spec.min_seconds(status.step) - elapsed
        return base, act(ActionKind.HOLD, f"criteria met; next step in {wait:.0f}s")
    if status.step >= len(spec.steps) - 1:
        reason = "all steps passed: promoted"
        return promote(base, spec, now, reason), act(ActionKind.PROMOTE, reason)
    target = status.step + 1
    reason = f"criteria met for {elapsed:.0f}s: advance to {spec.describe_step(target)}"
    return enter_step(base, spec, target, now, reason), act(ActionKind.ADVANCE, reason)

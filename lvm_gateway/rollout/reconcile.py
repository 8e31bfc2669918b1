"""The controller's decision for one rollout at one instant. Pure: no clock, no I/O.

breach of a rollback bound      failures+1; at failure_limit -> RolledBack, weight 0
thin data (< min samples)       hold; after max_hold_seconds in the step -> Paused
                                ("insufficient traffic"), never a silent advance
success bounds not all met      hold; after max_hold_seconds -> Paused
all met, step_min_seconds done  next step; after the last step -> Promoted
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.rollout.analysis import Analysis, MetricResult, Verdict, analyse
from lvm_gateway.rollout.observations import Observations
from lvm_gateway.rollout.transitions import enter_step, promote, rollback


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
    if analysis.insufficient:
        guard = (analysis.requests, analysis.min_requests)
        thin = [f"requests {guard[0]}/{guard[1]}"] if guard[0] < guard[1] else []
        thin += [  # metrics short of their own guard (feedback), not the request count again
            r.describe()
            for r in analysis.results
            if r.verdict == Verdict.INSUFFICIENT and (r.samples, r.needed) != guard
        ]
        detail = "; ".join(dict.fromkeys(thin))
        if timed_out:
            reason = f"insufficient traffic after {elapsed:.0f}s: {detail}"
            paused = base.evolve(phase=Phase.PAUSED, updated_at=now, reason=reason)
            return paused, act(ActionKind.PAUSE, reason)
        return base, act(ActionKind.HOLD, f"waiting for traffic: {detail}")
    if not analysis.passed:
        what = "; ".join(r.describe() for r in analysis.results if r.verdict != Verdict.PASS)
        if timed_out:
            reason = f"success criteria not met after {elapsed:.0f}s: {what}"
            paused = base.evolve(phase=Phase.PAUSED, updated_at=now, reason=reason)
            return paused, act(ActionKind.PAUSE, reason)
        return base, act(ActionKind.HOLD, f"holding: {what}")
    if elapsed < spec.step_min_seconds:
        wait = spec.step_min_seconds - elapsed
        return base, act(ActionKind.HOLD, f"criteria met; next step in {wait:.0f}s")
    if status.step >= len(spec.steps) - 1:
        reason = "all steps passed: promoted"
        return promote(base, spec, now, reason), act(ActionKind.PROMOTE, reason)
    target = status.step + 1
    reason = f"criteria met for {elapsed:.0f}s: advance to {spec.step_weight(target):g}%"
    return enter_step(base, spec, target, now, reason), act(ActionKind.ADVANCE, reason)

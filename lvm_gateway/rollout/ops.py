"""The operator's verbs as importable async functions over a RolloutStore.

Each verb reads the status, applies the pure transition and writes it with one compare-and-set:
if anything changed the rollout in between, the write fails with ConflictError rather than
acting on a state the operator did not see (two concurrent `advance` never skip a step).
Rollback and pause are the exception: they mean "from whatever state it is in now", so when the
version moved under them (say the controller counted a failed analysis) they re-read and apply
again; the transition itself still refuses what is not allowed from the new state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lvm_gateway.contract.lvm import lane_order
from lvm_gateway.contract.rollout import Actor, Phase, RolloutStatus
from lvm_gateway.contract.windows import DIVERTED, ERRORS, FEEDBACK, REQUESTS
from lvm_gateway.errors import ConflictError
from lvm_gateway.rollout import transitions
from lvm_gateway.rollout.aggregates import observe
from lvm_gateway.rollout.analysis import HIT5, Analysis
from lvm_gateway.rollout.observations import Observations
from lvm_gateway.rollout.providers import measure
from lvm_gateway.rollout.reconcile import judged, reconcile
from lvm_gateway.rollout.store import RolloutStore


async def start(store: RolloutStore, name: str, identity: str = "") -> RolloutStatus:
    reg = await store.registered(name)  # the YAML's spec: start re-seeds its thresholds
    status = await store.get(name)
    new = transitions.start(status, reg.spec, reg.stable, reg.canary, time.time())
    return await store.transition(
        status, new, Actor.OPERATOR, "start", identity, seed_thresholds=reg.spec
    )


async def current_analysis(store: RolloutStore, status: RolloutStatus) -> Analysis | None:
    if status.phase not in transitions.ACTIVE:
        return None
    reg = await store.effective(status.name)
    observations = await observe(store.client, store.prefix, status, time.time())
    return judged(observations, reg.spec, await measure(reg.spec.metrics, status))


async def advance(
    store: RolloutStore,
    name: str,
    to: float | None = None,
    full: bool = False,
    force: bool = False,
    identity: str = "",
) -> RolloutStatus:
    reg = await store.effective(name)
    status = await store.get(name)
    analysis = None if force else await current_analysis(store, status)
    new = transitions.advance(status, reg.spec, time.time(), analysis, to, full, force)
    metrics = analysis.values() if analysis else {}
    return await store.transition(status, new, Actor.OPERATOR, "advance", identity, metrics)


_STOP_ATTEMPTS = 5


async def _stop_moving(
    store: RolloutStore,
    name: str,
    action: str,
    change: Callable[[RolloutStatus, float], RolloutStatus],
    identity: str,
) -> RolloutStatus:
    left = _STOP_ATTEMPTS
    while True:
        status = await store.get(name)
        try:
            return await store.transition(
                status, change(status, time.time()), Actor.OPERATOR, action, identity
            )
        except ConflictError:
            left -= 1
            if not left:
                raise


async def rollback(
    store: RolloutStore, name: str, reason: str | None = None, identity: str = ""
) -> RolloutStatus:
    return await _stop_moving(
        store, name, "rollback", lambda s, now: transitions.rollback(s, now, reason), identity
    )


async def abort(
    store: RolloutStore, name: str, reason: str | None = None, identity: str = ""
) -> RolloutStatus:
    return await _stop_moving(
        store, name, "abort", lambda s, now: transitions.abort(s, now, reason), identity
    )


async def pause(store: RolloutStore, name: str, identity: str = "") -> RolloutStatus:
    return await _stop_moving(store, name, "pause", transitions.pause, identity)


async def resume(store: RolloutStore, name: str, identity: str = "") -> RolloutStatus:
    reg = await store.effective(name)
    status = await store.get(name)
    new = transitions.resume(status, reg.spec, time.time())
    return await store.transition(status, new, Actor.OPERATOR, "resume", identity)


_WAITING = {
    Phase.PENDING: "waiting for `rolloutctl start`",
    Phase.PAUSED: "paused: waiting for `rolloutctl resume` (or advance/rollback)",
    Phase.PROMOTED: "promoted: edit the policy to name the canary stable",
    Phase.ROLLED_BACK: "rolled back: `rolloutctl start` retries from the first step",
    Phase.ABORTED: "aborted: `rolloutctl start` retries from the first step",
}


def _rate(hits: int, feedback: int) -> float | None:
    return hits / feedback if feedback else None


def lane_rows(observations: Observations) -> list[dict[str, Any]]:
    """Per lane: canary traffic and Hit@5 proxy beside the stable variant's on the same lane."""
    canary, stable = observations.canary, observations.stable
    rows = []
    for lane in sorted(canary.lanes() | stable.lanes(), key=lane_order):
        c_hit = _rate(canary.get(HIT5, lane), canary.get(FEEDBACK, lane))
        s_hit = _rate(stable.get(HIT5, lane), stable.get(FEEDBACK, lane))
        rows.append(
            {
                "lane": lane,
                "requests": canary.get(REQUESTS, lane),
                "errors": canary.get(ERRORS, lane),
                "feedback": canary.get(FEEDBACK, lane),
                "hit5": c_hit,
                "stable_feedback": stable.get(FEEDBACK, lane),
                "stable_hit5": s_hit,
                "delta": (s_hit - c_hit) / s_hit if c_hit is not None and s_hit else None,
            }
        )
    return rows


async def describe(store: RolloutStore, name: str) -> dict[str, Any]:
    """The status plus what `status` shows: steps, thresholds, metrics, the expected decision."""
    now = time.time()
    reg = await store.effective(name)
    status = await store.get(name)
    doc = status.to_dict()
    doc["steps"] = list(reg.spec.model_dump(mode="json")["steps"])
    doc["removed"] = name in await store.removed()
    doc["time_in_step"] = (
        now - status.step_started_at
        if status.step_started_at is not None and status.phase in transitions.ACTIVE
        else None
    )
    doc["thresholds"] = reg.spec.tunables()
    doc["metrics"] = []
    doc["evidence"] = []
    doc["lanes"] = []
    doc["diverted"] = 0
    doc["next"] = _WAITING.get(status.phase, "")
    if status.phase in transitions.ACTIVE:
        observations = await observe(store.client, store.prefix, status, now)
        doc["lanes"] = lane_rows(observations)
        # Requests the canary should have served while its circuit was open (errors to it).
        doc["diverted"] = observations.canary.get(DIVERTED)
        probe = status.evolve(phase=Phase.PROGRESSING)
        measured = await measure(reg.spec.metrics, status)
        _, action = reconcile(probe, observations, reg.spec, now, measured)
        if action.analysis is not None:
            doc["requests"] = action.analysis.requests
            doc["metrics"] = [
                {
                    "metric": r.metric,
                    "kind": r.kind,
                    "value": r.value,
                    "samples": r.samples,
                    "needed": r.needed,
                    "success": r.success,
                    "rollback": r.rollback,
                    "verdict": str(r.verdict),
                    "where": r.where,
                }
                for r in action.analysis.results
            ]
            doc["evidence"] = action.analysis.evidence()
        if status.phase == Phase.PROGRESSING:
            doc["next"] = f"{action.kind}: {action.reason}"
    return doc

"""Every way a rollout's status may change, as pure functions of (status, ..., now).

The operator's verbs (start, advance, rollback, pause, resume) raise InvalidTransitionError with
a message that says what to do instead; the controller's moves (reconcile.py) use the same step
helpers, so a step always means the same weight and mirror share whoever takes it.
"""

from __future__ import annotations

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.errors import InvalidTransitionError
from lvm_gateway.rollout.analysis import Analysis

ACTIVE = (Phase.PROGRESSING, Phase.PAUSED)


def enter_step(
    status: RolloutStatus, spec: RolloutSpec, index: int, now: float, reason: str
) -> RolloutStatus:
    shadow = spec.steps[index] == "shadow"
    return status.evolve(
        phase=Phase.PROGRESSING,
        step=index,
        weight=spec.step_weight(index),
        mirror=spec.shadow_percent if shadow else 0.0,
        step_started_at=now,
        updated_at=now,
        failures=0,
        reason=reason,
    )


def promote(status: RolloutStatus, spec: RolloutSpec, now: float, reason: str) -> RolloutStatus:
    return status.evolve(
        phase=Phase.PROMOTED,
        step=len(spec.steps) - 1,
        weight=100.0,
        mirror=0.0,
        step_started_at=now,
        updated_at=now,
        failures=0,
        reason=reason,
    )


def _where(status: RolloutStatus) -> str:
    return f"{status.name} is {status.phase} (step {status.step + 1}, weight {status.weight:g}%)"


def start(
    status: RolloutStatus, spec: RolloutSpec, stable: str | None, canary: str | None, now: float
) -> RolloutStatus:
    if status.phase in ACTIVE:
        raise InvalidTransitionError(
            f"already started: {_where(status)}; use advance, pause/resume or rollback"
        )
    if status.phase == Phase.PROMOTED and status.canary == canary:
        raise InvalidTransitionError(
            f"{status.name} is already Promoted ({canary} serves 100%); edit the policy to name "
            f"{canary} the stable variant and set a new canary before starting again"
        )
    reason = "retry from the first step" if status.phase == Phase.ROLLED_BACK else "started"
    begun = status.evolve(stable=stable, canary=canary, started_at=now)
    return enter_step(begun, spec, 0, now, reason)


def advance(
    status: RolloutStatus,
    spec: RolloutSpec,
    now: float,
    analysis: Analysis | None = None,
    to: float | None = None,
    full: bool = False,
    force: bool = False,
) -> RolloutStatus:
    if status.phase not in ACTIVE:
        hint = {
            Phase.PENDING: "run start first",
            Phase.ROLLED_BACK: "run start to retry it from the first step",
            Phase.PROMOTED: "it already serves 100%",
        }[status.phase]
        raise InvalidTransitionError(f"cannot advance {status.name}: it is {status.phase}; {hint}")
    if not force and analysis is not None and analysis.breached:
        what = "; ".join(r.describe() for r in analysis.breached)
        raise InvalidTransitionError(
            f"refusing to advance {status.name}: rollback threshold breached ({what}); "
            "use --force to override"
        )
    last = len(spec.steps) - 1
    if full or (to is None and status.step >= last):
        return promote(status, spec, now, "advanced to 100% by operator")
    if to is None:
        target = status.step + 1
    else:
        later = [i for i in range(status.step + 1, len(spec.steps)) if spec.step_weight(i) == to]
        if not later or spec.steps[later[0]] == "shadow":
            steps = ", ".join(str(s) if s == "shadow" else f"{s:g}" for s in spec.steps)
            raise InvalidTransitionError(
                f"--to {to:g} is not a later step of {status.name} "
                f"(steps: {steps}; now at step {status.step + 1})"
            )
        target = later[0]
    return enter_step(
        status, spec, target, now, f"advanced by operator to {spec.step_weight(target):g}%"
    )


def rollback(status: RolloutStatus, now: float, reason: str | None = None) -> RolloutStatus:
    if status.phase not in (*ACTIVE, Phase.PROMOTED):
        raise InvalidTransitionError(f"cannot roll back {status.name}: it is {status.phase}")
    return status.evolve(
        phase=Phase.ROLLED_BACK,
        weight=0.0,
        mirror=0.0,
        updated_at=now,
        failures=0,
        reason=reason or "rolled back by operator",
    )


def pause(status: RolloutStatus, now: float, reason: str = "paused by operator") -> RolloutStatus:
    if status.phase != Phase.PROGRESSING:
        raise InvalidTransitionError(f"cannot pause {status.name}: it is {status.phase}")
    return status.evolve(phase=Phase.PAUSED, updated_at=now, reason=reason)


def resume(status: RolloutStatus, now: float) -> RolloutStatus:
    if status.phase != Phase.PAUSED:
        raise InvalidTransitionError(f"cannot resume {status.name}: it is {status.phase}")
    # A fresh step clock: the analysis judges traffic from now on, not the paused stretch.
    return status.evolve(
        phase=Phase.PROGRESSING,
        step_started_at=now,
        updated_at=now,
        failures=0,
        reason="resumed by operator",
    )


def align(
    status: RolloutStatus, stable: str | None, canary: str | None, now: float
) -> RolloutStatus:
    """Follow the policy YAML when it names other variants than the status does.

    A weight only ever applies to the pair it was earned by, so any change of pair returns the
    rollout to Pending at weight 0; a Promoted canary now named stable completes the rollout.
    """
    if (status.stable, status.canary) == (stable, canary):
        return status
    if status.phase == Phase.PENDING:
        return status.evolve(stable=stable, canary=canary, updated_at=now)
    if status.phase == Phase.PROMOTED and status.canary == stable:
        reason = f"promotion complete: the policy names {stable} stable"
    else:
        reason = (
            f"the policy changed {status.stable}->{status.canary} to {stable}->{canary}; "
            "run start to roll out the new pair"
        )
    return status.evolve(
        phase=Phase.PENDING,
        step=-1,
        weight=0.0,
        mirror=0.0,
        stable=stable,
        canary=canary,
        failures=0,
        updated_at=now,
        reason=reason,
    )

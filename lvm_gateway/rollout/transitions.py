"""Every way a rollout's status may change, as pure functions of (status, ..., now).

The operator's verbs (start, advance, rollback, abort, pause, resume) raise
InvalidTransitionError with a message that says what to do instead; the controller's moves
(reconcile.py) use the same step helpers, so a step always means the same weight and mirror
share whoever takes it. Messages number steps from 1, as `rolloutctl status` does; the status
and the history hold the 0-based index.

Pause steps hold the previous step's weight. Entering `{pause: {}}` makes the rollout Paused
until `resume` or `advance` moves past it; `{pause: {duration: D}}` stays Progressing (the
analysis still rolls back on a breach) and advances like any step, once D has passed. Resuming
a rollout paused at either kind moves past it: the operator has seen enough.
"""

from __future__ import annotations

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.errors import InvalidTransitionError
from lvm_gateway.rollout.analysis import Analysis

ACTIVE = (Phase.PROGRESSING, Phase.PAUSED)


def enter_step(
    status: RolloutStatus, spec: RolloutSpec, index: int, now: float, reason: str
) -> RolloutStatus:
    pause = spec.pause_at(index)
    waits = pause is not None and pause.duration is None
    if waits:
        reason = f"{reason}; step {index + 1}: waiting for `rolloutctl resume` (or advance)"
    return status.evolve(
        phase=Phase.PAUSED if waits else Phase.PROGRESSING,
        step=index,
        weight=spec.step_weight(index),
        mirror=spec.step_mirror(index),
        step_started_at=now,
        updated_at=now,
        failures=0,
        reason=reason,
    )


def next_step(status: RolloutStatus, spec: RolloutSpec, now: float, reason: str) -> RolloutStatus:
    """The step after the current one, or Promoted after the last."""
    if status.step >= len(spec.steps) - 1:
        return promote(status, spec, now, reason)
    return enter_step(status, spec, status.step + 1, now, reason)


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


def hold_back(status: RolloutStatus, spec: RolloutSpec, now: float, reason: str) -> RolloutStatus:
    """Paused at the previous step's weight (0 before the first): a canary the judge could not
    clear does not keep the users of the step it failed to earn. `resume` gives them back."""
    previous = status.step - 1
    return status.evolve(
        phase=Phase.PAUSED,
        weight=spec.step_weight(previous) if previous >= 0 else 0.0,
        mirror=spec.step_mirror(previous) if previous >= 0 else 0.0,
        updated_at=now,
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
    retry = status.phase in (Phase.ROLLED_BACK, Phase.ABORTED)
    reason = "retry from the first step" if retry else "started"
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
            Phase.ABORTED: "run start to retry it from the first step",
            Phase.PROMOTED: "it already serves 100%",
        }[status.phase]
        raise InvalidTransitionError(f"cannot advance {status.name}: it is {status.phase}; {hint}")
    if not force and analysis is not None and analysis.breached:
        what = "; ".join(r.describe() for r in analysis.breached)
        raise InvalidTransitionError(
            f"refusing to advance {status.name}: rollback threshold breached ({what}); "
            "use --force to override"
        )
    if not force and analysis is not None and analysis.harmed:
        what = "; ".join(j.evidence.describe() for j in analysis.harmed)
        raise InvalidTransitionError(
            f"refusing to advance {status.name}: evidence of harm ({what}); use --force to override"
        )
    last = len(spec.steps) - 1
    if full or (to is None and status.step >= last):
        return promote(status, spec, now, "advanced to 100% by operator")
    if to is None:
        target = status.step + 1
    else:
        later = [
            i
            for i in range(status.step + 1, len(spec.steps))
            if spec.pause_at(i) is None and spec.steps[i] != "shadow" and spec.step_weight(i) == to
        ]
        if not later:
            steps = ", ".join(spec.describe_step(i) for i in range(len(spec.steps)))
            raise InvalidTransitionError(
                f"--to {to:g} is not a later step of {status.name} "
                f"(steps: {steps}; now at step {status.step + 1})"
            )
        target = later[0]
    return enter_step(
        status, spec, target, now, f"advanced by operator to {spec.describe_step(target)}"
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


def abort(status: RolloutStatus, now: float, reason: str | None = None) -> RolloutStatus:
    """An operator abandons an unfinished rollout: Aborted, every user back on stable. Unlike
    RolledBack it says nobody judged the canary bad; `start` retries it from the first step."""
    if status.phase not in ACTIVE:
        hint = "use rollback to undo a promotion" if status.phase == Phase.PROMOTED else ""
        raise InvalidTransitionError(
            f"cannot abort {status.name}: it is {status.phase}" + (f"; {hint}" if hint else "")
        )
    return status.evolve(
        phase=Phase.ABORTED,
        weight=0.0,
        mirror=0.0,
        updated_at=now,
        failures=0,
        reason=f"aborted: {reason}" if reason else "aborted by operator",
    )


def pause(status: RolloutStatus, now: float, reason: str = "paused by operator") -> RolloutStatus:
    if status.phase != Phase.PROGRESSING:
        raise InvalidTransitionError(f"cannot pause {status.name}: it is {status.phase}")
    return status.evolve(phase=Phase.PAUSED, updated_at=now, reason=reason)


def resume(status: RolloutStatus, spec: RolloutSpec, now: float) -> RolloutStatus:
    if status.phase != Phase.PAUSED:
        raise InvalidTransitionError(f"cannot resume {status.name}: it is {status.phase}")
    if spec.pause_at(status.step) is not None:
        return next_step(status, spec, now, f"resumed by operator past step {status.step + 1}")
    # The step's own weight again (a controller pause held it back at the previous step's).
    if 0 <= status.step < len(spec.steps):
        status = status.evolve(
            weight=spec.step_weight(status.step), mirror=spec.step_mirror(status.step)
        )
    # A fresh step clock: the analysis judges traffic from now on, not the paused stretch.
    return status.evolve(
        phase=Phase.PROGRESSING,
        step_started_at=now,
        updated_at=now,
        failures=0,
        reason="resumed by operator",
    )


def auto_start(status: RolloutStatus, spec: RolloutSpec, now: float) -> RolloutStatus | None:
    """The controller's start of a Pending rollout whose spec says `auto_start`: first
    registered, or returned to Pending because the policy names a new canary (align)."""
    if not spec.auto_start or status.phase != Phase.PENDING:
        return None
    if status.canary is None or status.canary == status.stable:
        return None
    return start(status, spec, status.stable, status.canary, now).evolve(
        reason=f"auto-started: {status.canary} replaces {status.stable}"
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

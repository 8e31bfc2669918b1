"""Operator verbs as pure transitions: allowed moves, refusals with messages that say what to do."""

from __future__ import annotations

import pytest

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.contract.windows import latency_field
from lvm_gateway.errors import InvalidTransitionError
from lvm_gateway.rollout import transitions as t
from lvm_gateway.rollout.analysis import analyse
from lvm_gateway.rollout.observations import Observations, VariantWindow

SPEC = RolloutSpec(route="/infer")
T0 = 5_000.0


def progressing(step: int = 0) -> RolloutStatus:
    s = t.start(RolloutStatus("ro"), SPEC, "a", "b", T0)
    return t.enter_step(s, SPEC, step, T0, "x") if step else s


def test_start_refused_while_active_or_promoted_with_same_canary() -> None:
    with pytest.raises(InvalidTransitionError, match="already started: ro is Progressing"):
        t.start(progressing(), SPEC, "a", "b", T0)
    promoted = t.advance(progressing(), SPEC, T0, full=True)
    with pytest.raises(InvalidTransitionError, match="edit the policy"):
        t.start(promoted, SPEC, "a", "b", T0)
    restarted = t.start(promoted, SPEC, "b", "c", T0 + 1)
    assert (restarted.phase, restarted.step, restarted.stable, restarted.canary) == (
        Phase.PROGRESSING, 0, "b", "c",
    )  # fmt: skip


def test_start_retries_a_rolled_back_rollout_from_the_first_step() -> None:
    rolled = t.rollback(progressing(2), T0 + 1, "bad")
    again = t.start(rolled, SPEC, "a", "b", T0 + 2)
    assert (again.phase, again.step, again.weight) == (Phase.PROGRESSING, 0, 10.0)
    assert again.reason == "retry from the first step"


def test_advance_next_to_and_full() -> None:
    s = progressing()
    assert t.advance(s, SPEC, T0 + 1).step == 1
    assert t.advance(s, SPEC, T0 + 1, to=50).weight == 50.0
    assert t.advance(s, SPEC, T0 + 1, full=True).phase == Phase.PROMOTED
    last = progressing(3)
    assert t.advance(last, SPEC, T0 + 1).phase == Phase.PROMOTED
    with pytest.raises(InvalidTransitionError, match="not a later step"):
        t.advance(progressing(2), SPEC, T0, to=20)
    with pytest.raises(InvalidTransitionError, match="not a later step"):
        t.advance(s, SPEC, T0, to=33)


def test_advance_paused_continues_progressing() -> None:
    paused = t.pause(progressing(), T0 + 1)
    moved = t.advance(paused, SPEC, T0 + 2)
    assert (moved.phase, moved.step) == (Phase.PROGRESSING, 1)


@pytest.mark.parametrize(
    ("phase", "hint"),
    [
        (Phase.PENDING, "start first"),
        (Phase.ROLLED_BACK, "retry"),
        (Phase.PROMOTED, "100%"),
    ],
)
def test_advance_refused_outside_active(phase: Phase, hint: str) -> None:
    with pytest.raises(InvalidTransitionError, match=hint):
        t.advance(progressing().evolve(phase=phase), SPEC, T0)


def test_advance_refused_while_rollback_bound_breached_unless_forced() -> None:
    slow = Observations(canary=VariantWindow({"n": 500, latency_field(0.05): 500}))
    analysis = analyse(slow, SPEC)
    with pytest.raises(InvalidTransitionError, match="--force"):
        t.advance(progressing(), SPEC, T0, analysis)
    assert t.advance(progressing(), SPEC, T0, analysis, force=True).step == 1


def test_rollback_pause_resume() -> None:
    s = progressing(1)
    rolled = t.rollback(s, T0 + 1)
    assert (rolled.phase, rolled.weight, rolled.reason) == (
        Phase.ROLLED_BACK, 0.0, "rolled back by operator",
    )  # fmt: skip
    with pytest.raises(InvalidTransitionError, match="cannot roll back"):
        t.rollback(rolled, T0 + 2)
    with pytest.raises(InvalidTransitionError):
        t.rollback(RolloutStatus("ro"), T0)
    assert t.rollback(t.advance(s, SPEC, T0, full=True), T0 + 1).weight == 0.0
    paused = t.pause(s, T0 + 3)
    assert (paused.phase, paused.weight) == (Phase.PAUSED, 20.0)
    with pytest.raises(InvalidTransitionError, match="cannot pause"):
        t.pause(paused, T0)
    resumed = t.resume(paused, SPEC, T0 + 10)
    assert (resumed.phase, resumed.step_started_at, resumed.failures) == (
        Phase.PROGRESSING, T0 + 10, 0,
    )  # fmt: skip
    with pytest.raises(InvalidTransitionError, match="cannot resume"):
        t.resume(resumed, SPEC, T0)


def test_align_follows_the_policy() -> None:
    s = progressing(1)
    assert t.align(s, "a", "b", T0) is s
    changed = t.align(s, "a", "c", T0)
    assert (changed.phase, changed.weight, changed.canary) == (Phase.PENDING, 0.0, "c")
    promoted = t.advance(s, SPEC, T0, full=True)
    done = t.align(promoted, "b", "d", T0)
    assert done.phase == Phase.PENDING and "promotion complete" in done.reason
    pending = t.align(RolloutStatus("ro"), "a", "b", T0)
    assert (pending.stable, pending.canary, pending.reason) == ("a", "b", "")


def test_status_round_trips_through_a_dict() -> None:
    s = progressing(2).evolve(version=7)
    assert RolloutStatus.from_dict(s.to_dict()) == s
    assert s.same_state(s.evolve(version=8, updated_at=1.0))
    assert not s.same_state(s.evolve(weight=1.0))

"""The Argo-like lifecycle, pure: durations, pause steps, abort, auto-start, diverted requests."""

from __future__ import annotations

import pytest

from lvm_gateway.config.load import parse_config
from lvm_gateway.contract.rollout import (
    Phase,
    RolloutSpec,
    RolloutStatus,
    format_duration,
    parse_duration,
)
from lvm_gateway.contract.windows import DIVERTED, latency_field
from lvm_gateway.errors import ConfigError, InvalidTransitionError
from lvm_gateway.rollout import transitions as t
from lvm_gateway.rollout.analysis import Verdict, analyse
from lvm_gateway.rollout.observations import Observations, VariantWindow
from lvm_gateway.rollout.reconcile import ActionKind, reconcile

T0 = 1_000_000.0
LATENCY_ONLY = {
    "success": {"p95_ms_max": 5, "error_rate_max": 0.001},
    "rollback": {"p95_ms_max": 10, "error_rate_max": 0.01},
}
SPEC = RolloutSpec.model_validate({
    "route": "/infer",
    "steps": ["shadow", {"pause": {}}, 10, {"pause": {"duration": "1h"}}, 50, 100],
    "step_min_seconds": 30,
    "max_hold_seconds": 7200,
    "min_requests": 100,
    **LATENCY_ONLY,
})  # fmt: skip


def healthy(n: int = 500) -> Observations:
    counts = VariantWindow({"n": n, latency_field(0.002): n})
    return Observations(canary=counts, stable=counts)


def started(spec: RolloutSpec = SPEC) -> RolloutStatus:
    return t.start(RolloutStatus("ro"), spec, "a", "b", T0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("2d", 172_800),
        ("1.5h", 5400),
        (90, 90),
        ("600", 600),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["1w", "h", "-5s", "5 m m", "", True, -1, None, "1h30m", "5 s"])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)


def test_durations_format_in_their_largest_exact_unit() -> None:
    assert [format_duration(s) for s in (3600, 90, 86_400, 120, 1.5)] == [
        "1h", "90s", "1d", "2m", "1.5s",
    ]  # fmt: skip


def test_pause_steps_hold_the_previous_weight_and_mirror() -> None:
    n = len(SPEC.steps)
    assert [SPEC.step_weight(i) for i in range(n)] == [0, 0, 10, 10, 50, 100]
    assert [SPEC.step_mirror(i) for i in range(n)] == [100, 100, 0, 0, 0, 0]
    assert [SPEC.min_seconds(i) for i in range(n)] == [30, 30, 30, 3600, 30, 30]
    assert SPEC.describe_step(1) == "pause at shadow until resumed"
    assert SPEC.describe_step(3) == "pause 1h at 10%"
    # The stored spec (JSON) reads back the same.
    assert RolloutSpec.model_validate(SPEC.model_dump(mode="json")) == SPEC


def test_pause_step_errors_carry_their_path() -> None:
    doc = {
        "variants": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
        "routes": [{"path": "/infer", "policy": {"canary": {"stable": "a", "canary": "b"}}}],
    }

    def errors(steps: list[object]) -> list[str]:
        with pytest.raises(ConfigError) as exc:
            parse_config({**doc, "rollouts": {"lvm": {"route": "/infer", "steps": steps}}})
        return exc.value.errors

    assert errors([10, {"pause": {"duration": "1w"}}, 100]) == [
        "rollouts.lvm.steps[1].pause.duration: invalid duration '1w': a number of seconds or "
        "<number><s|m|h|d>, e.g. 30s, 5m, 1h, 2d"
    ]
    assert errors([10, {"pause": {"wait": 1}}, 100]) == [
        "rollouts.lvm.steps[1].pause.wait: unknown key"
    ]
    assert errors([10, "half", 100]) == [
        "rollouts.lvm.steps[1]: 'half' is not a step: give a percent, 'shadow', {pause: {}} or "
        "{pause: {duration: 1h}}"
    ]
    assert errors([10, 50, {"pause": {}}]) == [
        "rollouts.lvm.steps: the last weight step must be 100"
    ]
    # A pause after the last weight step is fine: it holds 100% until resumed.
    RolloutSpec.model_validate({"route": "/x", "steps": [50, 100, {"pause": {}}]})


def test_indefinite_pause_step_waits_for_resume_and_resume_moves_past_it() -> None:
    shadow = started()
    assert (shadow.phase, shadow.step, shadow.mirror) == (Phase.PROGRESSING, 0, 100)
    # The controller advances out of the shadow step into the pause: Paused, shadow kept.
    new, action = reconcile(shadow, healthy(), SPEC, T0 + 31)
    assert action.kind == ActionKind.ADVANCE
    assert (new.phase, new.step, new.weight, new.mirror) == (Phase.PAUSED, 1, 0, 100)
    assert "waiting for `rolloutctl resume`" in new.reason
    # Paused: the controller waits, however healthy and however long.
    assert reconcile(new, healthy(), SPEC, T0 + 10**6)[0] is new
    resumed = t.resume(new, SPEC, T0 + 100)
    assert (resumed.phase, resumed.step, resumed.weight, resumed.mirror) == (
        Phase.PROGRESSING, 2, 10, 0,
    )  # fmt: skip
    assert resumed.step_started_at == T0 + 100
    # advance moves past it too.
    assert t.advance(new, SPEC, T0 + 100).step == 2


def test_timed_pause_step_advances_after_its_duration_and_still_rolls_back() -> None:
    at_pause = t.enter_step(started(), SPEC, 3, T0, "x")
    assert (at_pause.phase, at_pause.weight) == (Phase.PROGRESSING, 10)
    held, action = reconcile(at_pause, healthy(), SPEC, T0 + 3599)
    assert action.kind == ActionKind.HOLD and "next step in 1s" in action.reason
    moved, action = reconcile(held, healthy(), SPEC, T0 + 3600)
    assert action.kind == ActionKind.ADVANCE and (moved.step, moved.weight) == (4, 50)
    # A breach during the pause still counts towards rollback.
    slow = VariantWindow({"n": 500, latency_field(0.05): 500})
    _, action = reconcile(at_pause, Observations(canary=slow), SPEC, T0 + 10)
    assert action.kind == ActionKind.FAILURE


def test_resume_after_an_operator_pause_keeps_the_step() -> None:
    at_ten = t.enter_step(started(), SPEC, 2, T0, "x")
    resumed = t.resume(t.pause(at_ten, T0 + 5), SPEC, T0 + 50)
    assert (resumed.step, resumed.weight, resumed.step_started_at) == (2, 10, T0 + 50)


def test_advance_to_names_weight_steps_only() -> None:
    s = t.enter_step(started(), SPEC, 2, T0, "x")
    assert t.advance(s, SPEC, T0, to=50).step == 4
    with pytest.raises(InvalidTransitionError, match="steps: shadow, pause at shadow until"):
        t.advance(s, SPEC, T0, to=10)


def test_abort_sends_everyone_back_and_start_retries() -> None:
    s = t.enter_step(started(), SPEC, 4, T0, "x")
    aborted = t.abort(s, T0 + 1, "wrong model version")
    assert (aborted.phase, aborted.weight, aborted.mirror, aborted.reason) == (
        Phase.ABORTED, 0, 0, "aborted: wrong model version",
    )  # fmt: skip
    assert t.abort(t.pause(s, T0), T0 + 1).reason == "aborted by operator"
    with pytest.raises(InvalidTransitionError, match="cannot abort ro: it is Aborted"):
        t.abort(aborted, T0 + 2)
    promoted = t.advance(s, SPEC, T0, full=True)
    with pytest.raises(InvalidTransitionError, match="use rollback to undo a promotion"):
        t.abort(promoted, T0 + 2)
    with pytest.raises(InvalidTransitionError, match="run start to retry"):
        t.advance(aborted, SPEC, T0 + 2)
    again = t.start(aborted, SPEC, "a", "b", T0 + 3)
    assert (again.phase, again.step, again.reason) == (
        Phase.PROGRESSING, 0, "retry from the first step",
    )  # fmt: skip


def test_auto_start_only_for_a_pending_rollout_with_a_new_canary() -> None:
    auto = SPEC.model_copy(update={"auto_start": True})
    pending = RolloutStatus("ro", stable="a", canary="b")
    begun = t.auto_start(pending, auto, T0)
    assert begun is not None and (begun.phase, begun.step, begun.started_at) == (
        Phase.PROGRESSING, 0, T0,
    )  # fmt: skip
    assert "auto-started: b replaces a" in begun.reason
    assert t.auto_start(pending, SPEC, T0) is None  # not asked for
    assert t.auto_start(RolloutStatus("ro", stable="a", canary="a"), auto, T0) is None
    rolled = t.rollback(begun, T0 + 1, "bad")
    assert t.auto_start(rolled, auto, T0 + 2) is None  # a verdict is not retried by itself
    # The policy names a new canary: align returns it to Pending, and it starts again.
    realigned = t.align(rolled, "a", "c", T0 + 3)
    assert t.auto_start(realigned, auto, T0 + 3) is not None


def test_diverted_requests_are_canary_failures() -> None:
    spec = RolloutSpec.model_validate({"route": "/x", "min_requests": 100, **LATENCY_ONLY})
    # A dead canary: 40 requests served before its circuit opened, 300 diverted since.
    dead = VariantWindow({"n": 40, "err": 10, latency_field(0.002): 40, DIVERTED: 300})
    analysis = analyse(Observations(canary=dead), spec)
    (error_rate,) = [r for r in analysis.results if r.metric == "error_rate"]
    assert error_rate.value == pytest.approx(310 / 340)
    assert (error_rate.samples, error_rate.verdict) == (340, Verdict.BREACH)

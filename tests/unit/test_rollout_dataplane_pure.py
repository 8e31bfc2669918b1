"""The data plane's pure parts: weights by phase and pair, and the hot-path recorder."""

from __future__ import annotations

import pytest

from lvm_gateway.contract.rollout import Phase, RolloutStatus
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.agent.snapshot import RolloutSnapshot, weight_of

PAIR = ("phase1", "phase2")


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (Phase.PENDING, (0.0, 0.0)),
        (Phase.PROGRESSING, (20.0, 5.0)),
        (Phase.PAUSED, (20.0, 5.0)),
        (Phase.PROMOTED, (100.0, 0.0)),
        (Phase.ROLLED_BACK, (0.0, 0.0)),
    ],
)
def test_weight_by_phase(phase: Phase, expected: tuple[float, float]) -> None:
    status = RolloutStatus("ro", phase=phase, weight=20.0, mirror=5.0, stable="phase1",
                           canary="phase2")  # fmt: skip
    assert weight_of(status, PAIR) == expected


def test_weight_only_for_the_pair_it_was_earned_by() -> None:
    status = RolloutStatus("ro", phase=Phase.PROMOTED, stable="phase1", canary="phase2")
    assert weight_of(status, ("phase2", "phase3")) == (0.0, 0.0)
    assert weight_of(None, PAIR) == (0.0, 0.0)


def test_snapshot_has_no_entries_until_it_read_redis() -> None:
    snap = RolloutSnapshot("redis://127.0.0.1:1/0", "p")
    snap.bind({"ro": PAIR})
    # No entry: the canary policy keeps its YAML weight until Redis has been read once.
    assert dict(snap.weights) == {} and not snap.connected


def test_recorder_buckets_by_time_and_variant() -> None:
    now = [1000.0]
    rec = WindowRecorder("p", bucket_seconds=5, clock=lambda: now[0])
    rec.record_request("a", 0.001, False)
    rec.record_request("a", 0.020, True, lane="lane_3")
    rec.incr("a", "hit5", 2, lane="lane_3")
    now[0] = 1004.9
    rec.record_request("b", 0.001, False)
    assert rec.pending == 2
    now[0] = 1005.0
    rec.record_request("a", 0.001, False)
    assert rec.pending == 3


def test_shadow_entries_only_while_a_shadow_step_mirrors() -> None:
    snap = RolloutSnapshot("redis://127.0.0.1:1/0", "p")
    snap.bind({"ro": PAIR, "other": PAIR})
    shadow = RolloutStatus("ro", phase=Phase.PROGRESSING, weight=0.0, mirror=25.0,
                           stable="phase1", canary="phase2")  # fmt: skip
    snap._publish({"ro": shadow, "other": None})
    assert dict(snap.weights) == {"ro": 0.0, "other": 0.0}
    assert dict(snap.shadow) == {"ro": 25.0}

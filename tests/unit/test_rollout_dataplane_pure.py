"""The data plane's pure parts: weights by phase and pair, and the hot-path recorder."""

from __future__ import annotations

from pathlib import Path

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


def test_a_cold_start_without_redis_or_snapshot_holds_every_canary_at_zero() -> None:
    # Changed on purpose (issue 10): the YAML weight used to apply until Redis was read, so a
    # gateway started during an outage sent users to a canary Redis held RolledBack.
    snap = RolloutSnapshot("redis://127.0.0.1:1/0", "p")
    snap.bind({"ro": PAIR})
    assert dict(snap.weights) == {"ro": 0.0} and not snap.connected
    assert "weight 0" in snap.routing


def test_a_cold_start_routes_by_the_last_saved_statuses(tmp_path: Path) -> None:
    state = tmp_path / "home" / "rollouts-p.json"
    first = RolloutSnapshot("redis://127.0.0.1:1/0", "p", state_file=state)
    first.bind({"ro": PAIR, "back": PAIR})
    live = RolloutStatus("ro", phase=Phase.PROGRESSING, weight=20.0, stable="phase1",
                         canary="phase2")  # fmt: skip
    gone = RolloutStatus("back", phase=Phase.ROLLED_BACK, weight=0.0, stable="phase1",
                         canary="phase2")  # fmt: skip
    first._publish({"ro": live, "back": gone})
    first._save({"ro": live, "back": gone})
    # A new process, Redis unreachable: the saved statuses route, pairs still checked.
    second = RolloutSnapshot("redis://127.0.0.1:1/0", "p", state_file=state)
    second.bind({"ro": PAIR, "back": PAIR})
    assert dict(second.weights) == {"ro": 20.0, "back": 0.0}
    assert "snapshot saved" in second.routing
    second.bind({"ro": ("phase1", "phase3"), "back": PAIR})  # the YAML names another canary
    assert dict(second.weights) == {"ro": 0.0, "back": 0.0}
    state.write_text("{not json")
    third = RolloutSnapshot("redis://127.0.0.1:1/0", "p", state_file=state)
    third.bind({"ro": PAIR})
    assert dict(third.weights) == {"ro": 0.0}


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

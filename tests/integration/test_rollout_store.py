"""The Redis store: atomic transitions, fencing, history shape, thresholds validation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis

from lvm_gateway.config.load import load_config
from lvm_gateway.contract.rollout import Actor, Phase
from lvm_gateway.errors import (
    ConflictError,
    InvalidTransitionError,
    NotLeaderError,
    ThresholdError,
    UnknownRolloutError,
)
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.lease import Lease
from lvm_gateway.rollout.store import RolloutStore
from lvm_gateway.rollout.transitions import advance, pause
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> AsyncIterator[RolloutStore]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config = load_config(write_policy(tmp_path / "p.yaml", prefix))
    client = open_client(redis_url)
    s = RolloutStore(client, prefix)
    await s.register_specs(config)
    yield s
    await client.aclose()


async def test_unregistered_rollout_is_unknown(store: RolloutStore) -> None:
    with pytest.raises(UnknownRolloutError, match="known: phase2"):
        await store.get("nope")
    status = await store.get("phase2")
    assert (status.phase, status.version, status.stable, status.canary) == (
        Phase.PENDING, 0, "phase1", "phase2",
    )  # fmt: skip


async def test_two_advances_from_one_version_exactly_one_wins(
    store: RolloutStore, redis_url: str
) -> None:
    await ops.start(store, "phase2")
    clients = [open_client(redis_url) for _ in range(4)]
    stores = [RolloutStore(c, store.prefix) for c in clients]
    spec = (await store.registered("phase2")).spec
    seen = [await s.get("phase2") for s in stores]  # all read version 1
    results = await asyncio.gather(
        *(
            s.transition(old, advance(old, spec, 1.0), Actor.OPERATOR, "advance")
            for s, old in zip(stores, seen, strict=True)
        ),
        return_exceptions=True,
    )
    for c in clients:
        await c.aclose()
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 1, results
    assert all(isinstance(r, ConflictError) for r in results if r is not wins[0])
    after = await store.get("phase2")
    assert (after.step, after.version) == (1, 2)


async def test_concurrent_advance_verbs_never_skip_a_step(
    store: RolloutStore, redis_url: str
) -> None:
    await ops.start(store, "phase2")
    clients = [open_client(redis_url) for _ in range(4)]
    results = await asyncio.gather(
        *(ops.advance(RolloutStore(c, store.prefix), "phase2", force=True) for c in clients),
        return_exceptions=True,
    )
    for c in clients:
        await c.aclose()
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert wins and all(isinstance(r, ConflictError) for r in results if r not in wins)
    # Whatever overlapped, each win moved exactly one step from the version it read.
    assert sorted(w.step for w in wins) == list(range(1, len(wins) + 1))
    history = await store.history("phase2")
    assert [e["version"] for e in history] == list(range(1, len(wins) + 2))
    assert [e["step"] for e in history] == list(range(len(wins) + 1))


async def test_stale_version_is_rejected(store: RolloutStore) -> None:
    started = await ops.start(store, "phase2")
    await ops.advance(store, "phase2", force=True)
    with pytest.raises(ConflictError, match="changed underneath"):
        await store.transition(started, pause(started, 1.0), Actor.OPERATOR, "pause")
    assert (await store.get("phase2")).step == 1


async def test_stale_leader_write_is_rejected(store: RolloutStore) -> None:
    status = await ops.start(store, "phase2")
    old = Lease(store.client, store.prefix, "old", lease_seconds=0.2)
    assert await old.hold()
    stale = old.value
    await asyncio.sleep(0.3)  # the lease expires; another instance takes it
    new = Lease(store.client, store.prefix, "new", lease_seconds=5)
    assert await new.hold()
    with pytest.raises(NotLeaderError):
        await store.transition(status, pause(status, 1.0), Actor.CONTROLLER, "x", lease=stale)
    done = await store.transition(
        status, pause(status, 1.0), Actor.CONTROLLER, "x", lease=new.value
    )
    assert done.version == status.version + 1
    await new.release()


async def test_history_shape(store: RolloutStore) -> None:
    await ops.start(store, "phase2", identity="alice")
    await ops.advance(store, "phase2", force=True)
    await ops.pause(store, "phase2")
    await ops.resume(store, "phase2")
    await ops.rollback(store, "phase2", reason="bad vibes")
    events = await store.history("phase2")
    assert [e["action"] for e in events] == ["start", "advance", "pause", "resume", "rollback"]
    assert [e["phase"] for e in events] == [
        "Progressing", "Progressing", "Paused", "Progressing", "RolledBack",
    ]  # fmt: skip
    assert [e["weight"] for e in events] == [10.0, 20.0, 20.0, 20.0, 0.0]
    for e in events:
        assert {"at", "phase", "step", "weight", "actor", "reason"} <= set(e)
        assert e["actor"] == "operator" and e["at"].endswith("Z")
    assert events[0]["identity"] == "alice"
    assert events[-1]["reason"] == "bad vibes"
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


async def test_every_transition_publishes_and_bumps_the_epoch(store: RolloutStore) -> None:
    pubsub = store.client.pubsub()
    await pubsub.subscribe(store.keys.events)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    epoch = await store.epoch()
    await ops.start(store, "phase2")
    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    assert message is not None and message["data"] == b"phase2 1"
    assert await store.epoch() == epoch + 1
    await pubsub.aclose()


async def test_thresholds_validated_and_held(store: RolloutStore) -> None:
    before = await store.tunables("phase2")
    updated = await store.set_thresholds(
        "phase2", {"success.p95_ms_max": "8", "min_requests": "50"}
    )
    assert updated["success"]["p95_ms_max"] == 8.0 and updated["min_requests"] == 50
    assert (await store.effective("phase2")).spec.min_requests == 50
    bad = [
        ({"nope": "1"}, "unknown key 'nope'"),
        ({"success.p99_ms_max": "1"}, "unknown key 'success.p99_ms_max'"),
        # Messages in the user's words, with the offending value (issue 10).
        ({"success.error_rate_max": "2"}, "success.error_rate_max: 2 is more than 1"),
        ({"min_requests": "many"}, 'min_requests: must be a whole number, got "many"'),
        ({"rollback.p95_ms_max": "6"}, "must be >= success.p95_ms_max (8)"),
        ({"failure_limit": "none"}, "cannot be unset"),
    ]
    for assignment, message in bad:
        with pytest.raises(ThresholdError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await store.set_thresholds("phase2", assignment)
    assert (await store.tunables("phase2"))["success"]["p95_ms_max"] == 8.0
    unset = await store.set_thresholds("phase2", {"success.p95_ms_max": "none"})
    assert unset["success"]["p95_ms_max"] is None
    assert [e["action"] for e in await store.history("phase2")] == ["thresholds"] * 2
    # start re-seeds the thresholds from the policy YAML
    await ops.start(store, "phase2")
    assert await store.tunables("phase2") == before


async def test_describe_shows_metrics_lanes_and_the_expected_decision(
    store: RolloutStore,
) -> None:
    from rich.console import Console

    from lvm_gateway.rollout.agent.recorder import WindowRecorder
    from lvm_gateway.rollout.cli import status_table

    await ops.start(store, "phase2")
    await store.set_thresholds("phase2", {"step_min_seconds": "600"})
    rec = WindowRecorder(store.prefix)
    for i in range(30):
        rec.record_request("phase2", 0.002, False, lane="lane_3")
        rec.record_request("phase1", 0.002, False, lane="lane_3")
        rec.incr("phase2", "feedback", lane="lane_3")
        rec.incr("phase1", "feedback", lane="lane_3")
        rec.incr("phase1", "hit5", lane="lane_3")
        if i % 2:
            rec.incr("phase2", "hit5", lane="lane_3")
    await rec.flush(store.client)
    doc = await ops.describe(store, "phase2")
    assert doc["requests"] == 30
    assert {m["metric"]: m["verdict"] for m in doc["metrics"]} == {
        "p95_ms": "pass", "error_rate": "pass",
    }  # fmt: skip
    assert doc["next"].startswith("hold: criteria met; next step in")
    (lane,) = doc["lanes"]
    assert lane["lane"] == "lane_3" and lane["hit5"] == 0.5 and lane["stable_hit5"] == 1.0
    assert lane["delta"] == 0.5
    console = Console(record=True, width=120)
    console.print(status_table(doc, lanes=True))
    text = console.export_text()
    assert "Progressing" in text and "lane_3" in text and "criteria met" in text


async def test_rollback_wins_over_racing_writers_and_stays_rolled_back(
    store: RolloutStore, redis_url: str
) -> None:
    await ops.start(store, "phase2")
    clients = [open_client(redis_url) for _ in range(4)]
    stores = [RolloutStore(c, store.prefix) for c in clients]
    results = await asyncio.gather(
        ops.rollback(stores[0], "phase2", reason="stop"),
        *(ops.advance(s, "phase2", force=True) for s in stores[1:]),
        return_exceptions=True,
    )
    for c in clients:
        await c.aclose()
    rolled = results[0]
    assert not isinstance(rolled, BaseException), rolled  # re-read past the advances
    assert rolled.phase == Phase.ROLLED_BACK
    for r in results[1:]:
        assert not isinstance(r, BaseException) or isinstance(
            r, ConflictError | InvalidTransitionError
        )
    final = await store.get("phase2")
    assert (final.phase, final.weight, final.version) == (Phase.ROLLED_BACK, 0.0, rolled.version)

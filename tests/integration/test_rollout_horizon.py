"""Windows without a horizon, against real Redis on an injected clock: a step of three days is
judged on all of its requests, and the stable variant's lane baseline outlives its traffic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lvm_gateway.config.load import load_config
from lvm_gateway.contract.rollout import Actor, Phase
from lvm_gateway.contract.windows import BUCKET_SECONDS, FEEDBACK, HITS, WINDOW_TTL_SECONDS
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import transitions
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.aggregates import fold, observe
from lvm_gateway.rollout.controller import reconcile_rollout
from lvm_gateway.rollout.store import RolloutStore
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0
HOUR, DAY = 3600.0, 86_400.0
LANES = [f"lane_{i}" for i in range(4)]
PER_HOUR = 48  # canary requests per simulated hour, and as many on stable


@pytest.fixture
async def store(redis_url: str, tmp_path: Path) -> AsyncIterator[RolloutStore]:
    prefix = f"h{uuid.uuid4().hex[:8]}"
    policy = write_policy(
        tmp_path / "p.yaml",
        prefix,
        steps=[50, 100],
        step_min_seconds="3d",
        max_hold_seconds=4 * DAY,
        interval_seconds=HOUR,
        # More than any 10 minutes (or any hour) brings: only the whole step is enough.
        min_requests=3000,
        min_feedback=100,
        success={"p95_ms_max": 5, "error_rate_max": 0.01, "lane_delta_max": 0.15},
        rollback={"p95_ms_max": 10, "error_rate_max": 0.05, "lane_delta_max": 0.2},
    )
    client = open_client(redis_url)
    rollouts = RolloutStore(client, prefix)
    await rollouts.register_specs(load_config(policy))
    yield rollouts
    await client.aclose()


def traffic(rec: WindowRecorder, variants: list[str]) -> None:
    """One simulated hour's burst: on every lane 12 requests, 6 feedbacks, 4 hits at 5."""
    for variant in variants:
        for lane in LANES:
            for i in range(PER_HOUR // len(LANES)):
                rec.record_request(variant, 0.002, False, lane=lane)
                if i % 2 == 0:
                    rec.incr(variant, FEEDBACK, lane=lane)
                    if i % 3:
                        rec.incr(variant, HITS[5], lane=lane)


async def test_a_three_day_step_is_judged_on_all_its_data(store: RolloutStore) -> None:
    clock = [T0]
    rec = WindowRecorder(store.prefix, clock=lambda: clock[0])
    reg = await store.registered("phase2")
    status = await store.get("phase2")
    status = await store.transition(
        status,
        transitions.start(status, reg.spec, reg.stable, reg.canary, T0),
        Actor.OPERATOR,
        "start",
        seed_thresholds=reg.spec,
    )
    hours = 0
    while status.step == 0 and hours <= 80:
        clock[0] = T0 + hours * HOUR + 60
        traffic(rec, ["phase2", "phase1"])
        await rec.flush(store.client)
        status, action, _ = await reconcile_rollout(store, "phase2", "test", None, clock[0] + 30)
        assert status.phase == Phase.PROGRESSING, status.reason
        hours += 1
    # Held on thin data for 62 hours, then for the rest of the step's 3 days; advanced at 72.
    assert hours == 73 and status.step == 1
    (advance,) = [e for e in await store.history("phase2") if e["action"] == "advance"]
    assert advance["metrics"]["requests"] == 73 * PER_HOUR  # every request of the step
    assert advance["reason"].startswith("criteria met for 259290s")

    # The 100% step: stable serves no one. Its fine buckets are gone by now in production.
    clock[0] += HOUR
    traffic(rec, ["phase2"])
    await rec.flush(store.client)
    status, action, _ = await reconcile_rollout(store, "phase2", "test", None, clock[0] + 30)
    assert status.step == 1 and action is not None
    for key in await store.client.keys(f"{store.prefix}:win:*"):
        await store.client.delete(key)
    seen = await observe(store.client, store.prefix, status, clock[0] + 40)
    assert seen.canary.requests == PER_HOUR  # the step: since the 100% step began
    assert seen.stable.requests == 0
    assert seen.canary_rollout is not None and seen.stable_rollout is not None
    assert seen.canary_rollout.requests == 74 * PER_HOUR
    assert seen.stable_rollout.requests == 73 * PER_HOUR  # measured over the same period
    for lane in LANES:  # the stable lane baseline from three days ago
        assert seen.stable_rollout.get(FEEDBACK, lane) == 73 * 6
    # ... which the lane check compares with: a value, not "no data".
    assert action.metrics["lane_delta"] == 0.0


async def test_folding_is_exactly_once_and_bounded(store: RolloutStore) -> None:
    clock = [T0]
    rec = WindowRecorder(store.prefix, clock=lambda: clock[0])
    reg = await store.registered("phase2")
    status = transitions.start(await store.get("phase2"), reg.spec, "phase1", "phase2", T0)
    for second in range(0, 60, 2):
        clock[0] = T0 + second
        rec.record_request("phase2", 0.002, False)
        await rec.flush(store.client)
    # Two controllers fold at once (a lease hand-over): one folds buckets 0-30, the other
    # nothing, whether its watch fails or it comes second.
    racing = [fold(store.client, store.prefix, status, T0 + 40) for _ in range(2)]
    assert sorted(await asyncio.gather(*racing)) == [0, 7]
    assert await fold(store.client, store.prefix, status, T0 + 40) == 0
    mid = await observe(store.client, store.prefix, status, T0 + 60)
    assert mid.canary.requests == 30  # folded sums + the buckets not folded yet, no overlap
    # A controller away for a week folds only what a gateway's bucket could still hold
    # (WINDOW_TTL_SECONDS): the work stays bounded, and nothing is counted twice.
    folded = await fold(store.client, store.prefix, status, T0 + 7 * DAY)
    assert 0 < folded <= WINDOW_TTL_SECONDS // BUCKET_SECONDS
    late = await observe(store.client, store.prefix, status, T0 + 7 * DAY)
    # The 18 requests of buckets 0-30, folded in time; those of 35-55 expired unfolded.
    assert late.canary.requests == 18
    assert late.canary_rollout is not None and late.canary_rollout.requests == 18

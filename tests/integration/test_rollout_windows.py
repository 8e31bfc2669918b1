"""Two gateway replicas' windows merge in Redis; p95 comes from the merged histogram."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from lvm_gateway.contract.windows import WINDOW_TTL_SECONDS
from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.observations import quantile_ms
from lvm_gateway.rollout.windows import read_windows
from tests.rolloutkit import feed

pytestmark = pytest.mark.integration


async def test_two_replicas_merge(redis_url: str, redis_client: redis.Redis) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    clock = [1_000_000.0]
    a = WindowRecorder(prefix, clock=lambda: clock[0])
    b = WindowRecorder(prefix, clock=lambda: clock[0])
    # Replica a: 90 fast canary requests; replica b: 10 slow ones, 2 failed, in a later bucket.
    feed(a, "phase2", 90, latency_ms=1.0)
    a.record_request("phase1", 0.002, False, lane="lane_3")
    a.incr("phase2", "hit5", 4, lane="lane_3")
    clock[0] += 7
    feed(b, "phase2", 10, latency_ms=50.0, errors=2)
    b.incr("phase2", "hit5", 1)
    client = open_client(redis_url)
    assert await a.flush(client) == 2 and await b.flush(client) == 1
    assert a.pending == 0 and await a.flush(client) == 0
    windows = await read_windows(client, prefix, ["phase2", "phase1"], 1_000_000, clock[0])
    canary = windows["phase2"]
    assert (canary.requests, canary.errors) == (100, 2)
    assert canary.get("hit5") == 5 and canary.get("hit5", lane="lane_3") == 4
    p95 = quantile_ms(canary.histogram(), 0.95)
    # Averaging the replicas' own p95s (1 ms, 50 ms) would say ~25 ms; the merged truth is the
    # 95th of 100 samples, inside the slow bucket.
    assert p95 is not None and 40 < p95 <= 50
    assert windows["phase1"].get("n", lane="lane_3") == 1
    assert windows["phase1"].lanes() == {"lane_3"}
    # A range that misses the later bucket sees replica a only.
    early = await read_windows(client, prefix, ["phase2"], 1_000_000, 1_000_004)
    assert early["phase2"].requests == 90
    ttl = await client.ttl(f"{prefix}:win:phase2:1000000")
    assert 0 < ttl <= WINDOW_TTL_SECONDS
    await client.aclose()


async def test_unflushed_counts_survive_a_redis_outage(redis_url: str) -> None:
    prefix = f"w{uuid.uuid4().hex[:8]}"
    rec = WindowRecorder(prefix)
    feed(rec, "phase2", 5, latency_ms=1.0)
    dead = open_client(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises((redis.RedisError, OSError)):
        await rec.flush(dead)
    await dead.aclose()
    feed(rec, "phase2", 3, latency_ms=1.0)
    client = open_client(redis_url)
    await rec.flush(client)
    now = time.time()
    windows = await read_windows(client, prefix, ["phase2"], now - 30, now)
    assert windows["phase2"].requests == 8
    await client.aclose()

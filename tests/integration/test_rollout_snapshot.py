"""The gateway's weight snapshot follows Redis within 1 s and rides out a Redis restart."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from lvm_gateway.config.load import load_config
from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import open_client, start_redis_server
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.agent.dataplane import RolloutDataPlane, rollout_pairs
from lvm_gateway.rollout.agent.snapshot import RolloutSnapshot
from lvm_gateway.rollout.store import RolloutStore
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until check() holds; fails the test after within_s."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > within_s:
            raise AssertionError(f"not within {within_s}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_snapshot_follows_every_change_within_a_second(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = f"s{uuid.uuid4().hex[:8]}"
    config = load_config(write_policy(tmp_path / "p.yaml", prefix))
    client = open_client(redis_url)
    store = RolloutStore(client, prefix)
    await store.register_specs(config)
    snaps = [RolloutSnapshot(redis_url, prefix) for _ in range(2)]  # two gateways
    for s in snaps:
        s.bind(rollout_pairs(config))
    tasks = [asyncio.create_task(s.run()) for s in snaps]
    try:
        await eventually(lambda: all(s.connected for s in snaps), 2)
        assert all(dict(s.weights) == {"phase2": 0.0} for s in snaps)  # Pending
        for change, weight in (
            (ops.start, 10.0),
            (lambda st, n: ops.advance(st, n, force=True), 20.0),
            (ops.pause, 20.0),
            (ops.rollback, 0.0),
        ):
            await change(store, "phase2")
            took = await eventually(
                lambda w=weight: all(s.weights.get("phase2") == w for s in snaps), 1.0
            )
            assert took < 1.0
        # A policy naming another canary gets weight 0 whatever Redis says.
        await ops.start(store, "phase2")
        await eventually(lambda: snaps[0].weights["phase2"] == 10.0, 1.0)
        snaps[0].bind({"phase2": ("phase1", "phase3")})
        assert snaps[0].weights["phase2"] == 0.0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()


async def _wait_ping(url: str) -> None:
    c = open_client(url, timeout_s=0.5)
    try:
        for _ in range(100):
            with contextlib.suppress(redis.RedisError, OSError):
                if await c.ping():
                    return
            await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")
    finally:
        await c.aclose()


async def test_dataplane_survives_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    args = ("--port", str(port), "--bind", "127.0.0.1")
    server = start_redis_server(*args, cwd=tmp_path / "r")
    dp: RolloutDataPlane | None = None
    try:
        await _wait_ping(url)
        config = load_config(write_policy(tmp_path / "p.yaml", "restart"))
        dp = RolloutDataPlane(url, "restart", run_controller=False, identity="gw1",
                              flush_interval_s=0.1)  # fmt: skip
        await dp.start(config)
        client = open_client(url)
        store = RolloutStore(client, "restart")
        await eventually(lambda: dp is not None and dp.connected, 2)
        await eventually(lambda: dp is not None and dp.weights.get("phase2") == 0.0, 2)
        for _ in range(50):  # registration runs in the background
            with contextlib.suppress(Exception):
                await ops.start(store, "phase2")
                break
            await asyncio.sleep(0.05)
        await eventually(lambda: dp is not None and dp.weights.get("phase2") == 10.0, 1)
        await client.aclose()

        server.kill()
        server.wait()
        await eventually(lambda: dp is not None and not dp.connected, 3)
        assert dp.weights["phase2"] == 10.0  # the last known weights stay in force
        dp.recorder.record_request("phase2", 0.001, False)  # the hot path never raises

        # A fresh, empty server on the same port: the snapshot re-reads everything.
        server = start_redis_server(*args, cwd=tmp_path / "r")
        await _wait_ping(url)
        await eventually(lambda: dp is not None and dp.connected, 3)
        client = open_client(url)
        store = RolloutStore(client, "restart")
        await store.register_specs(config)
        await ops.start(store, "phase2")
        await ops.advance(store, "phase2", force=True)
        await eventually(lambda: dp is not None and dp.weights.get("phase2") == 20.0, 1)
        await client.aclose()
    finally:
        if dp is not None:
            await dp.stop()
        server.kill()
        server.wait()


async def test_the_gateway_registers_its_rollouts_again_when_redis_lost_them(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = f"rereg-{uuid.uuid4().hex[:6]}"
    config = load_config(write_policy(tmp_path / "p.yaml", prefix))
    dp = RolloutDataPlane(redis_url, prefix, run_controller=False, identity="gw1")
    dp.recheck_interval_s = 0.1
    client = open_client(redis_url)
    store = RolloutStore(client, prefix)
    try:
        await dp.start(config)
        await eventually(lambda: redis_client.sismember(f"{prefix}:rollouts", "phase2"), 2)
        await ops.start(store, "phase2")
        version = (await store.get("phase2")).version
        # Registration again must not touch a status Redis kept.
        await asyncio.sleep(0.3)
        assert (await store.get("phase2")).version == version
        # Redis loses everything (restarted without persistence, or flushed).
        redis_client.flushdb()
        await eventually(lambda: redis_client.sismember(f"{prefix}:rollouts", "phase2"), 2)
        assert (await store.registered("phase2")).canary == "phase2"
    finally:
        await dp.stop()
        await client.aclose()

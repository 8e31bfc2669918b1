"""Scenario 2: Redis is SIGKILLed mid-rollout under load and restarted from its append-only file."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from lvm_gateway.contract.rollout import Phase, RolloutStatus
from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import start_redis_server
from lvm_gateway.rollout import ops
from tests.chaos.kit import (
    LOOSE,
    PROMOTED_PATH,
    SCALE,
    Load,
    Scenario,
    moves,
    snapshot,
    wait,
)
from tests.integration.gateway_env import Gateway, gateway
from tests.rolloutkit import rollout_store, until_status, write_policy

pytestmark = pytest.mark.integration


def start_durable_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    """A redis-server on a fixed port with AOF (everysec, as the embedded one), so a restart
    after SIGKILL replays every acknowledged write."""
    proc = start_redis_server(
        "--port", str(port), "--bind", "127.0.0.1",
        "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data),
        cwd=data,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_timeout=0.5)
    try:
        wait(lambda: _ping(client), 20, "redis-server to load its AOF")
    finally:
        client.close()
    return proc


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@dataclass
class Kill:
    """One SIGKILL of Redis: the state before it, the state found after the restart, and the
    traffic served while Redis was away."""

    before: RolloutStatus
    history: list[dict[str, Any]]
    after: RolloutStatus
    kept: list[dict[str, Any]]
    outage: Counter[str]
    failed: int  # failed requests of the load generator so far
    degraded_after_s: float
    down_s: float


def routes_by(gw: Gateway, weight: float) -> bool:
    """Whether the gateway is connected to Redis and routes by this canary weight."""
    ready = gw.http.get("/readyz").json()["status"] == "ready"
    ratio = gw.metric("lvmgw_rollout_canary_weight_ratio", rollout="phase2")
    return ready and ratio == weight / 100


def split(weight: float) -> set[str]:
    """The variants a canary weight sends 200 sticky users to."""
    return {"phase1"} if weight == 0 else {"phase2"} if weight == 100 else {"phase1", "phase2"}


async def test_redis_sigkilled_mid_rollout(
    scenario: Scenario, stubs: dict[str, str], tmp_path: Path
) -> None:
    """2. Redis SIGKILLed mid-rollout, restarted."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    data = tmp_path / "redis"
    data.mkdir()
    server = start_durable_redis(port, data)
    policy = write_policy(
        tmp_path / "policy.yaml", f"c{uuid.uuid4().hex[:8]}", stubs["phase1"], stubs["phase2"],
        fallback=True, steps=[10, 50, 100], step_min_seconds=SCALE.step_min_seconds,
        interval_seconds=0.2, min_requests=10, **LOOSE,
    )  # fmt: skip
    kills: list[Kill] = []
    try:
        async with rollout_store(url, policy) as store:
            with (
                gateway(policy.read_text(), url, tmp_path) as gw,
                scenario.track(Load([gw.url])) as load,
            ):
                await ops.start(store, "phase2")
                for step in SCALE.redis_kill_steps:
                    # Killed straight after a move, once the gateway routes by it (after a
                    # restart it reconnects within its 1 s backoff): the controller's next write
                    # is a step (seconds) away, so the state read here is the state Redis must
                    # come back with.
                    moved = await until_status(
                        store, lambda s, k=step: s.step >= k, 60, f"step {step}"
                    )
                    await asyncio.to_thread(
                        gw.wait_until, lambda w=moved.weight: routes_by(gw, w), 30
                    )
                    before, history = await snapshot(store)
                    server.kill()
                    server.wait()
                    killed_at = time.time()
                    ready = await asyncio.to_thread(
                        gw.wait_until,
                        lambda: gw.http.get("/readyz").json()["status"] == "degraded",
                        15,
                    )
                    await asyncio.sleep(SCALE.redis_outage_s)
                    outage = load.served_since(killed_at)
                    failed = load.failed
                    server = await asyncio.to_thread(start_durable_redis, port, data)
                    down = time.time() - killed_at
                    after, kept = await snapshot(store)
                    kills.append(Kill(before, history, after, kept, outage, failed, ready, down))
                done = await until_status(
                    store, lambda s: s.phase != Phase.PROGRESSING, 90, "the rollout to finish"
                )
                await asyncio.to_thread(load.wait_for, 20, time.time())
                final = (await snapshot(store))[1]
                log = gw.log.read_text()
    finally:
        server.kill()
        server.wait()

    scenario.note(
        "; ".join(
            f"killed at {k.before.weight:g}% (version {k.before.version}), down {k.down_s:.1f}s "
            f"(/readyz degraded after {k.degraded_after_s:.1f}s), served meanwhile "
            f"{dict(k.outage)}"
            for k in kills
        )
        + f"; then {done.phase} at version {done.version}"
    )
    for k in kills:
        at = f"at {k.before.weight:g}%"
        scenario.check(f"{at}: no failed request while Redis was down", k.failed == 0, load.errors)
        scenario.check(f"{at}: traffic kept the last weights", set(k.outage) == split(
            k.before.weight), k.outage)  # fmt: skip
        scenario.check(f"{at}: history kept whole", k.kept[: len(k.history)] == k.history, k.kept)
        scenario.check(
            f"{at}: status kept (phase, step, weight, version)",
            k.after.version > k.before.version or k.after == k.before,
            (k.before, k.after),
        )
        scenario.check(
            f"{at}: nothing reset the rollout",
            all(e["phase"] != "Pending" for e in k.kept[len(k.history) :]),
            k.kept[len(k.history) :],
        )
    scenario.check("promoted after the restart", done.phase == Phase.PROMOTED, done)
    scenario.check("every step once, in order", moves(final) == PROMOTED_PATH, moves(final))
    versions = [e["version"] for e in final]
    scenario.check("versions unbroken", versions == list(range(1, len(final) + 1)), versions)
    scenario.check("no failed request at all", load.failed == 0, load.errors)
    # Once per outage, not once per controller tick (it used to log 10 warnings a second).
    warnings = log.count(": Redis error (")
    scenario.check("the controller warned once per outage", warnings == len(kills), warnings)

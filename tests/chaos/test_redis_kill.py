"""Scenario 2: Redis is SIGKILLed mid-rollout under load and restarted from its append-only file."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

from lvm_gateway.contract.rollout import Phase
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
    until_status,
    wait,
)
from tests.integration.gateway_env import gateway
from tests.rolloutkit import rollout_store, write_policy

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
    try:
        async with rollout_store(url, policy) as store:
            with (
                gateway(policy.read_text(), url, tmp_path) as gw,
                scenario.track(Load([gw.url])) as load,
            ):
                await ops.start(store, "phase2")
                # Killed straight after the controller's move to 50%: its next write is a step
                # (seconds) away, so the state read here is the state Redis must come back with.
                await until_status(store, lambda s: s.step == 1, 60, "the advance to 50%")
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
                failed_in_outage = load.failed
                server = await asyncio.to_thread(start_durable_redis, port, data)
                restarted_at = time.time()
                after, kept = await snapshot(store)
                done = await until_status(
                    store, lambda s: s.phase != Phase.PROGRESSING, 90, "the rollout to finish"
                )
                await asyncio.to_thread(load.wait_for, 20, time.time())
                final = (await snapshot(store))[1]
    finally:
        server.kill()
        server.wait()

    scenario.note(
        f"killed at step {before.step} ({before.weight:g}%), version {before.version}, "
        f"{len(history)} history entries; down {restarted_at - killed_at:.1f}s "
        f"(/readyz degraded after {ready:.1f}s), {sum(outage.values())} requests served "
        f"meanwhile {dict(outage)}; then {done.phase} at version {done.version}"
    )
    scenario.check("no failed request while Redis was down", failed_in_outage == 0, load.errors)
    # The weights of the step it was killed at kept routing: 50% here, unless a starved
    # machine let the controller reach 100% before the kill.
    split = {"phase1", "phase2"} if before.weight < 100 else {"phase2"}
    scenario.check("traffic kept the last weights", set(outage) == split, outage)
    scenario.check("history kept whole", kept[: len(history)] == history, kept)
    scenario.check(
        "status kept (phase, step, weight, version)",
        after.version > before.version or after == before,
        (before, after),
    )
    scenario.check(
        "nothing reset the rollout",
        all(e["phase"] != "Pending" for e in kept[len(history) :]),
        kept[len(history) :],
    )
    scenario.check("promoted after the restart", done.phase == Phase.PROMOTED, done)
    scenario.check("every step once, in order", moves(final) == PROMOTED_PATH, moves(final))
    versions = [e["version"] for e in final]
    scenario.check("versions unbroken", versions == list(range(1, len(final) + 1)), versions)
    scenario.check("no failed request at all", load.failed == 0, load.errors)

"""Scenario 3: the canary's model server is SIGKILLed under load while it serves 50%."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import pytest

from lvm_gateway.contract.rollout import Phase
from lvm_gateway.procs import free_port, start, stop
from lvm_gateway.rollout import ops
from tests.chaos.kit import LOOSE, SCALE, Load, Scenario, snapshot, wait
from tests.integration.gateway_env import gateway
from tests.rolloutkit import rollout_store, write_policy

pytestmark = pytest.mark.integration

CIRCUIT = {0: "closed", 1: "open", 2: "half-open"}  # lvmgw_circuit_state


async def test_canary_sigkilled_at_half(
    scenario: Scenario, stubs: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """3. Canary (lvm-serve) SIGKILLed under load at 50%."""
    port = free_port()
    # 40 ms per answer: the kill finds requests in flight on the canary, not only idle ones.
    canary = start(
        ["lvm-serve", "--profile", "stub", "--latency-ms", "40", "--port", str(port)],
        health_url=f"http://127.0.0.1:{port}/health",
        log=tmp_path / "canary.log",
    )
    # step_min_seconds: the controller never advances on its own here; what it does about the
    # dead canary is up to its analysis (reported, not prescribed: only promotion is wrong).
    policy = write_policy(
        tmp_path / "policy.yaml", f"c{uuid.uuid4().hex[:8]}", stubs["phase1"],
        f"http://127.0.0.1:{port}", fallback=True, steps=[10, 50, 100],
        step_min_seconds=3600, interval_seconds=0.2, min_requests=10, **LOOSE,
    )  # fmt: skip
    try:
        async with rollout_store(redis_url, policy) as store:
            with (
                gateway(policy.read_text(), redis_url, tmp_path) as gw,
                scenario.track(Load([gw.url])) as load,
            ):
                await ops.start(store, "phase2")
                await ops.advance(store, "phase2", to=50, force=True)
                at_half = time.time()
                await asyncio.to_thread(
                    wait, lambda: load.served_since(at_half)["phase2"] >= 50, 30, "canary traffic"
                )
                before = load.served_since(at_half)
                stop(canary, sig=signal.SIGKILL)
                killed_at = time.time()
                await asyncio.sleep(SCALE.canary_dead_s)
                dead = load.served_since(killed_at + 0.5)
                fallbacks = gw.metric("lvmgw_fallbacks_total", from_variant="phase2")
                circuit = gw.metric("lvmgw_circuit_state", variant="phase2")
                status, history = await snapshot(store)
    finally:
        stop(canary, sig=signal.SIGKILL)

    after_start = [e for e in history if e["version"] > 2]
    what = (
        f"{status.phase} at {status.weight:g}% ({status.reason})" if after_start else "held at 50%"
    )
    scenario.note(
        f"at 50%: {dict(before)}; after the kill {dict(dead)}, {fallbacks:g} fallbacks, "
        f"canary circuit {CIRCUIT[int(circuit)]}; controller: {what}"
    )
    scenario.check("canary served before the kill", before["phase2"] > 0, before)
    scenario.check("no client-visible error", load.failed == 0, load.errors)
    scenario.check("stable served everyone after the kill", set(dead) == {"phase1"}, dead)
    scenario.check("fallback to stable counted", fallbacks > 0)
    scenario.check("not promoted", status.phase != Phase.PROMOTED, status)

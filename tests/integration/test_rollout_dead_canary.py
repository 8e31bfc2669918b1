"""A dead canary is never promoted: real lvm-serve and lvm-gateway processes under load, the
canary SIGKILLed (or hung with SIGSTOP) in its shadow step, at 50% or at its last step. Its
circuit opens, stable answers its users (or its shadow copies fail), and the requests it should
have served count as its failures, so it is rolled back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lvm_gateway.contract.rollout import Phase
from lvm_gateway.procs import free_port, start, stop
from lvm_gateway.rollout import ops
from tests.integration.gateway_env import gateway, model_server
from tests.integration.test_rollout_e2e import probing
from tests.rolloutkit import rollout_store, until_status, write_policy

pytestmark = pytest.mark.integration

INTERVAL_S = 2.0


@pytest.fixture(scope="module")
def stable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_server("phase1", "--latency-ms", "0", log_dir=tmp_path_factory.mktemp("s")) as url:
        yield url


@pytest.fixture
def canary(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start(
        ["lvm-serve", "--profile", "phase2", "--port", str(port), "--latency-ms", "0"],
        health_url=f"http://127.0.0.1:{port}/health",
        log=tmp_path / "canary.log",
    )
    yield f"http://127.0.0.1:{port}", proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)  # a hung one must run to be stopped
    stop(proc)


def policy(tmp: Path, stable_url: str, canary_url: str) -> Path:
    path = write_policy(
        tmp / "p.yaml",
        f"k{uuid.uuid4().hex[:8]}",
        stable_url,
        canary_url,
        steps=["shadow", 50, 100],
        step_min_seconds=8,  # what a dead canary would need to be promoted, were it not seen
        interval_seconds=INTERVAL_S,
        min_requests=20,
        failure_limit=2,
        success={"p95_ms_max": 100, "error_rate_max": 0.01},
        rollback={"p95_ms_max": 150, "error_rate_max": 0.05},
    )
    doc = yaml.safe_load(path.read_text())
    doc["routes"][0]["fallback"] = True  # stable answers a failed canary request
    doc["variants"]["phase2"]["timeout_ms"] = 250
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("how", "weight"),
    [(signal.SIGKILL, 100.0), (signal.SIGSTOP, 100.0), (signal.SIGKILL, 50.0),
     (signal.SIGKILL, None)],
    ids=["killed-last-step", "hung-last-step", "killed-at-50", "killed-in-shadow"],
)  # fmt: skip
async def test_a_dead_canary_is_rolled_back_never_promoted(
    how: signal.Signals,
    weight: float | None,
    stable: str,
    canary: tuple[str, subprocess.Popen[bytes]],
    redis_url: str,
    tmp_path: Path,
) -> None:
    canary_url, canary_proc = canary
    path = policy(tmp_path, stable, canary_url)
    async with rollout_store(redis_url, path) as store:
        with gateway(path.read_text(), redis_url, tmp_path) as gw:
            async with probing([gw.url]) as probe:
                await ops.start(store, "phase2")  # the shadow step
                if weight is not None:
                    await ops.advance(store, "phase2", to=weight)
                await asyncio.sleep(2.0)  # healthy traffic in the step first
                os.kill(canary_proc.pid, how)
                killed_at = time.time()
                done = await until_status(store, lambda s: s.phase != Phase.PROGRESSING, 20)
                detected_s = time.time() - killed_at
        events = await store.history("phase2")
    assert done.phase == Phase.ROLLED_BACK, done.reason
    # Diverted requests (its circuit open) are the open-circuit signal and its failures.
    assert "circuit opened" in done.reason or "error_rate" in done.reason
    assert all(e["action"] != "promote" for e in events)
    assert detected_s <= 3 * INTERVAL_S, f"rolled back {detected_s:.1f}s after the canary died"
    # Users never saw the failure: the stable variant answered the dead canary's requests.
    after = probe.since(killed_at)
    assert after and sum(1 for *_, code in after if code == 200) / len(after) >= 0.99
    print(f"{how.name} at {weight}: rolled back {detected_s:.2f}s after the canary died")

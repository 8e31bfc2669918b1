"""The rollout lifecycle against real Redis and the real CLI: pause steps, abort, the status
gate's exit codes, auto-start, and rollouts removed from the policy."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from lvm_gateway.config.load import load_config
from lvm_gateway.contract.rollout import Phase
from lvm_gateway.procs import BIN
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.cli import EXIT_ABORTED, EXIT_PAUSED, EXIT_ROLLED_BACK, EXIT_TIMEOUT
from lvm_gateway.rollout.controller import reconcile_once
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.test_rolloutctl import ctl
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration

STEPS: list[Any] = [10, {"pause": {}}, 50, 100]


def test_pause_step_abort_and_the_status_gate(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path / "p.yaml", f"l{uuid.uuid4().hex[:8]}", steps=STEPS)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return ctl(redis_url, *args, config=policy)

    pending = run("status", "phase2", "--timeout", "0.3s")
    assert pending.returncode == EXIT_TIMEOUT and "Pending" in pending.stdout
    assert "still Pending after 0.3s" in pending.stderr
    assert run("start", "phase2").returncode == 0
    into_pause = run("advance", "phase2")
    assert into_pause.returncode == 0 and "Paused step 2 weight 10%" in into_pause.stdout
    assert "waiting for `rolloutctl resume`" in into_pause.stdout
    gate = run("status", "phase2", "--timeout", "30s")
    assert gate.returncode == EXIT_PAUSED and "Paused" in gate.stdout
    resumed = run("resume", "phase2")
    assert resumed.returncode == 0 and "Progressing step 3 weight 50%" in resumed.stdout
    table = run("status", "phase2")
    assert "[10, pause, 50, 100]" in table.stdout and "3/4" in table.stdout

    aborted = run("abort", "phase2", "--reason", "wrong build")
    assert aborted.returncode == 0 and "Aborted step 3 weight 0%" in aborted.stdout
    assert run("status", "phase2", "--timeout", "5s").returncode == EXIT_ABORTED
    refused = run("abort", "phase2")
    assert refused.returncode == 1 and "cannot abort phase2: it is Aborted" in refused.stderr
    events = json.loads(run("history", "phase2", "--json").stdout)
    assert [(e["action"], e["phase"], e["step"], e["weight"]) for e in events] == [
        ("start", "Progressing", 0, 10.0),
        ("advance", "Paused", 1, 10.0),
        ("resume", "Progressing", 2, 50.0),
        ("abort", "Aborted", 2, 0.0),
    ]
    assert events[-1]["reason"] == "aborted: wrong build"

    # A gate started while the rollout moves prints each change, and exits 0 once Promoted.
    assert run("start", "phase2").returncode == 0
    cmd = ["--redis", redis_url, "--config", str(policy), "status", "phase2", "--timeout", "20s"]
    waiting = subprocess.Popen([str(BIN / "rolloutctl"), *cmd], stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert run("advance", "phase2", "--to", "50").returncode == 0
    time.sleep(1.0)
    assert run("advance", "phase2", "--full").returncode == 0
    out, _ = waiting.communicate(timeout=20)
    assert waiting.returncode == 0
    lines = out.strip().splitlines()
    assert len(lines) == 3, out
    assert "Progressing step 1" in lines[0] and "step 3 weight 50%" in lines[1]
    assert "Promoted" in lines[2]

    assert run("rollback", "phase2").returncode == 0
    assert run("status", "phase2", "--timeout", "5s").returncode == EXIT_ROLLED_BACK
    assert run("status", "--timeout", "5s").returncode == 2  # which rollout?
    bad = run("status", "phase2", "--timeout", "5 minutes")
    assert bad.returncode == 2 and "invalid duration '5 minutes'" in bad.stderr


def _policy(
    tmp: Path, prefix: str, canary: str = "phase2", declared: bool = True, **rollout: Any
) -> Path:
    """write_policy's document plus a variant phase3, with the route's canary chosen, and
    without its `rollouts:` unless `declared`."""
    path = write_policy(tmp / f"p-{uuid.uuid4().hex[:6]}.yaml", prefix, **rollout)
    doc = yaml.safe_load(path.read_text())
    doc["variants"]["phase3"] = dict(doc["variants"]["phase2"])
    doc["routes"][0]["policy"]["canary"]["canary"] = canary
    if not declared:
        del doc["rollouts"]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def test_auto_start_on_registration_and_on_a_new_canary(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"a{uuid.uuid4().hex[:8]}"
    client = open_client(redis_url)
    store = RolloutStore(client, prefix)
    await store.register_specs(load_config(_policy(tmp_path, prefix, auto_start=True)))
    await reconcile_once(redis_url, prefix, "c1")
    status = await store.get("phase2")
    assert (status.phase, status.step, status.canary) == (Phase.PROGRESSING, 0, "phase2")
    assert status.reason == "auto-started: phase2 replaces phase1"
    # The policy names a new canary: back to Pending, then started again, in one pass.
    await store.register_specs(
        load_config(_policy(tmp_path, prefix, canary="phase3", auto_start=True))
    )
    await reconcile_once(redis_url, prefix, "c1")
    status = await store.get("phase2")
    assert (status.phase, status.step, status.canary) == (Phase.PROGRESSING, 0, "phase3")
    events = await store.history("phase2")
    assert [(e["actor"], e["action"], e["phase"], e["canary"]) for e in events] == [
        ("controller", "start", "Progressing", "phase2"),
        ("controller", "align", "Pending", "phase3"),
        ("controller", "start", "Progressing", "phase3"),
    ]
    # Without auto_start nothing starts by itself.
    other = RolloutStore(client, prefix + "x")
    await other.register_specs(load_config(_policy(tmp_path, prefix + "x")))
    await reconcile_once(redis_url, prefix + "x", "c1")
    assert (await other.get("phase2")).phase == Phase.PENDING
    await client.aclose()


async def test_a_rollout_removed_from_the_policy_is_retired_not_deleted(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"d{uuid.uuid4().hex[:8]}"
    client = open_client(redis_url)
    store = RolloutStore(client, prefix)
    declared = load_config(_policy(tmp_path, prefix))
    await store.register_specs(declared)
    await ops.start(store, "phase2")
    gone = load_config(_policy(tmp_path, prefix, declared=False))
    assert await store.register_specs(gone, "gw-1") == ["phase2"]
    assert await store.register_specs(gone, "gw-2") == []  # another replica: nothing twice
    assert (await store.names(), await store.removed()) == ([], ["phase2"])
    status = await store.get("phase2")
    assert (status.phase, status.weight) == (Phase.ABORTED, 0.0)
    assert status.reason == "aborted: removed from the policy YAML"
    events = await store.history("phase2")  # the history stays
    assert [(e["action"], e["actor"], e["identity"]) for e in events] == [
        ("start", "operator", ""),
        ("removed", "config", "gw-1"),
    ]
    assert await reconcile_once(redis_url, prefix, "c1") == {}  # no longer reconciled
    doc = await ops.describe(store, "phase2")
    assert doc["removed"] and doc["phase"] == "Aborted"
    # Declared again: reconciled again, from where it was (start to roll it out).
    await store.register_specs(declared)
    assert (await store.names(), await store.removed()) == (["phase2"], [])
    assert (await store.get("phase2")).phase == Phase.ABORTED
    await client.aclose()

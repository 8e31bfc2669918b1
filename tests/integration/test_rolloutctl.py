"""`rolloutctl` end to end against real Redis: the JSON shapes scripts rely on, exit codes."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import redis

from lvm_gateway.procs import BIN, free_port
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration


def ctl(redis_url: str, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "rolloutctl"), "--redis", redis_url]
    if config is not None:
        cmd += ["--config", str(config)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=30)


def test_rolloutctl_end_to_end(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yaml", f"r{uuid.uuid4().hex[:8]}")
    # --config registers the policy's rollouts; later commands need only the prefix.
    first = ctl(redis_url, "status", "phase2", "--json", config=policy)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert {"name", "phase", "step", "weight", "stable", "canary", "version", "reason"} <= set(doc)
    assert (doc["name"], doc["phase"], doc["weight"], doc["version"]) == ("phase2", "Pending", 0, 0)
    assert (doc["stable"], doc["canary"]) == ("phase1", "phase2")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return ctl(redis_url, *args, config=policy)

    assert run("start", "phase2").returncode == 0
    moved = run("advance", "phase2", "--to", "50")
    assert moved.returncode == 0 and "weight 50%" in moved.stdout
    refused = run("advance", "phase2", "--to", "20")
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "not a later step" in refused.stderr
    assert run("rollback", "phase2", "--reason", "manual test").returncode == 0
    again = run("advance", "phase2")
    assert again.returncode == 1 and "RolledBack" in again.stderr

    doc = json.loads(run("status", "phase2", "--json").stdout)
    assert (doc["phase"], doc["weight"], doc["reason"], doc["version"]) == (
        "RolledBack", 0, "manual test", 3,
    )  # fmt: skip
    events = json.loads(run("history", "phase2", "--json").stdout)
    assert isinstance(events, list) and len(events) == 3
    assert [(e["phase"], e["step"], e["weight"], e["actor"]) for e in events] == [
        ("Progressing", 0, 10.0, "operator"),
        ("Progressing", 2, 50.0, "operator"),
        ("RolledBack", 2, 0.0, "operator"),
    ]
    assert all({"at", "reason"} <= set(e) for e in events)

    shown = run("thresholds", "phase2", "rollback.p95_ms_max=12", "min_requests=50")
    assert shown.returncode == 0 and json.loads(shown.stdout)["rollback"]["p95_ms_max"] == 12
    bad = run("thresholds", "phase2", "success.error_rate_max=7")
    assert bad.returncode == 1 and "success.error_rate_max" in bad.stderr

    table = run("status")
    assert table.returncode == 0 and "RolledBack" in table.stdout and "manual test" in table.stdout
    unknown = run("pause", "nope")
    assert unknown.returncode == 1 and "unknown rollout 'nope'" in unknown.stderr
    once = run("controller", "--once")
    assert once.returncode == 0 and "phase2: RolledBack" in once.stdout


def test_rolloutctl_exit_codes_without_redis_or_with_a_bad_policy(tmp_path: Path) -> None:
    down = ctl(f"redis://127.0.0.1:{free_port()}/0", "status")
    assert down.returncode == 3 and "Redis unreachable" in down.stderr
    assert down.stderr.strip().count("\n") == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: {}\nroutes: []\n")
    invalid = ctl("redis://127.0.0.1:1/0", "status", config=bad)
    assert invalid.returncode == 2 and "variants" in invalid.stderr

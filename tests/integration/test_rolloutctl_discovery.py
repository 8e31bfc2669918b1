"""`rolloutctl` finds Redis and the key prefix, leaves no daemon behind a read-only verb, manages
the embedded daemon, never prints a password; `make clean` stops the daemon before deleting it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lvm_gateway.procs import BIN, free_port
from lvm_gateway.redisconn import embedded, ensure_embedded, is_redis_server, stop_embedded
from lvm_gateway.rollout.cli import resolve_prefix
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "h"
    yield home
    stop_embedded(home)


def ctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> (
    subprocess.CompletedProcess[str]
):  # fmt: skip
    base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LVM_GATEWAY_PREFIX")}
    return subprocess.run(
        [str(BIN / "rolloutctl"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**base, **(env or {})},
        cwd=cwd,
    )


def test_prefix_precedence_flag_env_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LVM_GATEWAY_PREFIX", raising=False)
    assert resolve_prefix(None, None) == "lvmgw"
    assert resolve_prefix(None, "demo") == "demo"
    monkeypatch.setenv("LVM_GATEWAY_PREFIX", "env")
    assert resolve_prefix(None, "demo") == "env"
    assert resolve_prefix("flag", "demo") == "flag"


def test_rollouts_under_a_non_default_prefix_are_found(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    prefix = f"p{uuid.uuid4().hex[:8]}"
    policy = write_policy(tmp_path / "p.yaml", prefix)
    assert ctl("--redis", redis_url, "--config", str(policy), "start", "phase2").returncode == 0

    def names(*args: str, env: dict[str, str] | None = None) -> list[str]:
        done = ctl("--redis", redis_url, *args, "status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        return [d["name"] for d in json.loads(done.stdout)]

    assert names() == []  # the default prefix holds nothing
    assert names("--prefix", prefix) == ["phase2"]
    assert names(env={"LVM_GATEWAY_PREFIX": prefix}) == ["phase2"]
    assert names("--prefix", "other", env={"LVM_GATEWAY_PREFIX": prefix}) == []
    history = ctl("--redis", redis_url, "history", "phase2", "--json",
                  env={"LVM_GATEWAY_PREFIX": prefix})  # fmt: skip
    assert [e["action"] for e in json.loads(history.stdout)] == ["start"]


def test_read_only_verbs_start_no_daemon_and_say_where_they_looked(
    home: Path, tmp_path: Path
) -> None:
    env = {"LVM_GATEWAY_HOME": str(home)}
    for args in (("status",), ("history", "phase2"), ("thresholds", "phase2")):
        done = ctl(*args, env=env, cwd=tmp_path)
        assert done.returncode == 3, done.stderr
        assert f"no embedded redis-server answers at {home / 'redis.sock'}" in done.stderr
        assert "REDIS_URL unset" in done.stderr and done.stderr.count("\n") == 1
    assert embedded(home).pid() is None and not (home / "redis.sock").exists()
    assert not (tmp_path / ".lvm-gateway").exists()


def test_embedded_status_and_stop(home: Path, tmp_path: Path) -> None:
    env = {"LVM_GATEWAY_HOME": str(home)}
    down = ctl("embedded", "status", env=env)
    assert down.returncode == 3 and "no embedded redis-server runs" in down.stdout
    policy = write_policy(tmp_path / "p.yaml", "lvmgw")
    started = ctl("--config", str(policy), "start", "phase2", env=env)  # a write verb starts it
    assert started.returncode == 0, started.stderr
    shown = ctl("embedded", "status", "--json", env=env)
    doc = json.loads(shown.stdout)
    assert shown.returncode == 0 and doc["running"] and doc["pid"] == embedded(home).pid()
    assert (doc["appendonly"], doc["appendfsync"], doc["data_dir"]) == ("yes", "everysec",
                                                                        str(home))  # fmt: skip
    table = ctl("embedded", "status", env=env).stdout
    assert "fsync everysec" in table and str(home / "redis.sock") in table
    # A read-only verb uses the running daemon.
    assert "Progressing" in ctl("status", env=env).stdout
    stopped = ctl("embedded", "stop", env=env)
    assert stopped.returncode == 0 and f"pid {doc['pid']}" in stopped.stdout
    assert embedded(home).pid() is None
    assert ctl("status", env=env).returncode == 3  # and it is not restarted by a read


def test_passwords_never_appear_in_errors() -> None:
    port = free_port()
    secret = "s3cret-Pa55"
    for args, env, why in (
        (("--redis", f"redis://bob:{secret}@127.0.0.1:{port}/0"), None, "Redis unreachable"),
        ((), {"REDIS_URL": f"redis://bob:{secret}@127.0.0.1:{port}/0"}, "Redis unreachable"),
        (("--redis", f"redis://127.0.0.1:{port}/0?password={secret}"), None, "Redis unreachable"),
        (("--redis", f"redis://bob:{secret}@127.0.0.1:port/0"), None, "bad Redis URL"),
        (("--redis", f"http://bob:{secret}@127.0.0.1/0"), None, "bad Redis URL"),
    ):
        done = ctl(*args, "status", env=env)
        code = 2 if why == "bad Redis URL" else 3  # a malformed URL is a usage error
        assert done.returncode == code and why in done.stderr, done.stderr
        assert secret not in done.stderr + done.stdout
        assert "***" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("via", ["rolloutctl", "pid file"])
def test_make_clean_stops_the_daemon_first(via: str, tmp_path: Path) -> None:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    home = tmp_path / ".lvm-gateway"
    ensure_embedded(home)
    pid = embedded(home).pid()
    assert pid is not None
    # BIN points make at this venv's rolloutctl; a missing one leaves only the pid file.
    bin_dir = BIN if via == "rolloutctl" else tmp_path / "no-venv"
    done = subprocess.run(
        ["make", "-s", f"BIN={bin_dir}", "clean"], cwd=tmp_path, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not home.exists()
    assert not is_redis_server(pid), "redis-server still runs on a deleted directory"

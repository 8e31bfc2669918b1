"""The embedded Redis keeps rollouts across a SIGKILL and a stop: AOF (everysec) plus RDB."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvm_gateway.contract.rollout import Phase
from lvm_gateway.redisconn import (
    Embedded,
    embedded,
    embedded_status,
    ensure_embedded,
    stop_embedded,
)
from lvm_gateway.rollout import ops
from tests.rolloutkit import rollout_store, write_policy

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # A short path: a unix socket path must stay under 108 bytes.
    home = tmp_path / "h"
    monkeypatch.setenv("LVM_GATEWAY_HOME", str(home))
    yield home
    stop_embedded(home)


def _sigkill(emb: Embedded) -> int:
    pid = emb.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while emb.pid() is not None:
        assert time.monotonic() < deadline, "redis-server survived SIGKILL"
        time.sleep(0.02)
    return pid


async def test_a_sigkilled_embedded_redis_comes_back_with_the_rollout(
    home: Path, tmp_path: Path
) -> None:
    url = ensure_embedded(home)
    policy = write_policy(tmp_path / "p.yaml", f"d{uuid.uuid4().hex[:8]}")
    async with rollout_store(url, policy) as store:
        await ops.start(store, "phase2", identity="alice")
        await ops.advance(store, "phase2", force=True)
        await ops.advance(store, "phase2", to=50, force=True)
        await ops.pause(store, "phase2")
        before = await store.get("phase2")
        history = await store.history("phase2")
        tunables = await store.set_thresholds("phase2", {"min_requests": "77"})
    assert (before.phase, before.weight, before.version) == (Phase.PAUSED, 50, 4)

    killed = _sigkill(embedded(home))  # straight after the last write: no time to fsync
    assert ensure_embedded(home) == url
    assert embedded(home).pid() not in (None, killed)

    async with rollout_store(url, policy) as store:
        after = await store.get("phase2")
        assert after == before
        kept = await store.history("phase2")
        # The thresholds change, written just before the kill, survived as the last entry.
        assert kept[:-1] == history and kept[-1]["action"] == "thresholds"
        assert await store.tunables("phase2") == tunables and tunables["min_requests"] == 77
        # Operators continue from the kept phase and version.
        resumed = await ops.resume(store, "phase2")
        assert (resumed.phase, resumed.weight, resumed.version) == (
            Phase.PROGRESSING, 50, before.version + 1,
        )  # fmt: skip


async def test_embedded_status_shows_persistence_and_stop_keeps_the_data(
    home: Path, tmp_path: Path
) -> None:
    assert embedded_status(home)["running"] is False
    assert stop_embedded(home) is None  # nothing to stop is not an error
    url = ensure_embedded(home)
    doc = embedded_status(home)
    assert doc["running"] is True and doc["pid"] == embedded(home).pid()
    assert (doc["socket"], doc["data_dir"]) == (str(home / "redis.sock"), str(home))
    assert (doc["appendonly"], doc["appendfsync"]) == ("yes", "everysec")
    assert doc["save"] == "3600 1 300 100 60 10000"
    assert doc["used_memory"] > 0 and doc["aof_last_write_status"] == "ok"

    policy = write_policy(tmp_path / "p.yaml", f"d{uuid.uuid4().hex[:8]}")
    async with rollout_store(url, policy) as store:
        started = await ops.start(store, "phase2")
    assert stop_embedded(home) == doc["pid"]
    assert embedded_status(home)["running"] is False
    assert (home / "dump.rdb").stat().st_size > 0 and (home / "appendonly.aof").exists()
    ensure_embedded(home)
    async with rollout_store(url, policy) as store:
        assert await store.get("phase2") == started

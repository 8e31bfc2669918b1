"""Webhook notifications against a real receiver on 127.0.0.1 and real Redis: signed bodies,
retries of a failing receiver, one post per transition with two controllers and across a
failover, final failures and the bounded backlog recorded in the history."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from aiohttp import web

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.procs import free_port
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.controller import run_controller
from lvm_gateway.rollout.notify import DeliveryStats, Notifier
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.gateway_env import gateway
from tests.rolloutkit import rollout_store, write_policy

pytestmark = pytest.mark.integration

SECRET_ENV = "LVMGW_TEST_WEBHOOK_SECRET"
SECRET = "s3cret-for-tests"


@dataclass
class Hook:
    """What one receiver path saw; `fail_first` answers 503 that many times first."""

    fail_first: int = 0
    status: int = 503
    attempts: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[str] = field(default_factory=list)
    bad_signatures: int = 0


@dataclass
class Receiver:
    url: str
    hooks: dict[str, Hook]


@contextlib.asynccontextmanager
async def receiver(hooks: dict[str, Hook]) -> AsyncIterator[Receiver]:
    async def handle(request: web.Request) -> web.Response:
        hook = hooks[request.match_info["name"]]
        raw = await request.read()
        hook.attempts += 1
        if hook.attempts <= hook.fail_first:
            return web.Response(status=hook.status)
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        given = request.headers.get("X-LVMGW-Signature")
        if given is not None and not hmac.compare_digest(given, expected):
            hook.bad_signatures += 1
            return web.Response(status=401)
        hook.bodies.append({**json.loads(raw), "_signed": given is not None})
        hook.deliveries.append(request.headers["X-LVMGW-Delivery"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{name}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Receiver(f"http://127.0.0.1:{port}/hook", hooks)
    finally:
        await runner.cleanup()


def policy_with_hooks(path: Path, prefix: str, hooks: list[dict[str, Any]]) -> Path:
    write_policy(path, prefix)
    doc = yaml.safe_load(path.read_text())
    doc["notifications"] = hooks
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def until(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def controller(
    redis_url: str, prefix: str, identity: str, stats: DeliveryStats
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_controller(redis_url, prefix, stop, identity, lease_seconds=1.0, notifier_stats=stats)
    )
    try:
        yield stop
    finally:
        stop.set()
        # Generous: on a loaded machine the controller's bounded shutdown may take seconds.
        await asyncio.wait_for(task, 15)


async def notes(store: RolloutStore) -> list[str]:
    return [e["reason"] for e in await store.history("phase2") if e["action"] == "notify"]


@pytest.fixture
def prefix(redis_client: redis.Redis) -> str:
    return f"t{uuid.uuid4().hex[:8]}"


async def test_every_transition_is_posted_once_signed_and_retried_by_two_controllers(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    hooks = {"all": Hook(), "flaky": Hook(fail_first=2)}
    async with receiver(hooks) as rx:
        policy = policy_with_hooks(tmp_path / "p.yaml", prefix, [
            {"url": f"{rx.url}/all", "secret_env": SECRET_ENV},
            {"url": f"{rx.url}/flaky", "events": ["promoted", "rolled_back"], "format": "slack"},
        ])  # fmt: skip
        stats = [DeliveryStats(), DeliveryStats()]
        async with (
            rollout_store(redis_url, policy) as store,
            controller(redis_url, prefix, "c1", stats[0]),
            controller(redis_url, prefix, "c2", stats[1]),
        ):
            await ops.start(store, "phase2", "alice")
            await ops.pause(store, "phase2", "alice")
            await ops.resume(store, "phase2", "alice")
            await ops.advance(store, "phase2", force=True, identity="alice")
            await ops.rollback(store, "phase2", "[lane 3] p95 spike", "alice")
            await ops.start(store, "phase2", "alice")
            await ops.advance(store, "phase2", full=True, force=True, identity="alice")
            await until(lambda: len(hooks["all"].bodies) >= 7, 15, "seven events")
            await until(lambda: len(hooks["flaky"].bodies) >= 2, 15, "the flaky hook's two")
            await asyncio.sleep(1.0)  # time enough for a duplicate to show up
            history_notes = await notes(store)

    events = [b["event"] for b in hooks["all"].bodies]
    assert events == [
        "started", "paused", "resumed", "advanced", "rolled_back", "started", "promoted"
    ]  # fmt: skip
    assert len(set(hooks["all"].deliveries)) == 7  # no id twice
    assert hooks["all"].bad_signatures == 0 and all(b["_signed"] for b in hooks["all"].bodies)
    rolled_back = hooks["all"].bodies[4]
    assert rolled_back["rollout"] == "phase2"
    assert rolled_back["phase"] == "RolledBack"
    assert rolled_back["weight"] == 0
    assert rolled_back["reason"] == "[lane 3] p95 spike"
    assert rolled_back["actor"] == "operator" and rolled_back["identity"] == "alice"
    assert hooks["all"].bodies[3]["step"] == 2 and hooks["all"].bodies[3]["steps"] == 4
    assert hooks["all"].bodies[3]["weight"] == 20
    assert datetime.fromisoformat(rolled_back["at"]).tzinfo is not None

    flaky = hooks["flaky"]
    assert flaky.attempts == 4  # two 503s, then the first event, then the second
    assert flaky.bodies[0]["text"].startswith("rollout phase2 rolled_back")
    assert "[lane 3] p95 spike" in flaky.bodies[0]["text"]
    assert not any(b["_signed"] for b in flaky.bodies)

    total = stats[0].counts + stats[1].counts
    label = rx.url.rsplit("/hook", 1)[0]  # both hooks: one host, and paths may hold secrets
    assert total[(label, "rolled_back", "retried")] == 2
    assert total[(label, "rolled_back", "delivered")] == 2
    assert sum(n for (_, _, outcome), n in total.items() if outcome == "delivered") == 9
    assert any("rolled_back ->" in n and "delivered (attempt 3/5)" in n for n in history_notes)
    assert len(history_notes) == 9


async def test_a_new_leader_resumes_where_the_old_one_stopped(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    hooks = {"all": Hook()}
    async with receiver(hooks) as rx:
        policy = policy_with_hooks(tmp_path / "p.yaml", prefix, [{"url": f"{rx.url}/all"}])
        stats = DeliveryStats(), DeliveryStats()
        async with (
            rollout_store(redis_url, policy) as store,
            controller(redis_url, prefix, "first", stats[0]) as first,
        ):
            await ops.start(store, "phase2", "bob")
            await ops.pause(store, "phase2", "bob")
            await until(lambda: len(hooks["all"].bodies) >= 2, 10, "two events")
            sync = redis.Redis.from_url(redis_url)
            keys = RedisKeys(prefix)
            history = keys.rollout("phase2", "history")
            try:
                # Delivery is at least once: a leader stopped between a post and its cursor
                # write leaves that event to its successor (notify.py). What this test checks
                # is the resumption at the cursor, so the step-down waits for the cursor, which
                # moves in one script with the history's delivery note.
                await until(
                    lambda: sum(f[b"action"] == b"notify" for _, f in sync.xrange(history)) >= 2,
                    10,
                    "the cursor past both events",
                )
                async with controller(redis_url, prefix, "second", stats[1]):
                    first.set()  # the leader steps down; the standby takes the lease
                    # The transitions below are the new leader's to post, not a stopping one's.
                    await until(
                        lambda: (sync.get(keys.leader) or b"").endswith(b":second"),
                        10,
                        "the standby leading",
                    )
                    await ops.resume(store, "phase2", "bob")
                    await ops.rollback(store, "phase2", None, "bob")
                    await until(lambda: len(hooks["all"].bodies) >= 4, 10, "four events")
                    await asyncio.sleep(1.0)
            finally:
                sync.close()
    assert [b["event"] for b in hooks["all"].bodies] == [
        "started", "paused", "resumed", "rolled_back"
    ]  # fmt: skip
    delivered = [sum(n for k, n in s.counts.items() if k[2] == "delivered") for s in stats]
    assert delivered == [2, 2]


async def test_a_bounded_backlog_and_a_missing_secret_are_recorded(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    hooks = {"ok": Hook()}
    async with receiver(hooks) as rx:
        policy = policy_with_hooks(tmp_path / "p.yaml", prefix, [
            {"url": f"{rx.url}/ok", "events": ["paused"], "secret_env": SECRET_ENV},
        ])  # fmt: skip
        async with rollout_store(redis_url, policy) as store:
            # Six transitions pile up before any controller runs.
            await ops.start(store, "phase2", "carol")
            for _ in range(2):
                await ops.pause(store, "phase2", "carol")
                await ops.resume(store, "phase2", "carol")
            await ops.pause(store, "phase2", "carol")
            await store.client.set(RedisKeys(prefix).leader, "1:test")  # the notifier leads
            stats = DeliveryStats()
            notifier = Notifier(
                store.client, prefix, "test", lambda: "1:test", stats, poll_s=0.05, max_backlog=4
            )
            task = asyncio.create_task(notifier.run())
            try:
                await until(lambda: len(stats.counts) >= 2, 10, "a drop and a failure")
                await asyncio.sleep(0.5)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            history_notes = await notes(store)
    label = rx.url.rsplit("/hook", 1)[0]
    # Four entries kept (resume, pause, resume, pause); the start and first pause dropped.
    assert (
        history_notes[0] == f"{label}: dropped: over 4 history entries behind; older ones skipped"
    )
    # The secret's variable is unset: the pauses are recorded as not sent, never sent unsigned.
    assert (
        history_notes[1:]
        == [f"paused -> {label}: not sent: ${SECRET_ENV} is not set for the controller"] * 2
    )
    assert hooks["ok"].attempts == 0
    assert stats.counts == {(label, "any", "dropped"): 1, (label, "paused", "failed"): 2}


async def test_a_notifier_cancelled_at_any_moment_stops(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    """Cancelled mid-poll against a real Redis, the notifier stops every time. Before
    redisconn.raise_if_cancelled, redis-py's write under `wait_for` dropped the cancel within
    the first four tries here (three runs) and the notifier polled on forever (the CI hang)."""
    policy = policy_with_hooks(tmp_path / "p.yaml", prefix, [
        {"url": "http://127.0.0.1:9/hook", "events": ["paused"], "secret_env": SECRET_ENV},
    ])  # fmt: skip
    rng = random.Random(7)
    async with rollout_store(redis_url, policy) as store:
        await ops.start(store, "phase2", "gina")
        await store.client.set(RedisKeys(prefix).leader, "1:test")
        for attempt in range(40):
            notifier = Notifier(store.client, prefix, "test", lambda: "1:test", poll_s=0.01)
            task = asyncio.create_task(notifier.run())
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"attempt {attempt}: the notifier ignored its cancellation"


async def test_a_client_error_is_final_after_one_attempt(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    hooks = {"gone": Hook(fail_first=1000, status=410)}
    async with receiver(hooks) as rx:
        policy = policy_with_hooks(tmp_path / "p.yaml", prefix, [{"url": f"{rx.url}/gone"}])
        stats = DeliveryStats()
        async with (
            rollout_store(redis_url, policy) as store,
            controller(redis_url, prefix, "c", stats),
        ):
            await ops.start(store, "phase2", "dave")
            await until(lambda: any(k[2] == "failed" for k in stats.counts), 10, "a failure")
            await asyncio.sleep(0.5)
            history_notes = await notes(store)
    assert hooks["gone"].attempts == 1
    assert history_notes == [
        f"started -> {rx.url.rsplit('/hook', 1)[0]}: failed after 1 attempt(s): HTTP 410"
    ]


async def test_a_gateway_process_sends_and_counts_in_metrics(
    redis_url: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)  # the gateway process inherits it
    hooks = {"all": Hook()}
    async with receiver(hooks) as rx:
        text = policy_with_hooks(tmp_path / "p.yaml", prefix, [
            {"url": f"{rx.url}/all", "secret_env": SECRET_ENV},
        ]).read_text()  # fmt: skip
        with gateway(text, redis_url, tmp_path) as gw:
            async with rollout_store(redis_url, gw.config) as store:
                await ops.start(store, "phase2", "erin")
            await until(lambda: len(hooks["all"].bodies) >= 1, 15, "the started event")

            def delivered() -> float:
                return gw.metric("lvmgw_notifications_total", event="started",
                                 outcome="delivered")  # fmt: skip

            await until(lambda: delivered() == 1, 5, "the delivery in /metrics")
            phase = gw.metric("lvmgw_rollout_phase", rollout="phase2", phase="Progressing")
    assert hooks["all"].bodies[0]["event"] == "started" and hooks["all"].bodies[0]["_signed"]
    assert phase == 1


async def test_two_gateway_replicas_notify_once_even_when_the_leader_is_killed(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    hooks = {"all": Hook()}
    async with receiver(hooks) as rx:
        text = policy_with_hooks(
            tmp_path / "p.yaml", prefix, [{"url": f"{rx.url}/all"}]
        ).read_text()
        with (
            gateway(text, redis_url, tmp_path) as a,
            gateway(text, redis_url, tmp_path) as b,
        ):
            async with rollout_store(redis_url, a.config) as store:
                await ops.start(store, "phase2", "frank")
                await ops.pause(store, "phase2", "frank")
                await until(lambda: len(hooks["all"].bodies) >= 2, 15, "two events")
                holder = (await store.client.get(RedisKeys(prefix).leader)).decode()
                leader = a if holder.endswith(f":{a.proc.pid}") else b
                assert holder.endswith(f":{leader.proc.pid}"), holder
                leader.proc.kill()  # no lease release: the other replica waits for it to expire
                leader.proc.wait(5)
                await ops.resume(store, "phase2", "frank")
                await ops.rollback(store, "phase2", None, "frank")
                await until(lambda: len(hooks["all"].bodies) >= 4, 20, "four events")
                await asyncio.sleep(1.0)
                successor = (await store.client.get(RedisKeys(prefix).leader)).decode()
    assert [b["event"] for b in hooks["all"].bodies] == [
        "started", "paused", "resumed", "rolled_back"
    ]  # fmt: skip
    assert len(set(hooks["all"].deliveries)) == 4
    assert successor != holder

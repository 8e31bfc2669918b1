"""What every chaos scenario shares: its scale, its table row, a load generator, waits on the
rollout's status and history.

`make test` runs the suite bounded (seconds of outage per scenario, 5 broken edits, 3 race
rounds: ~35 s); `make chaos` sets LVM_CHAOS=full for longer outages, more edits, more rounds
and a race of real `rolloutctl` processes. Each
scenario fills one `Scenario` row (requests, failed, state checks passed, time, notes); the
rows are printed as one table at the end of the run (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis.exceptions import RedisError

from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.gateway_env import infer_body

FULL = os.environ.get("LVM_CHAOS", "") == "full"


@dataclass(frozen=True)
class Scale:
    """How hard each scenario pushes; bounded (make test) or full (make chaos)."""

    broken_edits: int  # scenario 1: broken YAML edits, each followed by a good one
    redis_kill_steps: tuple[int, ...]  # scenario 2: the rollout steps Redis is killed at
    redis_outage_s: float  # scenario 2: how long Redis stays dead each time
    canary_dead_s: float  # scenario 3: load kept on after the canary died
    replica_dead_s: float  # scenario 4: load kept on the survivor
    race_rounds: int  # scenario 5: rounds of 100 concurrent in-process callers
    race_processes: int  # scenario 5: concurrent `rolloutctl` processes (one round)
    step_min_seconds: float  # scenarios 2 and 4: how long each rollout step lasts


SCALE = (
    Scale(
        broken_edits=25,
        redis_kill_steps=(0, 1, 2),
        redis_outage_s=4.0,
        canary_dead_s=12.0,
        replica_dead_s=8.0,
        race_rounds=20,
        race_processes=100,
        step_min_seconds=3.0,
    )
    if FULL
    else Scale(
        broken_edits=5,
        redis_kill_steps=(1,),
        redis_outage_s=2.0,
        canary_dead_s=3.0,
        replica_dead_s=3.0,
        race_rounds=3,
        race_processes=0,
        step_min_seconds=2.0,
    )
)

# The row every scenario reports; the conftest prints them all at the end.
COLUMNS = ("scenario", "requests", "failed", "state checks", "time s", "result", "notes")
ROWS: list[tuple[str, ...]] = []


@dataclass
class Scenario:
    """One table row. `check` asserts at once (so a failure stops the scenario where it
    happened) and counts the checks that held; `note` adds what the scenario observed."""

    name: str
    started: float = field(default_factory=time.monotonic)
    loads: list[Load] = field(default_factory=list)
    calls: int = 0  # requests that are not HTTP (the races' operator calls)
    calls_failed: int = 0
    passed: int = 0
    checked: int = 0
    notes: list[str] = field(default_factory=list)
    ok: bool = False

    def check(self, label: str, ok: bool, detail: object = "") -> None:
        self.checked += 1
        assert ok, f"{self.name}: {label} does not hold: {detail}"
        self.passed += 1

    def note(self, text: str) -> None:
        self.notes.append(text)

    def track(self, load: Load) -> Load:
        """Count `load`'s requests in this row (also when the scenario fails half-way)."""
        self.loads.append(load)
        return load

    def row(self) -> tuple[str, ...]:
        return (
            self.name,
            f"{self.calls + sum(load.requests for load in self.loads):,}",
            f"{self.calls_failed + sum(load.failed for load in self.loads):,}",
            f"{self.passed}/{self.checked}",
            f"{time.monotonic() - self.started:.1f}",
            "pass" if self.ok else "FAIL",
            "; ".join(self.notes),
        )


def table(rows: Sequence[tuple[str, ...]]) -> str:
    """The rows as a Markdown table (pasted as is into README.md's Chaos section)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# A connection that broke before an answer: what a load balancer retries on another replica.
_RETRYABLE = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class Load:
    """Threads POSTing /infer back to back as `users` sticky users, round-robin over `targets`.

    A request counts as failed unless it ends in 200. With `retry`, a request whose connection
    failed before any answer (refused, reset, closed) is retried once on each other target, as
    a load balancer in front of replicas would; those retries are counted, not failed.
    """

    def __init__(
        self, targets: Sequence[str], threads: int = 3, users: int = 200, retry: bool = False
    ) -> None:
        self.targets = list(targets)
        self.users = users
        self.retry = retry
        self.requests = 0
        self.failed = 0
        self.retried = 0
        self.variants: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.log: list[tuple[float, str, str]] = []  # (start time, target, variant) of each 200
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        self._body = infer_body(n=2)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, index: int) -> None:
        clients = [httpx.Client(base_url=url, timeout=10.0) for url in self.targets]
        rng = random.Random(index)
        n = index
        try:
            while not self._stop.is_set():
                n += 1
                first = n % len(clients)
                order = [first] + [i for i in range(len(clients)) if i != first]
                self._one(clients, order if self.retry else [first], rng)
                time.sleep(0.002)
        finally:
            for c in clients:
                c.close()

    def _one(self, clients: list[httpx.Client], order: list[int], rng: random.Random) -> None:
        t0 = time.time()
        headers = {"content-type": "application/json", "x-user-id": f"u{rng.randrange(self.users)}"}
        outcome = ""
        for attempt, i in enumerate(order):
            try:
                r = clients[i].post("/infer", content=self._body, headers=headers)
            except _RETRYABLE as exc:
                outcome = type(exc).__name__
                if attempt + 1 < len(order):
                    with self._lock:
                        self.retried += 1
                continue
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
                break
            if r.status_code == 200:
                with self._lock:
                    self.requests += 1
                    self.variants[r.headers.get("x-variant", "")] += 1
                    self.log.append((t0, self.targets[i], r.headers.get("x-variant", "")))
                return
            outcome = f"{r.status_code} {r.text[:120]}"
            break
        with self._lock:
            self.requests += 1
            self.failed += 1
            self.errors[outcome] += 1

    def served_since(self, t: float, target: str | None = None) -> Counter[str]:
        """Variants that answered requests started at or after `t` (on `target` if given)."""
        with self._lock:
            return Counter(v for t0, url, v in self.log if t0 >= t and target in (None, url))

    def wait_for(self, n: int, since: float, timeout_s: float = 30.0) -> None:
        """Block until `n` requests started after `since` were answered."""
        deadline = time.monotonic() + timeout_s
        while sum(self.served_since(since).values()) < n:
            assert time.monotonic() < deadline, f"load stalled: {self.errors}"
            time.sleep(0.05)


def wait(check: Any, timeout_s: float, what: str, every_s: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s waiting for {what}"
        time.sleep(every_s)


# Loose latency bounds: the point of these scenarios is failures, not speed, and several
# processes share two loaded cores; no healthy variant may be rolled back on latency here.
LOOSE: dict[str, Any] = {
    "success": {"p95_ms_max": 1000, "error_rate_max": 0.01},
    "rollback": {"p95_ms_max": 5000, "error_rate_max": 0.05},
}


async def snapshot(
    store: RolloutStore, timeout_s: float = 20.0
) -> tuple[RolloutStatus, list[dict[str, Any]]]:
    """Rollout phase2's status and its history, read consistently (the history's last entry is
    the status's version); a Redis that is restarting is retried."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(RedisError, OSError):
            history = await store.history("phase2")
            status = await store.get("phase2")
            if history and history[-1]["version"] == status.version:
                return status, history
        assert time.monotonic() < deadline, "no consistent status and history"
        await asyncio.sleep(0.05)


# The path of a rollout of steps [10, 50, 100] that the controller promotes after `start`.
PROMOTED_PATH = [
    ("operator", "start", 0),
    ("controller", "advance", 1),
    ("controller", "advance", 2),
    ("controller", "promote", 2),
]


def moves(history: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(actor, action, step) of every history entry: the path the rollout took."""
    return [(e["actor"], e["action"], e["step"]) for e in history]

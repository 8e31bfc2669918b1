"""Scenario 5: 100 operators race advance / rollback / pause / resume / start on one rollout,
each through its own Redis connection, while a controller advances it as fast as it may.

Every round releases 100 in-process `ops` calls at once (an asyncio barrier after each has
connected; half act at once, half within the next 0.5 s); `make chaos` adds a round of real
`rolloutctl` processes. The verdict is read from the history stream alone: every entry must be
a legal move from the one before it.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.errors import ConflictError, InvalidTransitionError
from lvm_gateway.procs import BIN
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.controller import run_controller
from lvm_gateway.rollout.store import RolloutStore
from tests.chaos.kit import SCALE, Scenario
from tests.rolloutkit import rollout_store, write_policy

pytestmark = pytest.mark.integration

RACERS = 100
STEPS = [10.0, 20.0, 50.0, 100.0]
VERBS: dict[str, Callable[[RolloutStore, str, str], Awaitable[RolloutStatus]]] = {
    "advance": lambda store, name, who: ops.advance(store, name, identity=who),
    "pause": lambda store, name, who: ops.pause(store, name, who),
    "resume": lambda store, name, who: ops.resume(store, name, who),
    "rollback": lambda store, name, who: ops.rollback(store, name, identity=who),
    "start": lambda store, name, who: ops.start(store, name, who),
}
# Half the racers act the instant the barrier opens, the others spread over this many seconds,
# so each round sees head-on collisions and a run of successive moves with the controller's.
JITTER_S = 0.5
# rolloutctl processes alive at once: each spends ~1 s of CPU starting Python, so 100 at once on
# two cores starve Redis past rolloutctl's 1 s connect timeout; 20 still overlap their writes.
PROCESS_SLOTS = 20
# Mostly advances: the verb that could skip a step when two race.
MIX = {"advance": 40, "pause": 15, "resume": 15, "rollback": 15, "start": 15}


async def racer(
    url: str, prefix: str, verb: str, who: str, go: asyncio.Barrier, delay: float
) -> str:
    """One operator: connect, wait for everyone, act after `delay`; 'ok', 'conflict', 'refused'
    or the unexpected error."""
    client = open_client(url, timeout_s=30.0)
    try:
        await client.ping()
        await go.wait()
        await asyncio.sleep(delay)
        try:
            await VERBS[verb](RolloutStore(client, prefix), "phase2", who)
        except ConflictError:
            return "conflict"
        except InvalidTransitionError:
            return "refused"
        except Exception as exc:  # anything else is a failure of the scenario
            return f"error: {exc!r}"
        return "ok"
    finally:
        await client.aclose()


async def rolloutctl(url: str, prefix: str, verb: str, slots: asyncio.Semaphore) -> str:
    async with slots:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "rolloutctl"), "--redis", url, "--prefix", prefix, verb, "phase2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
    if proc.returncode == 0:
        return "ok"
    text = err.decode()
    if proc.returncode == 1 and "changed underneath" in text:
        return "conflict"
    if proc.returncode == 1 and "Traceback" not in text:
        return "refused"
    return f"error: exit {proc.returncode}: {text[-300:]}"


def _index(weight: float) -> int:
    return STEPS.index(weight) if weight in STEPS else -1


def _legal(prev: dict[str, Any], entry: dict[str, Any]) -> bool:
    """Whether `entry` is a move the state machine allows from `prev`."""
    last = len(STEPS) - 1
    was, now = prev["phase"], entry["phase"]
    same_step = entry["step"] == prev["step"]
    match entry["action"]:
        case "start":
            return was in ("Pending", "RolledBack") and now == "Progressing" and entry["step"] == 0
        case "advance":
            if was not in ("Progressing", "Paused"):
                return False
            if now == "Promoted":
                return bool(prev["step"] == last and same_step)
            return bool(now == "Progressing" and entry["step"] == prev["step"] + 1)
        case "promote":
            return was == "Progressing" and prev["step"] == last and now == "Promoted"
        case "pause":
            return was == "Progressing" and now == "Paused" and same_step
        case "resume":
            return was == "Paused" and now == "Progressing" and same_step
        case "rollback":
            stoppable = was in ("Progressing", "Paused", "Promoted")
            return stoppable and now == "RolledBack" and same_step
    return False


def audit(history: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every violation in the history, by rule (each list empty when the history is sound)."""
    found: dict[str, list[Any]] = {k: [] for k in ("versions", "legal", "weights", "resurrected")}
    prev: dict[str, Any] = {"phase": "Pending", "step": -1, "weight": 0.0, "action": ""}
    for n, entry in enumerate(history, 1):
        if entry["version"] != n:
            found["versions"].append((n, entry["version"]))
        if not _legal(prev, entry):
            found["legal"].append((prev, entry))
        phase, weight = entry["phase"], entry["weight"]
        expected = 0.0 if phase == "RolledBack" else STEPS[entry["step"]]
        moved = abs(_index(weight) - _index(prev["weight"]))
        if weight != expected or (entry["action"] not in ("start", "rollback") and moved > 1):
            found["weights"].append((prev["weight"], entry))
        if prev["phase"] == "RolledBack" and entry["action"] != "start":
            found["resurrected"].append(entry)
        prev = entry
    return found


async def test_concurrent_rolloutctl_races(
    scenario: Scenario, redis_url: str, tmp_path: Path
) -> None:
    """5. 100 concurrent rolloutctl races."""
    policy = write_policy(
        tmp_path / "policy.yaml", f"c{uuid.uuid4().hex[:8]}", steps=STEPS,
        step_min_seconds=0, interval_seconds=0.05, min_requests=0, success={}, rollback={},
    )  # fmt: skip
    rng = random.Random(5)
    outcomes: Counter[tuple[str, str]] = Counter()
    errors: list[str] = []
    async with rollout_store(redis_url, policy) as store:
        await ops.start(store, "phase2")
        stop = asyncio.Event()
        # Nothing to judge (no thresholds, no minimum): the controller advances every 50 ms.
        controller = asyncio.create_task(
            run_controller(redis_url, store.prefix, stop, "chaos-controller", tick_seconds=0.02)
        )
        try:
            for r in range(SCALE.race_rounds):
                go = asyncio.Barrier(RACERS)
                verbs = rng.choices(list(MIX), weights=list(MIX.values()), k=RACERS)
                results = await asyncio.gather(
                    *(racer(redis_url, store.prefix, v, f"racer-{r}-{i}", go,
                            rng.choice((0.0, rng.uniform(0, JITTER_S))))
                      for i, v in enumerate(verbs))
                )  # fmt: skip
                outcomes.update(zip(verbs, (s.split(":")[0] for s in results), strict=True))
                errors += [s for s in results if s.startswith("error")]
                await asyncio.sleep(0.2)  # the controller's turn
            if SCALE.race_processes:
                verbs = rng.choices(list(MIX), weights=list(MIX.values()), k=SCALE.race_processes)
                slots = asyncio.Semaphore(PROCESS_SLOTS)
                results = await asyncio.gather(
                    *(rolloutctl(redis_url, store.prefix, v, slots) for v in verbs)
                )
                outcomes.update(zip(verbs, (s.split(":")[0] for s in results), strict=True))
                errors += [s for s in results if s.startswith("error")]
        finally:
            stop.set()
            await controller
        history = await store.history("phase2")
        final = await store.get("phase2")

    calls = sum(outcomes.values())
    scenario.calls, scenario.calls_failed = calls, len(errors)
    ok = {v: outcomes[(v, "ok")] for v in MIX}
    actors = Counter(e["actor"] for e in history)
    cycles = Counter(e["action"] for e in history)
    by_outcome = Counter(o for (_, o), n in outcomes.items() for _ in range(n))
    processes = f" + {SCALE.race_processes} rolloutctl processes" if SCALE.race_processes else ""
    scenario.note(
        f"{calls} calls ({SCALE.race_rounds} x {RACERS} in-process{processes}): succeeded {ok}, "
        f"{by_outcome['conflict']} conflicts, {by_outcome['refused']} refused; history "
        f"{len(history)} entries ({actors['controller']} by the controller), "
        f"{cycles['start']} starts, {cycles['rollback']} rollbacks, "
        f"{cycles['promote'] + cycles['advance']} advances/promotions"
    )
    found = audit(history)
    scenario.check("no unexpected error", not errors, errors[:3])
    scenario.check("versions 1..n without a gap", not found["versions"], found["versions"][:3])
    scenario.check(
        "each success is one history entry",
        sum(ok.values()) + 1 == actors["operator"],  # + the opening start
        (ok, actors),
    )
    scenario.check("every entry a legal move", not found["legal"], found["legal"][:3])
    scenario.check("weights one step at a time", not found["weights"], found["weights"][:3])
    scenario.check("no resurrected rollback", not found["resurrected"], found["resurrected"][:3])
    scenario.check("status is the last entry", final.version == len(history), final)
    scenario.check("the races raced", outcomes[("advance", "conflict")] > 0, outcomes)


def test_the_audit_catches_a_skipped_step_and_a_resurrected_rollback() -> None:
    def entry(version: int, action: str, phase: str, step: int, weight: float) -> dict[str, Any]:
        return {"version": version, "action": action, "phase": phase, "step": step,
                "weight": weight}  # fmt: skip

    sound = [entry(1, "start", "Progressing", 0, 10), entry(2, "advance", "Progressing", 1, 20)]
    assert not any(audit(sound).values())
    skipped = [*sound[:1], entry(2, "advance", "Progressing", 2, 50)]
    assert audit(skipped)["legal"] and audit(skipped)["weights"]
    rolled = [*sound, entry(3, "rollback", "RolledBack", 1, 0)]
    resurrected = [*rolled, entry(4, "resume", "Progressing", 1, 20)]
    assert audit(resurrected)["resurrected"] and audit(resurrected)["legal"]
    assert audit([*rolled, entry(5, "start", "Progressing", 0, 10)])["versions"] == [(4, 5)]

"""Scenario 4: one of two gateway replicas (the controller's lease holder) is SIGKILLed.

Two load generators: one plays a load balancer in front of both replicas (requests alternate
between them; a request whose connection fails before any answer, refused, reset or closed
mid-way, is retried on the other replica: `/infer` is a pure prediction, so a retry is safe;
retries are counted in the row's notes, not as failures), the other sends to the survivor alone
and never retries. For both, any answer other than 200 is a failure.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import orjson
import pytest

from lvm_gateway.contract.rollout import Phase
from lvm_gateway.procs import stop
from lvm_gateway.rollout import ops
from tests.chaos.kit import (
    LOOSE,
    PROMOTED_PATH,
    SCALE,
    Load,
    Scenario,
    moves,
    snapshot,
    wait,
)
from tests.integration.gateway_env import Gateway, gateway
from tests.rolloutkit import rollout_store, until_status, write_policy

pytestmark = pytest.mark.integration


def sampled_answer(gw: Gateway) -> tuple[str, str, list[float]]:
    """(request id, feedback token, predicted vector) of an answer the gateway recorded."""

    def recorded() -> tuple[str, str, list[float]] | None:
        r = gw.infer()
        token = r.headers.get("x-feedback-token")
        if token is None:
            return None
        return r.headers["x-request-id"], token, r.json()["predicted_vector"]

    return wait(recorded, 30, "a sampled answer", every_s=0)


async def test_one_of_two_replicas_sigkilled(
    scenario: Scenario, stubs: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """4. One of two gateway replicas SIGKILLed."""
    policy = write_policy(
        tmp_path / "policy.yaml", f"c{uuid.uuid4().hex[:8]}", stubs["phase1"], stubs["phase2"],
        fallback=True, steps=[10, 50, 100], step_min_seconds=SCALE.step_min_seconds,
        interval_seconds=0.2, min_requests=10, **LOOSE,
    )  # fmt: skip
    text = policy.read_text()
    async with rollout_store(redis_url, policy) as store:
        with gateway(text, redis_url, tmp_path) as a, gateway(text, redis_url, tmp_path) as b:
            replicas = {a.proc.pid: a, b.proc.pid: b}
            with scenario.track(Load([a.url, b.url], retry=True)) as load:
                await ops.start(store, "phase2")
                await until_status(store, lambda s: s.step == 1, 60, "the advance to 50%")
                leader = (await store.client.get(store.keys.leader)).decode()
                victim = replicas[int(leader.rsplit(":", 1)[1])]
                survivor = b if victim is a else a
                # An answer of the victim's, to be scored on the survivor after the kill.
                rid, token, vector = await asyncio.to_thread(sampled_answer, victim)
                await asyncio.sleep(0.5)  # records reach Redis within ~100 ms
                # Clients of the survivor alone, without any retry, must not notice the kill.
                with scenario.track(Load([survivor.url], threads=1)) as direct:
                    before, history = await snapshot(store)
                    stop(victim.proc, sig=signal.SIGKILL)
                    killed_at = time.time()
                    await asyncio.sleep(SCALE.replica_dead_s)
                    feedback = await asyncio.to_thread(
                        survivor.http.post,
                        "/v1/feedback",
                        content=orjson.dumps({"request_id": rid, "clicked_vector": vector}),
                        headers={"X-Feedback-Token": token},
                    )
                    done = await until_status(
                        store, lambda s: s.phase != Phase.PROGRESSING, 90, "the rollout to finish"
                    )
                new_leader = (await store.client.get(store.keys.leader)).decode()
                served = load.served_since(killed_at, survivor.url)
            final = (await snapshot(store))[1]

    survivor_id = new_leader.split(":", 1)[1]
    scenario.note(
        f"killed the lease holder at {before.weight:g}% (version {before.version}); the "
        f"survivor served {sum(served.values())} requests after it, {load.retried} requests "
        f"retried on it, {direct.requests} more sent to it alone; its controller took the "
        f"lease and {done.phase} the rollout"
    )
    scenario.check("no failed request (both, retried)", load.failed == 0, load.errors)
    scenario.check("no failed request (survivor only)", direct.failed == 0, direct.errors)
    scenario.check("the survivor kept serving", sum(served.values()) > 0, served)
    scenario.check("history kept whole", final[: len(history)] == history, final)
    scenario.check(
        "the victim's recorded answer scored on the survivor",
        feedback.status_code == 202 and bool(feedback.json()["recorded"]),
        feedback.text,
    )
    scenario.check(
        "the survivor took the lease",
        int(new_leader.rsplit(":", 1)[1]) == survivor.proc.pid,
        new_leader,
    )
    scenario.check("promoted by the survivor", done.phase == Phase.PROMOTED, done)
    scenario.check("every step once, in order", moves(final) == PROMOTED_PATH, moves(final))
    after = {e["identity"] for e in final[len(history) :]}
    scenario.check("the moves after the kill are the survivor's", after == {survivor_id}, after)

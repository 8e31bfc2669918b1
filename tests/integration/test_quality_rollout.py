"""Quality signals as rollout gates, end to end.

Real `lvm-serve` and `lvm-gateway serve` processes on 127.0.0.1, a real Redis, `lvm-traffic`'s
users replaying the synthetic world and posting the true next concept as feedback, the gateway's
own controller, and the real `rolloutctl` for status and history.

The model servers answer with the analytic phase2 model; with 8 context vectors its Hit@5 proxy
is ~0.55 on every lane. The bad canaries are knobs of the same server: `--degrade-lane` on every
lane (~0.15 everywhere), on lane 3 only (~0.15 there, unchanged elsewhere), and `--nan-rate`.
Quality bounds sit far from those rates; latency bounds are loose (two shared cores).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvm_gateway.contract.rollout import Phase, RolloutStatus
from lvm_gateway.lvm.traffic import TrafficConfig, TrafficReport, run_traffic
from lvm_gateway.procs import BIN
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.gateway_env import Gateway, gateway, model_servers
from tests.rolloutkit import rollout_store

pytestmark = pytest.mark.integration

NAME = "candidate"  # the rollout, named after its canary variant
STABLE = "champion"
EVERY_LANE = [arg for lane in range(16) for arg in ("--degrade-lane", str(lane))]

# Stable answers ~0.55 Hit@5, a degraded lane ~0.15: the bounds sit well inside that gap.
SUCCESS = {"p95_ms_max": 1000, "error_rate_max": 0.05, "hit5_min": 0.35, "lane_delta_max": 0.15,
           "invalid_rate_max": 0.0}  # fmt: skip
ROLLBACK = {"p95_ms_max": 2000, "error_rate_max": 0.5, "hit5_min": 0.25, "lane_delta_max": 0.25,
            "invalid_rate_max": 0.01}  # fmt: skip


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    specs = {
        "stable": ["phase2", "--latency-ms", "0"],
        "good": ["phase2", "--latency-ms", "0"],
        "degraded": ["phase2", "--latency-ms", "0", *EVERY_LANE],
        "lane3": ["phase2", "--latency-ms", "0", "--degrade-lane", "3"],
        "nan": ["phase2", "--latency-ms", "0", "--nan-rate", "0.3"],
    }
    with model_servers(specs, tmp_path_factory.mktemp("servers")) as urls:
        yield urls


def write_policy(tmp: Path, stable_url: str, canary_url: str, **rollout: Any) -> Path:
    """champion (stable) and candidate (canary) on /infer, a rollout `candidate` of the route."""
    doc = {
        "redis_prefix": f"q{uuid.uuid4().hex[:8]}",
        "variants": {
            STABLE: {"url": stable_url, "timeout_ms": 2000},
            NAME: {"url": canary_url, "timeout_ms": 2000},
        },
        "routes": [
            {
                "path": "/infer",
                "fallback": False,
                "policy": {
                    "canary": {
                        "stable": STABLE,
                        "canary": NAME,
                        "weight": 0,
                        "sticky": {"header": "X-User-Id"},
                    }
                },
            }
        ],
        "feedback": {"ttl_seconds": 60, "sample_rate": 1.0},
        "rollouts": {
            NAME: {
                "route": "/infer",
                "step_min_seconds": 1,
                "interval_seconds": 0.2,
                "min_requests": 20,
                "min_feedback": 20,
                "failure_limit": 2,
                "max_hold_seconds": 120,
                "success": SUCCESS,
                "rollback": ROLLBACK,
                **rollout,
            }
        },
    }
    path = tmp / f"policy-{doc['redis_prefix']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def users(url: str, **kw: Any) -> TrafficConfig:
    """lvm-traffic's users: every answer rated with the world's true next concept."""
    return TrafficConfig(gateway=url, **{"rps": 40.0, "duration": 60.0, "users": 100,
                                         "context": 8, "feedback_rate": 1.0, "concurrency": 32,
                                         **kw})  # fmt: skip


@contextlib.asynccontextmanager
async def background(*configs: TrafficConfig) -> AsyncIterator[list[TrafficReport]]:
    """Traffic running while the body waits. The list holds the reports as they grow; on exit it
    is replaced by copies taken before the traffic is cancelled (cancelling fails requests)."""
    reports: list[TrafficReport] = []

    def keep(report: TrafficReport) -> None:
        if not any(r is report for r in reports):
            reports.append(report)

    tasks = [asyncio.create_task(run_traffic(cfg, keep)) for cfg in configs]
    try:
        yield reports
    finally:
        reports[:] = copy.deepcopy(reports)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.3)  # let the cancelled requests' tasks finish quietly


async def until(
    store: RolloutStore, check: Callable[[RolloutStatus], bool], within_s: float
) -> RolloutStatus:
    deadline = time.monotonic() + within_s
    while True:
        status = await store.get(NAME)
        if check(status):
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last status {status}")
        await asyncio.sleep(0.1)


async def rolloutctl(redis_url: str, store: RolloutStore, *verb: str) -> Any:
    """The real CLI; its --json output parsed."""
    done = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "rolloutctl"), "--redis", redis_url, "--prefix", store.prefix, *verb, "--json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def served_by(reports: list[TrafficReport]) -> dict[str, int]:
    out: dict[str, int] = {}
    for report in reports:
        for variant, stats in report.variants.items():
            out[variant] = out.get(variant, 0) + stats.requests
    return out


def names_a_hit_rate(reason: str) -> bool:
    """The judge rolls back on whichever Hit@K test shows harm first (or the hit5 guard)."""
    return any(f"hit{k}" in reason for k in (1, 5, 10))


def only_stable_after(gw: Gateway, n: int = 20) -> set[str]:
    """Variants serving n fresh users once a rollback has reached the gateway."""
    seen = set()
    for i in range(n):
        r = gw.infer({"x-user-id": f"after-{i}"})
        assert r.status_code == 200, r.text
        seen.add(r.headers["x-variant"])
    return seen


async def test_quality_regression_is_rolled_back(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # The canary answers every lane badly: its Hit@5 proxy (~0.15) is far below rollback's 0.25.
    policy = write_policy(tmp_path, servers["stable"], servers["degraded"], steps=[20, 50, 100],
                          step_min_seconds=60)  # fmt: skip
    async with rollout_store(redis_url, policy) as store:
        with gateway(policy.read_text(), redis_url, tmp_path) as gw:
            async with background(users(gw.url)) as reports:
                await ops.start(store, NAME)
                done = await until(store, lambda s: s.phase != Phase.PROGRESSING, 40)
                await asyncio.sleep(0.5)
            assert only_stable_after(gw) == {STABLE}
            canary_hits = gw.metric("lvmgw_hit_proxy_total", variant=NAME, k="5")
            canary_scored = gw.metric("lvmgw_scored_answers_total", variant=NAME)
            stable_hits = gw.metric("lvmgw_hit_proxy_total", variant=STABLE, k="5")
            stable_scored = gw.metric("lvmgw_scored_answers_total", variant=STABLE)
        history = await rolloutctl(redis_url, store, "history", NAME)
    assert (done.phase, done.weight, done.step) == (Phase.ROLLED_BACK, 0.0, 0), done.reason
    assert names_a_hit_rate(done.reason), done.reason
    last = history[-1]
    assert (last["actor"], last["phase"]) == ("controller", "RolledBack")
    assert names_a_hit_rate(last["reason"]) and last["metrics"]["hit5"] < ROLLBACK["hit5_min"]
    assert [e["action"] for e in history if e["actor"] == "controller"][-1] == "rollback"
    # The gateway's own Prometheus view agrees: the canary's proxy is far below stable's.
    assert canary_scored >= 10 and stable_scored >= 40
    assert canary_hits / canary_scored < 0.25 < 0.45 < stable_hits / stable_scored
    # Every answer, either variant's, reached the users as a success.
    total = served_by(reports)
    assert total.get(NAME, 0) > 0 and all(
        not s.errors for r in reports for s in r.variants.values()
    )


async def test_lane_only_regression_is_rolled_back(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # Degraded on lane 3 only. Users on every lane plus more on lane 3, so that lane is the first
    # with 20 feedbacks per variant to compare (~4 s; any other lane needs ~20 s); lane 3 is still
    # a quarter of the traffic, so the canary's overall Hit@5 (~0.45) passes its success bound.
    success, rollback = {**SUCCESS, "hit5_min": 0.3}, {**ROLLBACK, "hit5_min": 0.2}
    policy = write_policy(tmp_path, servers["stable"], servers["lane3"], steps=[50, 100],
                          step_min_seconds=60, success=success, rollback=rollback)  # fmt: skip
    async with rollout_store(redis_url, policy) as store:
        with gateway(policy.read_text(), redis_url, tmp_path) as gw:
            everyone = users(gw.url, rps=32.0, users=320)
            lane3 = users(gw.url, rps=8.0, users=80, lane=3, seed=7)
            async with background(everyone, lane3):
                await ops.start(store, NAME)
                done = await until(store, lambda s: s.phase != Phase.PROGRESSING, 45)
                await asyncio.sleep(0.5)
            assert only_stable_after(gw) == {STABLE}
            lane_hit = {
                v: gw.metric("lvmgw_hit_proxy_total", variant=v, k="5", lane="lane_3")
                / max(1.0, gw.metric("lvmgw_scored_answers_total", variant=v, lane="lane_3"))
                for v in (STABLE, NAME)
            }
        history = await rolloutctl(redis_url, store, "history", NAME)
    assert (done.phase, done.weight) == (Phase.ROLLED_BACK, 0.0), done.reason
    # The judge's lane test (or the lane_delta guard) names the lane.
    assert "lane_hit5@lane_3" in done.reason or "lane_delta" in done.reason, done.reason
    assert "lane_3" in done.reason
    last = history[-1]
    assert (last["actor"], last["phase"]) == ("controller", "RolledBack")
    assert last["metrics"]["lane_delta"] > 0  # a shortfall beyond noise on lane 3
    # Overall the canary looked fine: its Hit@5 proxy met even the success bound.
    assert "hit5 " not in last["reason"]
    assert last["metrics"]["hit5"] >= success["hit5_min"]
    assert lane_hit[NAME] < 0.3 < 0.45 < lane_hit[STABLE]


async def test_nan_predictions_are_never_a_success_and_roll_back(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # 30% of the canary's answers carry NaN. error_rate (0.3) stays inside its loose bounds: the
    # invalid-prediction rate is what must roll it back.
    policy = write_policy(tmp_path, servers["stable"], servers["nan"], steps=[50, 100],
                          step_min_seconds=60)  # fmt: skip
    async with rollout_store(redis_url, policy) as store:
        with gateway(policy.read_text(), redis_url, tmp_path) as gw:
            async with background(users(gw.url)) as reports:
                await ops.start(store, NAME)
                done = await until(store, lambda s: s.phase != Phase.PROGRESSING, 40)
                await asyncio.sleep(0.5)
            assert only_stable_after(gw) == {STABLE}
            invalid = gw.metric("lvmgw_invalid_predictions_total", variant=NAME)
            bad_status = gw.metric("lvmgw_requests_total", variant=NAME, status="502")
        history = await rolloutctl(redis_url, store, "history", NAME)
    assert (done.phase, done.weight) == (Phase.ROLLED_BACK, 0.0), done.reason
    # The judge sees the NaN answers as errors too (they are 502s): what matters is that the
    # invalid-prediction signal names them.
    assert "invalid_rate" in done.reason
    assert history[-1]["metrics"]["invalid_rate"] > ROLLBACK["invalid_rate_max"]
    canary = [r.variants[NAME] for r in reports if NAME in r.variants]
    stable = [r.variants[STABLE] for r in reports if STABLE in r.variants]
    # lvm-traffic checks every 200 for a finite 768-d vector ("bad answer" otherwise): none.
    assert all("bad answer" not in s.errors for s in canary + stable)
    assert sum(s.ok for s in canary) > 0 and sum(s.errors["502"] for s in canary) > 0
    assert set().union(*(s.errors for s in canary)) == {"502"}
    assert all(not s.errors for s in stable)
    assert invalid >= sum(s.errors["502"] for s in canary) and bad_status == invalid


async def test_shadow_step_measures_the_canary_with_zero_user_exposure(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    # The shadow step cannot pass before it has 10,000 feedbacks: the test lowers that bar once
    # it has seen what was measured, so the shadow phase ends when the test says, not a clock.
    policy = write_policy(tmp_path, servers["stable"], servers["good"],
                          steps=["shadow", 10, 100], min_feedback=10_000)  # fmt: skip
    async with rollout_store(redis_url, policy) as store:
        with gateway(policy.read_text(), redis_url, tmp_path) as gw:
            await ops.start(store, NAME)
            shadow = await run_traffic(users(gw.url, duration=4.0))
            await asyncio.sleep(0.5)  # the last feedbacks reach the windows
            held = await rolloutctl(redis_url, store, "status", NAME)
            mirrored = gw.metric("lvmgw_mirror_requests_total", variant=NAME, outcome="sent")
            canary_scored = gw.metric("lvmgw_scored_answers_total", variant=NAME)
            canary_hits = gw.metric("lvmgw_hit_proxy_total", variant=NAME, k="5")
            stable_scored = gw.metric("lvmgw_scored_answers_total", variant=STABLE)
            stable_served = gw.metric("lvmgw_requests_total", variant=STABLE, status="200")
            canary_served = gw.metric("lvmgw_requests_total", variant=NAME)

            # The controller moves shadow -> 10 on the canary's shadow measurements.
            cli = await asyncio.to_thread(
                subprocess.run,
                [str(BIN / "rolloutctl"), "--redis", redis_url, "--prefix", store.prefix,
                 "thresholds", NAME, "min_feedback=40"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            async with background(users(gw.url, seed=1)) as later:
                # Every lane needs lane_min_feedback a side before the judge clears it.
                moved = await until(store, lambda s: s.step >= 1 or s.phase != Phase.PROGRESSING,
                                    60)  # fmt: skip
                at_ten = time.monotonic()
                while served_by(later).get(NAME, 0) < 5 and time.monotonic() - at_ten < 10:
                    await asyncio.sleep(0.2)
        history = await store.history(NAME)

    # While in shadow, no user was answered by the canary ...
    assert (held["phase"], held["step"], held["weight"]) == ("Progressing", 0, 0.0)
    assert set(shadow.variants) == {STABLE}, shadow.variants.keys()
    stats = shadow.variants[STABLE]
    assert stats.requests >= 100 and stats.ok == stats.requests
    assert canary_served == 0  # the gateway labelled no client response with the canary
    # ... yet every request was mirrored to it, and the users' feedback scored its answers too.
    assert mirrored >= 0.9 * stable_served
    assert canary_scored >= 0.9 * stable_scored and stable_scored >= stats.feedback_sent * 0.9
    assert 0.45 < canary_hits / canary_scored < 0.7
    # The controller counted the canary's shadow calls and feedback in the windows it judges.
    hit5 = next(m for m in held["metrics"] if m["metric"] == "hit5")
    assert hit5["samples"] >= 0.9 * stats.feedback_sent and hit5["value"] > SUCCESS["hit5_min"]
    assert held["requests"] >= 0.9 * stats.requests
    assert "hit5" in held["next"] and "10000" in held["next"], held["next"]

    assert (moved.phase, moved.step, moved.weight) == (Phase.PROGRESSING, 1, 10.0), moved.reason
    advance = next(e for e in history if e["action"] == "advance" and e["step"] == 1)
    assert advance["actor"] == "controller"
    assert advance["metrics"]["hit5"] is not None and advance["metrics"]["hit5"] > 0.45
    assert advance["metrics"]["lane_delta"] is not None
    # At 10% the canary now serves users of its own.
    assert served_by(later).get(NAME, 0) >= 5


async def test_a_bad_canary_is_rolled_back_from_shadow_before_any_user_sees_it(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = write_policy(tmp_path, servers["stable"], servers["degraded"],
                          steps=["shadow", 10, 100])  # fmt: skip
    async with rollout_store(redis_url, policy) as store:
        with gateway(policy.read_text(), redis_url, tmp_path) as gw:
            async with background(users(gw.url)) as reports:
                await ops.start(store, NAME)
                done = await until(store, lambda s: s.phase != Phase.PROGRESSING, 40)
                await asyncio.sleep(0.5)
            mirrored = gw.metric("lvmgw_mirror_requests_total", variant=NAME, outcome="sent")
            canary_served = gw.metric("lvmgw_requests_total", variant=NAME)
        history = await store.history(NAME)
    assert (done.phase, done.step, done.weight) == (Phase.ROLLED_BACK, 0, 0.0), done.reason
    assert names_a_hit_rate(done.reason), done.reason
    # Judged in shadow and rolled back there (the judge's evidence of harm, or an SLO guard's
    # breach twice in a row): never at a user step.
    moves = [(e["action"], e["step"], e["weight"]) for e in history]
    assert moves[0] == ("start", 0, 0.0) and moves[-1] == ("rollback", 0, 0.0), moves
    assert {m[1:] for m in moves} == {(0, 0.0)}, moves
    assert served_by(reports).keys() == {STABLE} and canary_served == 0
    assert mirrored >= 20

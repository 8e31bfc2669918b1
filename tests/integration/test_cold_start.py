"""Fail-safe cold starts, with real gateway processes: a gateway that starts while Redis is
unreachable never routes users to a canary by the YAML's weight. It routes by the statuses it
last saved, or, with none, holds every rollout's canary at weight 0, and /readyz says why."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.store import RolloutStore
from tests.integration.gateway_env import Gateway, gateway, model_servers

pytestmark = pytest.mark.integration

PREFIX = "coldstart"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    specs = {"phase1": ["phase1", "--latency-ms", "0"], "phase2": ["phase2", "--latency-ms", "0"]}
    with model_servers(specs, tmp_path_factory.mktemp("servers")) as urls:
        yield urls


def policy(servers: dict[str, str]) -> str:
    # weight: 50 in the file; the rollout in Redis decides.
    return f"""
redis_prefix: {PREFIX}
variants:
  phase1: {{url: "{servers["phase1"]}"}}
  phase2: {{url: "{servers["phase2"]}"}}
routes:
  - path: /infer
    policy: {{canary: {{stable: phase1, canary: phase2, weight: 50}}}}
rollouts:
  phase2: {{route: /infer, steps: [50, 100], step_min_seconds: 3600}}
"""


def split(gw: Gateway, users: int = 100) -> Counter[str]:
    return Counter(gw.infer({"X-User-Id": f"user-{i}"}).headers["x-variant"] for i in range(users))


async def _run(redis_url: str, verb: str) -> None:
    client = open_client(redis_url)
    try:
        store = RolloutStore(client, PREFIX)
        if verb == "start":
            await ops.start(store, "phase2")
        else:
            await ops.rollback(store, "phase2", reason="bad canary")
    finally:
        await client.aclose()


def test_no_redis_and_no_snapshot_serves_stable_only(
    servers: dict[str, str], tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway(policy(servers), dead, tmp_path) as gw:
        assert split(gw) == {"phase1": 100}
        ready = gw.http.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["redis"] == "unreachable"
        assert any("weight 0" in r for r in ready["reasons"]), ready


def test_a_cold_start_routes_by_the_saved_snapshot_and_never_resurrects_a_rollback(
    servers: dict[str, str], redis_url: str, redis_client: object, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway(policy(servers), redis_url, tmp_path) as gw:
        asyncio.run(_run(redis_url, "start"))  # Progressing at 50%
        gw.wait_until(lambda: split(gw, 40)["phase2"] > 0)
    with gateway(policy(servers), dead, tmp_path) as gw:  # same home, Redis gone
        seen = split(gw)
        assert 25 <= seen["phase2"] <= 75, seen  # the saved 50%, not 0 and not a guess
        assert "snapshot saved" in " ".join(gw.http.get("/readyz").json()["reasons"])
    with gateway(policy(servers), redis_url, tmp_path) as gw:
        asyncio.run(_run(redis_url, "rollback"))
        gw.wait_until(lambda: split(gw, 40) == {"phase1": 40})
    with gateway(policy(servers), dead, tmp_path) as gw:
        assert split(gw) == {"phase1": 100}  # RolledBack stays rolled back, whatever the YAML

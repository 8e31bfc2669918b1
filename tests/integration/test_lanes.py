"""One TMD parser end to end: a request that names its lane only in `X-TMD-Domain` is routed by
it (the mixture's gate), counted under it (the rollout windows in Redis) and judged under it
(the lane rows the analysis reads), through real gateway and model-server processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.observations import VariantWindow
from lvm_gateway.rollout.store import RolloutStore
from lvm_gateway.rollout.windows import read_windows
from tests.integration.gateway_env import gateway, infer_body, model_servers

pytestmark = pytest.mark.integration

PREFIX = "lanes"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    specs = {"phase1": ["phase1", "--latency-ms", "0"], "phase2": ["phase2", "--latency-ms", "0"]}
    with model_servers(specs, tmp_path_factory.mktemp("servers")) as urls:
        yield urls


def mixture(servers: dict[str, str]) -> str:
    experts = ", ".join(f"e{i}" for i in range(16))
    variants = "\n".join(f'  e{i}: {{url: "{servers["phase2"]}"}}' for i in range(16))
    return f"""
variants:
{variants}
routes:
  - path: /infer
    fallback: false
    policy: {{tmd: {{name: moe, experts: [{experts}], top_k: 1, deadline_ms: 2000}}}}
"""


def canary(servers: dict[str, str]) -> str:
    return f"""
redis_prefix: {PREFIX}
feedback: {{sample_rate: 1.0}}
variants:
  phase1: {{url: "{servers["phase1"]}"}}
  phase2: {{url: "{servers["phase2"]}"}}
routes:
  - path: /infer
    policy:
      canary: {{stable: phase1, canary: phase2, weight: 50, sticky: {{header: X-User-Id}}}}
rollouts:
  phase2: {{route: /infer, steps: [50, 100], step_min_seconds: 3600}}
"""


def test_x_tmd_domain_is_routed_counted_and_judged_as_its_lane(
    servers: dict[str, str], redis_url: str, redis_client: object, tmp_path: Path
) -> None:
    with gateway(mixture(servers), redis_url, tmp_path) as gw:
        # Routed: the mixture's default gate sends lane 3 to expert 3.
        r = gw.infer({"X-TMD-Domain": "3"})
        assert r.status_code == 200, r.text
        assert [e["expert"] for e in r.json()["experts"]] == ["e3"]
    with gateway(canary(servers), redis_url, tmp_path) as gw:
        asyncio.run(_start(redis_url))
        served: dict[str, int] = {}
        for i in range(60):
            r = gw.infer({"X-TMD-Domain": "3", "X-User-Id": f"user-{i}"}, body=infer_body(seed=i))
            assert r.status_code == 200, r.text
            served[r.headers["x-variant"]] = served.get(r.headers["x-variant"], 0) + 1
            vec = r.json()["predicted_vector"]
            fb = {
                "request_id": r.headers["x-request-id"],
                "token": r.headers["x-feedback-token"],
                "clicked_vector": vec,
            }
            for _ in range(40):  # the record reaches Redis within ~100 ms
                answer = gw.http.post("/v1/feedback", content=orjson.dumps(fb))
                if answer.status_code != 404:
                    break
                time.sleep(0.05)
            assert answer.status_code == 202, answer.text
            assert answer.json()["lane"] == "lane_3"
        assert set(served) == {"phase1", "phase2"}
        windows, lanes = asyncio.run(_observe(redis_url))

    # Counted: every request and feedback of both variants under lane_3, none under `none`.
    for variant in ("phase1", "phase2"):
        w = windows[variant]
        assert w.get("n", "lane_3") == served[variant] == w.get("n")
        assert w.get("feedback", "lane_3") == served[variant]
        assert w.get("n", "none") == 0
    # Judged: the analysis's lane table compares the two variants on lane_3.
    (row,) = lanes
    assert row["lane"] == "lane_3"
    assert row["feedback"] == served["phase2"] and row["stable_feedback"] == served["phase1"]
    assert row["hit5"] == pytest.approx(1.0) and row["stable_hit5"] == pytest.approx(1.0)
    assert np.isfinite(row["delta"])


async def _start(redis_url: str) -> None:
    client = open_client(redis_url)
    try:
        await ops.start(RolloutStore(client, PREFIX), "phase2")
    finally:
        await client.aclose()


async def _observe(redis_url: str) -> tuple[dict[str, VariantWindow], list[dict[str, Any]]]:
    client = open_client(redis_url)
    try:
        store = RolloutStore(client, PREFIX)
        deadline = time.monotonic() + 5
        while True:  # the gateways flush their windows every second
            now = time.time()
            windows = await read_windows(client, PREFIX, ["phase1", "phase2"], now - 120, now)
            doc = await ops.describe(store, "phase2")
            total = sum(w.get("feedback") for w in windows.values())
            if total >= 60 or time.monotonic() > deadline:
                return windows, doc["lanes"]
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()

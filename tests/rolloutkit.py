"""Helpers shared by the rollout integration tests: a policy file and synthetic traffic."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml
from redis.exceptions import RedisError

from lvm_gateway.config.load import load_config
from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.redisconn import open_client
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.store import RolloutStore


def write_policy(
    path: Path,
    prefix: str,
    stable_url: str = "http://127.0.0.1:9",
    canary_url: str = "http://127.0.0.1:9",
    fallback: bool = False,
    **rollout: Any,
) -> Path:
    """A policy with phase1 (stable) and phase2 (canary) on /infer, driven by rollout `phase2`;
    with `fallback`, a failing canary is answered by phase1."""
    doc = {
        "redis_prefix": prefix,
        "variants": {
            "phase1": {"url": stable_url, "timeout_ms": 2000},
            "phase2": {"url": canary_url, "timeout_ms": 2000},
        },
        "routes": [
            {
                "path": "/infer",
                "fallback": fallback,
                "policy": {
                    "canary": {
                        "stable": "phase1",
                        "canary": "phase2",
                        "weight": 0,
                        "sticky": {"header": "X-User-Id"},
                    }
                },
            }
        ],
        "rollouts": {
            "phase2": {
                "route": "/infer",
                "steps": [10, 20, 50, 100],
                "step_min_seconds": 0.3,
                "interval_seconds": 0.1,
                "min_requests": 20,
                "failure_limit": 2,
                "success": {"p95_ms_max": 5, "error_rate_max": 0.001},
                "rollback": {"p95_ms_max": 10, "error_rate_max": 0.01},
                **rollout,
            }
        },
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def feed(
    recorder: WindowRecorder, variant: str, n: int, latency_ms: float, errors: int = 0
) -> None:
    for i in range(n):
        recorder.record_request(variant, latency_ms / 1000, i < errors)


@contextlib.asynccontextmanager
async def rollout_store(redis_url: str, policy: Path) -> AsyncIterator[RolloutStore]:
    config = load_config(policy)
    client = open_client(redis_url)
    store = RolloutStore(client, config.spec.redis_prefix)
    await store.register_specs(config)
    try:
        yield store
    finally:
        await client.aclose()


async def until_status(
    store: RolloutStore, check: Callable[[RolloutStatus], bool], timeout_s: float, what: str = ""
) -> RolloutStatus:
    """Poll rollout phase2 until `check` holds; a Redis that is restarting under the test is
    retried."""
    deadline = time.monotonic() + timeout_s
    status = None
    while True:
        with contextlib.suppress(RedisError, OSError):
            status = await store.get("phase2")
            if check(status):
                return status
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {status}"
        await asyncio.sleep(0.05)

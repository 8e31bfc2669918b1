"""A real `lvm-gateway serve --admin-port` on 127.0.0.1 with two rollouts, for the admin tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from lvm_gateway.procs import free_port, start, stop, wait_http
from lvm_gateway.rollout.agent.recorder import WindowRecorder

TOKEN_ENV = "LVMGW_TEST_ADMIN_TOKEN"
TOKEN = "test-token-0123456789abcdef"


def _rollout(route: str) -> dict[str, object]:
    return {
        "route": route,
        "steps": ["shadow", 10, 20, 50, 100],
        "step_min_seconds": 0,  # each controller pass with passing data advances one step
        "min_requests": 20,
        "min_feedback": 10,
        "success": {"p95_ms_max": 5, "error_rate_max": 0.01, "hit5_min": 0.6},
        "rollback": {"p95_ms_max": 10, "error_rate_max": 0.05, "hit5_min": 0.55},
    }


def write_policy(path: Path, prefix: str) -> Path:
    """phase1 -> phase2 on /infer (rollout phase2) and phase2 -> slow on /b (rollout slow)."""
    nowhere = "http://127.0.0.1:9"  # the admin tests send no requests through the gateway
    doc = {
        "redis_prefix": prefix,
        "variants": {v: {"url": nowhere} for v in ("phase1", "phase2", "slow")},
        "routes": [
            {"path": "/infer", "policy": {"canary": {"stable": "phase1", "canary": "phase2"}}},
            {"path": "/b", "policy": {"canary": {"stable": "phase2", "canary": "slow"}}},
        ],
        "rollouts": {"phase2": _rollout("/infer"), "slow": _rollout("/b")},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass(frozen=True)
class AdminGateway:
    url: str  # the status page, ending in /
    prefix: str
    log: Path


@contextmanager
def admin_gateway(
    redis_url: str, workdir: Path, token: str | None = TOKEN
) -> Iterator[AdminGateway]:
    """The gateway (no controller: only the test moves rollouts) with its status page."""
    prefix = f"adm{uuid.uuid4().hex[:8]}"
    policy = write_policy(workdir / f"{prefix}.yaml", prefix)
    port, admin_port = free_port(), free_port()
    log = workdir / f"{prefix}.log"
    proc = start(
        ["lvm-gateway", "serve", "--config", str(policy), "--port", str(port),
         "--redis", redis_url, "--no-controller", "--admin-port", str(admin_port),
         "--admin-token-env", TOKEN_ENV, "--log-level", "warning"],
        env={TOKEN_ENV: token or ""},
        health_url=f"http://127.0.0.1:{port}/readyz",
        log=log,
    )  # fmt: skip
    url = f"http://127.0.0.1:{admin_port}/"
    try:
        wait_http(f"{url}api/v1/rollouts", 10, proc)
        yield AdminGateway(url, prefix, log)
    finally:
        stop(proc)


def traffic(
    recorder: WindowRecorder, variant: str, n: int, latency_ms: float, errors: int, hits: int
) -> None:
    """n requests of one variant into the recorder's current bucket, n // 2 of them scored."""
    for i in range(n):
        recorder.record_request(variant, latency_ms / 1000, i < errors, lane=f"lane_{i % 12}")
    for i in range(n // 2):
        recorder.incr(variant, "feedback", lane=f"lane_{i % 12}")
        if i < hits:
            recorder.incr(variant, "hit5", lane=f"lane_{i % 12}")

"""The TMD mixture through a real gateway in front of real expert servers."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from lvm_gateway.procs import free_port, start, stop
from tests.integration.gateway_env import gateway, infer_body

pytestmark = pytest.mark.integration


def expert_config(urls: list[str], extra: str = "") -> str:
    variants = "\n".join(
        f'  e{i}: {{url: "{urls[i % len(urls)]}", timeout_ms: 1000}}' for i in range(16)
    )
    experts = ", ".join(f"e{i}" for i in range(16))
    return (
        f'variants:\n{variants}\n  champion: {{url: "{urls[-1]}"}}\n'
        "routes:\n  - path: /infer\n    fallback: false\n    policy:\n"
        "      canary: {stable: champion, weight: 100, canary: "
        f"{{tmd: {{name: moe, experts: [{experts}], top_k: 2{extra}}}}}}}\n"
    )


def test_killing_an_expert_mid_traffic_fails_no_request(redis_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        procs, urls = [], []
        for _ in range(4):
            port = free_port()
            procs.append(
                start(
                    ["lvm-serve", "--profile", "phase2", "--latency-ms", "0", "--port", str(port)],
                    health_url=f"http://127.0.0.1:{port}/health",
                )
            )
            stack.callback(stop, procs[-1])
            urls.append(f"http://127.0.0.1:{port}")
        gw = stack.enter_context(gateway(expert_config(urls), redis_url, tmp_path))
        statuses, experts_seen = [], []
        for i in range(120):
            if i == 40:
                stop(procs[3])  # serves e3, e7, e11, e15: lane 3's first choice is gone
            r = gw.infer(body=infer_body(tmd=(3, 1, 2), seed=i))
            statuses.append(r.status_code)
            assert r.status_code == 200, (i, r.text)
            doc = r.json()
            assert doc["model_type"] == "tmd_mixture" and r.headers["x-variant"] == "moe"
            assert np.linalg.norm(doc["predicted_vector"]) == pytest.approx(1.0, abs=1e-4)
            experts_seen.append(tuple(e["expert"] for e in doc["experts"]))
        assert experts_seen[0] == ("e3", "e0")  # the default gate: lane i -> expert i first
        assert all("e3" not in seen for seen in experts_seen[41:])
        assert gw.metric("lvmgw_expert_calls_total", expert="e3", outcome="error") >= 1
        assert gw.metric("lvmgw_expert_masked_total", expert="e3") >= 1  # circuit opened
        assert gw.metric("lvmgw_expert_calls_total", expert="e0", outcome="answered") == 120


def test_an_expert_past_its_deadline_is_masked(redis_url: str, tmp_path: Path) -> None:
    with ExitStack() as stack:
        urls = []
        for latency in ("0", "400"):
            port = free_port()
            proc = start(
                ["lvm-serve", "--profile", "phase2", "--latency-ms", latency, "--port", str(port)],
                health_url=f"http://127.0.0.1:{port}/health",
            )
            stack.callback(stop, proc)
            urls.append(f"http://127.0.0.1:{port}")
        # Even experts are fast, odd ones slow: lane 1 asks e1 (slow) first, then e0 (fast).
        gw = stack.enter_context(
            gateway(expert_config(urls, ", deadline_ms: 100"), redis_url, tmp_path)
        )
        t0 = time.monotonic()
        r = gw.infer(body=infer_body(tmd=(1, 0, 0)))
        assert time.monotonic() - t0 < 0.35
        assert r.status_code == 200 and [e["expert"] for e in r.json()["experts"]] == ["e0"]
        assert gw.metric("lvmgw_expert_calls_total", expert="e1", outcome="deadline") == 1

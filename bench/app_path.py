"""The gateway app's own Python per small request, in-process: where a request's time goes.

The app (`GatewayApp`, with its real data plane on a real Redis) is called with ASGI messages
in this process, one request at a time, and the upstream exchange is replaced by the answer a
real `lvm-serve --profile stub` gave (768 numbers and 10 neighbours, 3.6 KB, with its headers):
a `MockTransport` returns it without a socket. So the figure is the app's Python alone
(routing, policy, inspection, records, metrics, windows, the data plane's own background work)
with warm caches: a floor, not what a worker pays (`make bench` measures that: the server, the
sockets and the kernel come on top). Single rounds still move by 20% on this VM; the minimum
over interleaved rounds is the steadier figure. Configurations:

- `default`: answers inspected, 10% recorded for feedback (what `make bench` measures);
- `no records`: inspected, none recorded;
- `no inspect`: the answer is relayed unread (no validity, empty-hit or lane signals).

    python -m bench.app_path [--requests 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench.harness import REQUEST_BODY, Harness, stop_on_signals
from bench.proxy_bench import (
    Bench,
    canary_config,
    no_inspect_config,
    records_config,
    start_upstreams,
)
from lvm_gateway.config.load import parse_config
from lvm_gateway.gateway.app import GatewayApp
from lvm_gateway.gateway.transport import MockTransport
from lvm_gateway.gateway.upstream import UpstreamPool
from lvm_gateway.rollout.agent.dataplane import RolloutDataPlane

# The configurations measured, as proxy_bench's rows of the same names build them.
CONFIGS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "default": canary_config,
    "no records": lambda bench: records_config(bench, 0),
    "no inspect": no_inspect_config,
}


async def _measure(
    apps: dict[str, GatewayApp], requests: int, rounds: int
) -> dict[str, list[float]]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000), "root_path": "",
        "method": "POST", "path": "/infer", "raw_path": b"/infer", "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8080"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(REQUEST_BODY)).encode())],
    }  # fmt: skip
    message = {"type": "http.request", "body": REQUEST_BODY, "more_body": False}
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return message

    async def send(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            status.append(event["status"])

    per_request: dict[str, list[float]] = {name: [] for name in apps}
    for r in range(rounds):
        order = list(apps) if r % 2 == 0 else list(apps)[::-1]
        for name in order:
            app = apps[name]
            for _ in range(requests // 10):  # warm up this configuration's caches
                await app(dict(scope), receive, send)
            status.clear()
            t0 = time.process_time()
            for _ in range(requests):
                await app(dict(scope), receive, send)
            per_request[name].append((time.process_time() - t0) / requests * 1e6)
            if status.count(200) != requests:
                raise SystemExit(f"{name}: {requests - status.count(200)} answers were not 200")
        print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {v[-1]:.1f} us" for n, v in per_request.items()), flush=True)  # fmt: skip
    return per_request


async def _run(
    bench: Bench, upstream: MockTransport, requests: int, rounds: int
) -> dict[str, list[float]]:
    apps: dict[str, GatewayApp] = {}
    for name, build in CONFIGS.items():
        config = parse_config(build(bench))
        plane = RolloutDataPlane(
            redis_url=bench.redis_url,
            prefix=config.spec.redis_prefix,
            run_controller=False,
            identity=f"{socket.gethostname()}:{os.getpid()}:{name}",
            state_dir=bench.harness.workdir,
        )
        apps[name] = GatewayApp(
            config, plane, bench.redis_url, watch=False, upstreams=UpstreamPool(upstream.factory)
        )
    for app in apps.values():
        await app.startup()
    try:
        return await _measure(apps, requests, rounds)
    finally:
        for app in apps.values():
            await app.shutdown()


def _canned_upstream(url: str) -> MockTransport:
    """Every upstream call answers what `url` answered once, without a socket."""
    answer = httpx.post(f"{url}/infer", content=REQUEST_BODY)
    headers = list(answer.headers.raw)
    return MockTransport(lambda *_: (answer.status_code, list(headers), answer.content))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.app_path", description=__doc__)
    p.add_argument("--requests", type=int, default=5000, help="requests per configuration")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    with stop_on_signals(), tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        bench = Bench(h, "stub")
        start_upstreams(bench)
        upstream = _canned_upstream(bench.upstream_url)
        result = uvloop.run(_run(bench, upstream, args.requests, args.rounds))
    base = min(result["default"])
    print(f"\nCPU per request over {args.rounds} rounds of {args.requests} (min, median):")
    for name, values in result.items():
        low, med = min(values), statistics.median(values)
        print(f"  {name:<11} {low:6.1f} us {med:6.1f} us  ({low - base:+.1f} us vs default)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

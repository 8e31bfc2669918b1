"""Upstream client micro-benchmark: h1pool against aiohttp's client, same loop, same upstream.

Both clients run through the interface the conformance suite tests them with
(tests/conformance/clients.py), on uvloop as the gateway does, against one nginx worker on
loopback answering a small JSON body. Rounds alternate between the clients so drift in machine
load hits both; the best round of each is reported, with the client process's CPU time per
request (the figure that caps a gateway worker).

    python -m bench.client_compare [--requests N] [--rounds R] [--concurrency C]

Measured on the 2-core shared dev machine (load average ~2, Python 3.11, uvloop, nginx 1 worker,
5,000 requests a round, best of 5):

    concurrency   client     req/s  CPU us/req
              1   h1pool    46,619        11.7
              1  aiohttp     7,394        69.6   -> h1pool 6.3x
             32   h1pool    36,058        10.2
             32  aiohttp    10,014        55.1   -> h1pool 3.6x

The conformance cases (tests/conformance/test_client.py) pass on both clients except one:
aiohttp does not resend a request whose reused keep-alive connection the server had closed
(ServerDisconnectedError), where h1pool retries once on a fresh connection. h1pool stays.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import uvloop

from bench.harness import REQUEST_BODY, Harness, stop_on_signals
from lvm_gateway.procs import free_port
from tests.conformance.clients import CLIENTS, Client

ANSWER = '{"predicted_vector": [0.1, 0.2, 0.3], "model": "bench"}'
HEADERS = {"content-type": "application/json", "x-user-id": "user-1", "x-request-id": "r"}


async def one_round(client: Client, requests: int, concurrency: int) -> tuple[float, float]:
    """(requests per second, client CPU microseconds per request)."""

    async def worker(n: int) -> None:
        for _ in range(n):
            status, _, _ = await client.request("POST", "/infer", REQUEST_BODY, HEADERS)
            assert status == 200

    await worker(50)  # warm the pool
    share = requests // concurrency
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(share) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = share * concurrency
    return done / wall, cpu / done * 1e6


async def compare(url: str, requests: int, rounds: int, concurrency: int) -> dict[str, tuple]:
    best: dict[str, tuple[float, float]] = {}
    clients = {name: cls(url) for name, cls in CLIENTS.items()}
    try:
        for _ in range(rounds):
            for name, client in clients.items():
                rps, us = await one_round(client, requests, concurrency)
                if name not in best or rps > best[name][0]:
                    best[name] = (rps, us)
    finally:
        for client in clients.values():
            await client.close()
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.client_compare", description=__doc__)
    p.add_argument("--requests", type=int, default=5000, help="requests per round and client")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    args = p.parse_args(argv)
    with stop_on_signals(), tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        port = free_port()
        h.nginx("nginx-upstream", port, f"""
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location = /infer {{ default_type application/json; return 200 '{ANSWER}'; }}
    }}""")  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        print(f"{'concurrency':>11} {'client':>8} {'req/s':>9} {'CPU us/req':>10}")
        for c in args.concurrency:
            best = uvloop.run(compare(url, args.requests, args.rounds, c))
            for name, (rps, us) in best.items():
                print(f"{c:>11} {name:>8} {rps:>9.0f} {us:>10.1f}")
            ratio = best["h1pool"][0] / best["aiohttp"][0]
            print(f"{c:>11} {'ratio':>8} {ratio:>9.2f}x  (h1pool / aiohttp req/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

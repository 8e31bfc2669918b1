"""The rollout sums' cost over a 4-week rollout: Redis memory per rollout, and the time of one
analysis's read, against reading 10 minutes of raw 5 s buckets (the old horizon).

Simulated time on a real redis-server: every simulated hour, a burst of traffic touching every
counter on all 16 lanes for both variants, flushed by a gateway's recorder and folded by the
controller's `fold`, through the steps [shadow, 10, 20, 50, 100] of a week each (after a day of
shadow). Then the sums are measured with MEMORY USAGE and `observe` is timed.

    python -m bench.rollout_sums [--weeks N]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from lvm_gateway.contract.lvm import N_LANES
from lvm_gateway.contract.rollout import Phase, RolloutStatus
from lvm_gateway.contract.windows import (
    DIVERTED,
    EMPTY,
    FEEDBACK,
    HITS,
    INVALID,
    LATENCY_BOUNDS_S,
)
from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import open_client, start_redis_server
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.aggregates import fold, observe
from lvm_gateway.rollout.windows import read_windows

T0 = 1_700_000_000.0
HOUR, DAY = 3600.0, 86_400.0
PREFIX = "bench"


def burst(rec: WindowRecorder, rng: random.Random) -> None:
    for variant in ("phase1", "phase2"):
        for _ in range(200):
            lane = f"lane_{rng.randrange(N_LANES)}"
            rec.record_request(
                variant, rng.choice(LATENCY_BOUNDS_S) * 0.9, rng.random() < 0.01, lane
            )
            for counter in (FEEDBACK, *HITS.values(), EMPTY, INVALID, DIVERTED):
                rec.incr(variant, counter, lane=lane)


async def run(weeks: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis_server("--port", str(port), "--bind", "127.0.0.1", cwd=Path(tmp))
        try:
            await asyncio.sleep(0.3)
            client = open_client(f"redis://127.0.0.1:{port}/0")
            clock = [T0]
            rec = WindowRecorder(PREFIX, clock=lambda: clock[0])
            rng = random.Random(7)
            status = RolloutStatus(
                "phase2", Phase.PROGRESSING, 0, 0.0, 100.0, "phase1", "phase2", "", T0, T0, T0
            )
            boundaries = [T0 + DAY + i * (weeks * 7 * DAY - DAY) / 4 for i in range(4)]
            for hour in range(int(weeks * 7 * 24)):
                clock[0] = T0 + hour * HOUR
                step = sum(1 for b in boundaries if clock[0] >= b)
                if step != status.step:
                    status = status.evolve(step=step, step_started_at=clock[0])
                burst(rec, rng)
                await rec.flush(client)
                await fold(client, PREFIX, status, clock[0] + 30)
            now = clock[0] + 60
            keys = [k.decode() for k in await client.keys(f"{PREFIX}:agg:*")]
            sizes = [await client.memory_usage(k) or 0 for k in keys]
            fields = [await client.hlen(k) for k in keys if not k.endswith(":mark")]
            sums = await observe(client, PREFIX, status, now)
            assert sums.canary_rollout is not None
            reads = []
            for _ in range(50):
                t = time.perf_counter()
                await observe(client, PREFIX, status, now)
                reads.append(time.perf_counter() - t)
            # The old read: 10 minutes of 5 s buckets, every one filled like a busy minute.
            for second in range(0, 600, 5):
                clock[0] = now - 600 + second
                burst(rec, rng)
            await rec.flush(client)
            raw = []
            for _ in range(10):
                t = time.perf_counter()
                await read_windows(client, PREFIX, ["phase1", "phase2"], now - 600, now)
                raw.append(time.perf_counter() - t)
            await client.aclose()
        finally:
            server.terminate()
            server.wait(5)
    print(f"simulated {weeks} weeks: {sums.canary_rollout.requests:,} canary requests summed")
    print(f"sums: {len(keys)} keys, {sum(sizes) / 1024:.1f} KB ({max(fields)} fields per hash)")
    print(f"one analysis's read (observe): median {statistics.median(reads) * 1000:.1f} ms")
    print(f"10 minutes of raw 5 s buckets (read_windows): median "
          f"{statistics.median(raw) * 1000:.1f} ms")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weeks", type=float, default=4)
    asyncio.run(run(p.parse_args().weeks))


if __name__ == "__main__":
    main()

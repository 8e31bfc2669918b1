"""Per-variant request windows: counted in-process per request, flushed to Redis in pipelines.

Each gateway process adds its counts for a time bucket into the same Redis hash with HINCRBY,
so the replicas' windows merge in Redis by addition (histograms included) and the controller
reads one hash per variant and bucket:

    {prefix}:win:{variant}:{bucket}  -> {n, err, lat:<i>, <counter>, <counter>@<lane>, ...}

`bucket` is the bucket's start in whole seconds (contract.windows names the counters and sizes
the buckets). Keys expire after WINDOW_TTL_SECONDS.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.contract.windows import (
    BUCKET_SECONDS,
    ERRORS,
    REQUESTS,
    WINDOW_TTL_SECONDS,
    lane_field,
    latency_field,
)

# Counts that could not be flushed are kept for a retry, but not beyond this age.
_MAX_RETAINED_BUCKETS = WINDOW_TTL_SECONDS // BUCKET_SECONDS

Cell = dict[str, int]


class WindowRecorder:
    """Counts per (bucket, variant). The hot path is dict arithmetic only, never I/O."""

    def __init__(
        self,
        prefix: str,
        bucket_seconds: int = BUCKET_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = RedisKeys(prefix)
        self.bucket_seconds = bucket_seconds
        self._clock = clock
        self._cells: dict[tuple[int, str], Cell] = {}

    def _cell(self, variant: str) -> Cell:
        bucket = int(self._clock()) // self.bucket_seconds * self.bucket_seconds
        cell = self._cells.get((bucket, variant))
        if cell is None:
            cell = self._cells[(bucket, variant)] = {}
        return cell

    def record_request(
        self, variant: str, latency_s: float, error: bool, lane: str | None = None
    ) -> None:
        cell = self._cell(variant)
        lat = latency_field(latency_s)
        cell[REQUESTS] = cell.get(REQUESTS, 0) + 1
        cell[lat] = cell.get(lat, 0) + 1
        if error:
            cell[ERRORS] = cell.get(ERRORS, 0) + 1
        if lane is not None:
            n_lane = lane_field(REQUESTS, lane)
            cell[n_lane] = cell.get(n_lane, 0) + 1
            if error:
                err_lane = lane_field(ERRORS, lane)
                cell[err_lane] = cell.get(err_lane, 0) + 1

    def incr(self, variant: str, metric: str, n: int = 1, lane: str | None = None) -> None:
        cell = self._cell(variant)
        cell[metric] = cell.get(metric, 0) + n
        if lane is not None:
            key = lane_field(metric, lane)
            cell[key] = cell.get(key, 0) + n

    @property
    def pending(self) -> int:
        """Cells not yet flushed (for tests and for /readyz detail)."""
        return len(self._cells)

    async def flush(self, client: aioredis.Redis) -> int:
        """Write every pending cell in one pipeline; returns the cells written.

        On a Redis error the cells are merged back for the next attempt and the error raised.
        """
        cells, self._cells = self._cells, {}
        if not cells:
            return 0
        pipe = client.pipeline(transaction=False)
        for (bucket, variant), cell in cells.items():
            key = self.keys.window(variant, bucket)
            for name, n in cell.items():
                pipe.hincrby(key, name, n)
            pipe.expire(key, WINDOW_TTL_SECONDS)
        try:
            await pipe.execute()
        except Exception:
            self._retain(cells)
            raise
        return len(cells)

    def _retain(self, cells: dict[tuple[int, str], Cell]) -> None:
        oldest = int(self._clock()) - WINDOW_TTL_SECONDS
        for (bucket, variant), cell in cells.items():
            if bucket < oldest:
                continue
            mine = self._cells.setdefault((bucket, variant), {})
            for name, n in cell.items():
                mine[name] = mine.get(name, 0) + n
        while len(self._cells) > _MAX_RETAINED_BUCKETS * 4:
            del self._cells[min(self._cells)]

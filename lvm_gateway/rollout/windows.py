"""Reading the rollout windows: every replica's counts for a variant, per time bucket or summed
over a time range.

The gateways' rollout agents write them (agent/recorder.py); the names and bucket size are the
contract's (contract/windows.py, contract/keys.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import redis.asyncio as aioredis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.contract.windows import BUCKET_SECONDS
from lvm_gateway.redisconn import text
from lvm_gateway.rollout.observations import VariantWindow

Counts = dict[str, int]


async def read_buckets(
    client: aioredis.Redis, prefix: str, variants: Iterable[str], buckets: range
) -> dict[str, list[tuple[int, Counts]]]:
    """Each variant's non-empty buckets among `buckets` (their start times), with their counts.
    One round trip."""
    keys = RedisKeys(prefix)
    names = list(dict.fromkeys(variants))
    pipe = client.pipeline(transaction=False)
    for variant in names:
        for bucket in buckets:
            pipe.hgetall(keys.window(variant, bucket))
    replies = iter(await pipe.execute())
    out: dict[str, list[tuple[int, Counts]]] = {v: [] for v in names}
    for variant in names:
        for bucket in buckets:
            raw = next(replies)
            if raw:
                out[variant].append((bucket, counts_of(raw)))
    return out


async def read_windows(
    client: aioredis.Redis,
    prefix: str,
    variants: Iterable[str],
    since: float,
    until: float,
    bucket_seconds: int = BUCKET_SECONDS,
) -> dict[str, VariantWindow]:
    """Every replica's counts for each variant, summed over the buckets overlapping the range."""
    first = int(since) // bucket_seconds * bucket_seconds
    buckets = range(first, int(until) + 1, bucket_seconds)
    out: dict[str, VariantWindow] = {}
    for variant, found in (await read_buckets(client, prefix, variants, buckets)).items():
        window = VariantWindow()
        for _, counts in found:
            window = window.merged(counts)
        out[variant] = window
    return out


def counts_of(raw: Mapping[bytes | str, bytes | str]) -> Counts:
    """A Redis hash of counters as {name: count}."""
    return {text(k): int(v) for k, v in raw.items()}

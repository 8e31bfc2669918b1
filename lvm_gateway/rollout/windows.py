"""Reading the rollout windows: every replica's counts for a variant, summed over a time range.

The gateways' rollout agents write them (agent/recorder.py); the names and bucket size are the
contract's (contract/windows.py, contract/keys.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as aioredis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.contract.windows import BUCKET_SECONDS
from lvm_gateway.rollout.observations import VariantWindow


async def read_buckets(
    client: aioredis.Redis,
    prefix: str,
    variants: Iterable[str],
    since: float,
    until: float,
    bucket_seconds: int = BUCKET_SECONDS,
) -> list[tuple[int, dict[str, VariantWindow]]]:
    """Every replica's counts for each variant, per time bucket overlapping the range, oldest
    first: (bucket start, {variant: window}). One pipelined round trip."""
    keys = RedisKeys(prefix)
    names = list(dict.fromkeys(variants))
    first = int(since) // bucket_seconds * bucket_seconds
    buckets = range(first, int(until) + 1, bucket_seconds)
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        for variant in names:
            pipe.hgetall(keys.window(variant, bucket))
    replies = iter(await pipe.execute())
    return [
        (bucket, {v: VariantWindow({_text(k): int(n) for k, n in next(replies).items()})
                  for v in names})
        for bucket in buckets
    ]  # fmt: skip


async def read_windows(
    client: aioredis.Redis,
    prefix: str,
    variants: Iterable[str],
    since: float,
    until: float,
    bucket_seconds: int = BUCKET_SECONDS,
) -> dict[str, VariantWindow]:
    """Every replica's counts for each variant, summed over the buckets overlapping the range."""
    names = list(dict.fromkeys(variants))
    out = {v: VariantWindow() for v in names}
    for _, windows in await read_buckets(client, prefix, names, since, until, bucket_seconds):
        for variant, window in windows.items():
            if window.counts:
                out[variant] = out[variant].merged(window.counts)
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

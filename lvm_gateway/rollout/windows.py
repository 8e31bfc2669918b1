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


async def read_windows(
    client: aioredis.Redis,
    prefix: str,
    variants: Iterable[str],
    since: float,
    until: float,
    bucket_seconds: int = BUCKET_SECONDS,
) -> dict[str, VariantWindow]:
    """Every replica's counts for each variant, summed over the buckets overlapping the range."""
    keys = RedisKeys(prefix)
    names = list(dict.fromkeys(variants))
    first = int(since) // bucket_seconds * bucket_seconds
    buckets = range(first, int(until) + 1, bucket_seconds)
    pipe = client.pipeline(transaction=False)
    for variant in names:
        for bucket in buckets:
            pipe.hgetall(keys.window(variant, bucket))
    replies = iter(await pipe.execute())
    out: dict[str, VariantWindow] = {}
    for variant in names:
        window = VariantWindow()
        for _ in buckets:
            raw = next(replies)
            if raw:
                window = window.merged({_text(k): int(v) for k, v in raw.items()})
        out[variant] = window
    return out


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

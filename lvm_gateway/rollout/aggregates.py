"""Windows without a horizon: a rollout's counters summed per step and per run, at fixed size.

The gateways write 5 s buckets that expire after WINDOW_TTL_SECONDS (agent/recorder.py). Each
controller pass folds the buckets that have settled since its last fold into running sums, one
hash per (rollout run, scope, variant):

    {prefix}:agg:{name}:{run}:rollout:{variant}          since the run started
    {prefix}:agg:{name}:{run}:step:{i}:{since}:{variant} since step i (re)started at `since`
    {prefix}:agg:{name}:{run}:mark                       the last bucket folded

`run` is the rollout's start time and `since` the step's, in ms, so a retry or a resume starts
new sums while the old ones stay readable until they expire. A hash holds the same counters as
one bucket (counts and fixed-bucket histograms add), so its size does not grow with time: a step
of a week costs what a step of a minute does, to keep and to read. The canary and the stable
variant are folded from the same buckets by the same pass, so they always cover the same
period; the stable variant's run sums keep its per-lane baseline after it stops serving (at
the 100% step).

An analysis reads the sums plus the few buckets not yet folded, so it sees every request.

Exactly once: the fold is a MULTI/EXEC watched on the mark; a second controller folding the
same buckets at the same moment (a lease hand-over) fails its EXEC and folds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.contract.rollout import RolloutStatus
from lvm_gateway.contract.windows import BUCKET_SECONDS, WINDOW_TTL_SECONDS
from lvm_gateway.rollout.observations import Observations, VariantWindow
from lvm_gateway.rollout.windows import Counts, counts_of, read_buckets

ROLLOUT_SCOPE = "rollout"
# A bucket is folded once it ended this long ago: gateways flush every second, so later
# writes into it are a replica's retry after a Redis outage (lost to the sums, as they would
# be to an expired bucket).
SETTLE_SECONDS = 5
# Sums outlive their last fold by this long; every fold of an active rollout renews them.
AGGREGATE_TTL_SECONDS = 30 * 86400


def run_id(status: RolloutStatus) -> str:
    assert status.started_at is not None
    return str(round(status.started_at * 1000))


def step_scope(status: RolloutStatus) -> str:
    assert status.step_started_at is not None
    return f"step:{status.step}:{round(status.step_started_at * 1000)}"


def _variants(status: RolloutStatus) -> list[str]:
    return list(dict.fromkeys(v for v in (status.canary, status.stable) if v is not None))


def _floor(t: float) -> int:
    return int(t) // BUCKET_SECONDS * BUCKET_SECONDS


def _first_unfolded(mark: bytes | str | None, status: RolloutStatus, now: float) -> int:
    """The oldest bucket not in the sums yet, never one already expired."""
    assert status.started_at is not None
    first = _floor(status.started_at) if mark is None else int(mark) + BUCKET_SECONDS
    return max(first, _floor(now - WINDOW_TTL_SECONDS) + BUCKET_SECONDS)


def _in_step(bucket: int, status: RolloutStatus) -> bool:
    # The bucket in which the step began counts towards it, as in any bucketed window.
    assert status.step_started_at is not None
    return bucket + BUCKET_SECONDS > status.step_started_at


def _add(into: Counts, counts: Mapping[str, int]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


async def fold(client: aioredis.Redis, prefix: str, status: RolloutStatus, now: float) -> int:
    """Add the settled buckets since the last fold to the run's and the step's sums; renew
    their expiry. Returns the buckets folded (0 as well when another fold won the race)."""
    if status.started_at is None or status.step_started_at is None:
        return 0
    keys = RedisKeys(prefix)
    run, scope = run_id(status), step_scope(status)
    variants = _variants(status)
    mark_key = keys.fold_mark(status.name, run)
    settled = _floor(now - SETTLE_SECONDS) - BUCKET_SECONDS  # the last bucket that has ended
    async with client.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(mark_key)
            first = _first_unfolded(await pipe.get(mark_key), status, now)
            pending = range(first, settled + 1, BUCKET_SECONDS)
            found = await read_buckets(client, prefix, variants, pending)
            pipe.multi()
            for variant, buckets in found.items():
                whole: Counts = {}
                step: Counts = {}
                for bucket, counts in buckets:
                    _add(whole, counts)
                    if _in_step(bucket, status):
                        _add(step, counts)
                for key, sums in (
                    (keys.aggregate(status.name, run, ROLLOUT_SCOPE, variant), whole),
                    (keys.aggregate(status.name, run, scope, variant), step),
                ):
                    for field, n in sums.items():
                        pipe.hincrby(key, field, n)
                    pipe.expire(key, AGGREGATE_TTL_SECONDS)
            if settled >= first:
                pipe.set(mark_key, settled, ex=AGGREGATE_TTL_SECONDS)
            else:
                pipe.expire(mark_key, AGGREGATE_TTL_SECONDS)
            await pipe.execute()
        except WatchError:
            return 0
    return len(pending)


async def observe(
    client: aioredis.Redis, prefix: str, status: RolloutStatus, now: float
) -> Observations:
    """The canary's and the stable variant's counts since the step began and since the rollout
    began, however long ago: the folded sums plus the buckets not folded yet."""
    empty = VariantWindow()
    if status.started_at is None or status.step_started_at is None:
        return Observations(since=now, until=now)
    keys = RedisKeys(prefix)
    run, scope = run_id(status), step_scope(status)
    variants = _variants(status)
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.fold_mark(status.name, run))
    for variant in variants:
        pipe.hgetall(keys.aggregate(status.name, run, scope, variant))
        pipe.hgetall(keys.aggregate(status.name, run, ROLLOUT_SCOPE, variant))
    mark, *sums = await pipe.execute()
    step: dict[str, Counts] = {}
    whole: dict[str, Counts] = {}
    for i, variant in enumerate(variants):
        step[variant], whole[variant] = counts_of(sums[2 * i]), counts_of(sums[2 * i + 1])
    recent = range(_first_unfolded(mark, status, now), _floor(now) + 1, BUCKET_SECONDS)
    for variant, buckets in (await read_buckets(client, prefix, variants, recent)).items():
        for bucket, counts in buckets:
            _add(whole[variant], counts)
            if _in_step(bucket, status):
                _add(step[variant], counts)

    def window(counts: dict[str, Counts], variant: str | None) -> VariantWindow:
        return VariantWindow(counts[variant]) if variant in counts else empty

    return Observations(
        canary=window(step, status.canary),
        stable=window(step, status.stable),
        since=status.step_started_at,
        until=now,
        canary_rollout=window(whole, status.canary),
        stable_rollout=window(whole, status.stable),
    )

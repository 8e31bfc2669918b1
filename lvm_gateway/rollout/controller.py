"""The rollout controller: the lease holder reconciles every rollout each interval_seconds.

One pass for one rollout: read its effective spec (YAML + thresholds in Redis) and status,
follow a changed (stable, canary) pair (and start it when the spec says `auto_start`), fold the
settled windows into the rollout's step and run sums (rollout/aggregates.py), run the pure
`reconcile` on them, and write the result with one fenced compare-and-set. Runs inside
`lvm-gateway serve` by default, as `rolloutctl controller`, or once (`--once`) from cron.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from lvm_gateway.contract.rollout import Actor, Phase, RolloutStatus
from lvm_gateway.errors import ConflictError, NotLeaderError, RolloutError
from lvm_gateway.redisconn import open_client, raise_if_cancelled
from lvm_gateway.rollout.aggregates import fold, observe
from lvm_gateway.rollout.lease import Lease
from lvm_gateway.rollout.notify import DeliveryStats, Notifier
from lvm_gateway.rollout.providers import measure
from lvm_gateway.rollout.reconcile import Action, reconcile
from lvm_gateway.rollout.store import Registered, RolloutStore
from lvm_gateway.rollout.transitions import ACTIVE, align, auto_start

log = logging.getLogger(__name__)

_SHUTDOWN_S = 2.0  # the most a stopping controller waits for Redis


async def reconcile_rollout(
    store: RolloutStore, name: str, identity: str, lease: str | None, now: float
) -> tuple[RolloutStatus, Action | None, Registered]:
    """One controller pass over one rollout; returns the status after it and what it did."""
    reg = await store.effective(name)
    status = await store.get(name)
    aligned = align(status, reg.stable, reg.canary, now)
    if not aligned.same_state(status):
        status = await store.transition(
            status, aligned, Actor.CONTROLLER, "align", identity, lease=lease
        )
    started = auto_start(status, reg.spec, now)
    if started is not None:  # judged from the next pass on, with the thresholds just seeded
        declared = await store.registered(name)
        status = await store.transition(
            status, started, Actor.CONTROLLER, "start", identity, lease=lease,
            seed_thresholds=declared.spec,
        )  # fmt: skip
        return status, None, reg
    if status.phase in ACTIVE:  # paused too: the buckets expire whether or not we judge them
        await fold(store.client, store.prefix, status, now)
    if status.phase != Phase.PROGRESSING:
        return status, None, reg
    observations = await observe(store.client, store.prefix, status, now)
    measured = await measure(reg.spec.metrics, status)
    new, action = reconcile(status, observations, reg.spec, now, measured)
    # The evidence behind every analysis, for status, the status page and /metrics; a move also
    # keeps it in the history.
    await store.record_analysis(name, action, now, ttl_s=10 * reg.spec.interval_seconds)
    if not new.same_state(status):
        evidence = action.analysis.evidence() if action.analysis is not None else []
        new = await store.transition(
            status, new, Actor.CONTROLLER, str(action.kind), identity,
            {**action.metrics, "evidence": evidence}, lease,
        )  # fmt: skip
        log.info("rollout %s: %s", name, action.reason)
    return new, action, reg


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _reconcile_due(
    store: RolloutStore,
    lease: Lease,
    due: dict[str, float],
    identity: str,
    clock: Callable[[], float],
) -> None:
    """Reconcile every rollout whose interval has come round; Redis and lease errors propagate."""
    for name in await store.names():
        if clock() < due.get(name, 0.0):
            continue
        try:
            _, _, reg = await reconcile_rollout(store, name, identity, lease.value, clock())
            due[name] = clock() + reg.spec.interval_seconds
        except ConflictError as exc:
            log.info("rollout %s: %s; re-reading next tick", name, exc)
        except (NotLeaderError, RedisError, OSError):
            raise
        except Exception:
            # One broken rollout (or one deleted from the YAML) must not stop the others.
            log.exception("rollout %s: reconcile failed", name)
            due[name] = clock() + 5.0


# After a Redis error the controller retries after a jittered, doubling pause up to this cap,
# logging the outage once and the recovery once, not every tick.
MAX_ERROR_BACKOFF_SECONDS = 5.0


async def run_controller(
    redis_url: str,
    prefix: str,
    stop: asyncio.Event,
    identity: str,
    clock: Callable[[], float] = time.time,
    lease_seconds: float = 3.0,
    tick_seconds: float = 0.1,
    notifier_stats: DeliveryStats | None = None,
) -> None:
    """Until `stop` is set: contend for the lease; while holding it, reconcile what is due and
    send the webhook notifications (rollout/notify.py)."""
    client = open_client(redis_url)
    store = RolloutStore(client, prefix)
    lease = Lease(client, prefix, identity, lease_seconds)
    notifier = Notifier(client, prefix, identity, lambda: lease.value, notifier_stats)
    notifying: asyncio.Task[None] | None = None
    due: dict[str, float] = {}
    leading = False
    failing_since: float | None = None
    backoff = tick_seconds
    try:
        while not stop.is_set():
            pause = tick_seconds
            try:
                if await lease.hold() != leading:
                    leading = not leading
                    log.info("controller %s: %s", identity, "leading" if leading else "standing by")
                if leading:
                    if notifying is None or notifying.done():
                        notifying = asyncio.create_task(notifier.run(), name="rollout-notify")
                    await _reconcile_due(store, lease, due, identity, clock)
                else:
                    due.clear()
                if failing_since is not None:
                    log.info("controller %s: Redis is back after %.1fs", identity,
                             time.monotonic() - failing_since)  # fmt: skip
                    failing_since, backoff = None, tick_seconds
            except NotLeaderError:
                lease.lost()
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("controller %s: Redis error: %s; retrying with back-off",
                                identity, exc)  # fmt: skip
                lease.lost()
                backoff = min(backoff * 2, MAX_ERROR_BACKOFF_SECONDS)
                pause = random.uniform(backoff / 2, backoff)
            if lease.value is None:  # standing by, or just lost the lease: nothing may be sent
                notifying = await _cancel(notifying)
            await _wait(stop, pause)
    finally:
        await _cancel(notifying)
        # Bounded: a connection left mid-command by the cancellation must not hang shutdown
        # (the lease then simply expires).
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(lease.release(), _SHUTDOWN_S)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(client.aclose(), _SHUTDOWN_S)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Stop `task` if any; returns None, the value a stopped task slot holds. Bounded: a task
    slow to unwind (a Redis call cut short) must not hold up the controller's own stop."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task}, timeout=_SHUTDOWN_S)
    return None


async def reconcile_once(
    redis_url: str,
    prefix: str,
    identity: str,
    clock: Callable[[], float] = time.time,
    lease_seconds: float = 3.0,
) -> dict[str, str]:
    """One pass over every rollout (cron-style); refuses while another controller leads."""
    client = open_client(redis_url)
    try:
        store = RolloutStore(client, prefix)
        lease = Lease(client, prefix, identity, lease_seconds)
        if not await lease.hold():
            holder = await lease.holder()
            raise RolloutError(f"another controller holds the lease ({holder}); nothing done")
        try:
            done: dict[str, str] = {}
            for name in await store.names():
                status, action, _ = await reconcile_rollout(
                    store, name, identity, lease.value, clock()
                )
                done[name] = action.reason if action else f"{status.phase}: nothing to do"
            return done
        finally:
            await lease.release()
    finally:
        await client.aclose()

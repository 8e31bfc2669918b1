"""Everything a gateway process needs from the control plane, behind one object.

    dp = RolloutDataPlane(redis_url, prefix, run_controller=True, identity="host:pid")
    await dp.start(config)          # never raises for Redis; background tasks start
    dp.weights / dp.shadow          # per request, no await (RoutingView.weights)
    dp.recorder.record_request(...) # per upstream call, no I/O
    dp.connected                    # /readyz: False -> "degraded", still serving
    dp.routing                      # /readyz: where the weights come from (Redis, file, none)
    await dp.on_config(config)      # hot reload
    await dp.stop()

Background tasks: the weight snapshot, the window flush every `flush_interval_s`, the
registration of the config's rollouts (retried until Redis answers) and optionally the
controller, which only acts while it holds the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from redis.exceptions import RedisError

from lvm_gateway.config.load import Config
from lvm_gateway.errors import RolloutError
from lvm_gateway.redisconn import open_client, pause, raise_if_cancelled
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from lvm_gateway.rollout.agent.snapshot import Pair, RolloutSnapshot
from lvm_gateway.rollout.controller import run_controller
from lvm_gateway.rollout.notify import DeliveryStats
from lvm_gateway.rollout.store import RolloutStore

log = logging.getLogger(__name__)

ANALYSIS_POLL_TICKS = 5  # flush ticks between reads of the controller's latest analyses


def rollout_pairs(config: Config) -> dict[str, Pair]:
    """Each rollout the config drives, with its route's (stable, canary) names."""
    out: dict[str, Pair] = {}
    for name, spec in config.rollouts.items():
        route = config.routes.get(spec.route)
        out[name] = (route.stable, route.canary) if route else (None, None)
    return out


class RolloutDataPlane:
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        run_controller: bool,
        identity: str,
        flush_interval_s: float = 1.0,
        poll_interval_s: float = 0.25,
        lease_seconds: float = 3.0,
        state_dir: Path | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.run_controller = run_controller
        self.identity = identity
        self.flush_interval_s = flush_interval_s
        self.lease_seconds = lease_seconds
        self.recheck_interval_s = 5.0  # how often registration checks Redis still has the specs
        # The controller's latest analysis per rollout (evidence for /metrics), polled.
        self.analyses: Mapping[str, dict[str, Any]] = MappingProxyType({})
        self.recorder = WindowRecorder(prefix)
        # The last statuses read from Redis, for a cold start while Redis is unreachable.
        state_file = state_dir / f"rollouts-{prefix}.json" if state_dir is not None else None
        self.snapshot = RolloutSnapshot(redis_url, prefix, poll_interval_s, state_file)
        self.deliveries = DeliveryStats()  # webhook outcomes while this process's controller led
        self._client = open_client(redis_url)
        self._store = RolloutStore(self._client, prefix)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._register: asyncio.Task[None] | None = None

    @property
    def weights(self) -> Mapping[str, float]:
        return self.snapshot.weights

    @property
    def shadow(self) -> Mapping[str, float]:
        return self.snapshot.shadow

    @property
    def connected(self) -> bool:
        return self.snapshot.connected

    @property
    def routing(self) -> str:
        return self.snapshot.routing

    @property
    def phases(self) -> Mapping[str, str]:
        """Each bound rollout's phase as last read (Pending before its first start)."""
        return {n: str(s.phase) if s else "Pending" for n, s in self.snapshot.statuses.items()}

    @property
    def notifications(self) -> Mapping[tuple[str, str, str], int]:
        """(webhook, event, outcome) -> count, for /metrics."""
        return self.deliveries.counts

    async def start(self, config: Config) -> None:
        self.snapshot.bind(rollout_pairs(config))
        self._tasks.append(asyncio.create_task(self.snapshot.run(), name="rollout-snapshot"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="rollout-flush"))
        if self.run_controller:
            controller = run_controller(self.redis_url, self.prefix, self._stop, self.identity,
                                        lease_seconds=self.lease_seconds,
                                        notifier_stats=self.deliveries)  # fmt: skip
            self._tasks.append(asyncio.create_task(controller, name="rollout-controller"))
        self._schedule_register(config)

    async def on_config(self, config: Config) -> None:
        self.snapshot.bind(rollout_pairs(config))
        self._schedule_register(config)

    def _schedule_register(self, config: Config) -> None:
        if self._register is not None:
            self._register.cancel()
        self._register = asyncio.create_task(self._register_loop(config), name="rollout-register")

    async def _register_loop(self, config: Config) -> None:
        """Register the config's rollouts, and again whenever Redis has lost them (a restart
        without persistence, a flush): statuses Redis kept are never touched."""
        backoff = 0.1
        registered = False
        while True:
            try:
                if not registered or not await self._store.has_all(list(config.rollouts)):
                    if registered:
                        log.warning("rollouts missing from Redis; registering them again")
                    await self._store.register_specs(config)
                    registered = True
                backoff = 0.1
                await pause(self.recheck_interval_s)
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                log.debug("registering rollouts waits for Redis: %s", exc)
                await pause(backoff)
                backoff = min(backoff * 2, 2.0)
            except RolloutError as exc:  # a retired rollout could not be aborted: say so
                log.warning("registering rollouts: %s", exc)
                return

    async def _flush_loop(self) -> None:
        ticks = 0
        while True:
            await pause(self.flush_interval_s)
            ticks += 1
            try:
                await self.recorder.flush(self._client)
                if ticks % ANALYSIS_POLL_TICKS == 0:
                    names = list(self.snapshot.weights)
                    self.analyses = MappingProxyType(await self._store.analyses(names))
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                log.debug("window flush deferred: %s", exc)

    async def stop(self) -> None:
        self._stop.set()  # the controller releases its lease on the way out
        tasks = [*self._tasks, *([self._register] if self._register else [])]
        for task in tasks:
            if task.get_name() != "rollout-controller":
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 3.0)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self.recorder.flush(self._client), 1.0)
        with contextlib.suppress(RedisError, OSError):
            await self._client.aclose()

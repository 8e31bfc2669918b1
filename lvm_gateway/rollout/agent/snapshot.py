"""The gateway's in-process copy of the rollout weights: read per request, never awaited.

A background task keeps it current: a full read on (re)connect, a re-read on every pub/sub
notification, and a poll of the epoch counter as a safety net for notifications lost while
disconnected. When Redis is unreachable the last known weights stay in force and `connected`
turns False; the task reconnects with backoff by itself.

A weight applies only to the (stable, canary) pair the status was earned with: if the policy
YAML now names another pair, the route gets weight 0 until the rollout is started for it.

Cold starts fail safe: every status read from Redis is also saved to a file under the gateway's
home directory, and a gateway that starts while Redis is unreachable routes by that file; with
no file either, every canary a rollout drives gets weight 0 (the stable variant serves) until
Redis answers. A rollout Redis holds RolledBack is never served from the YAML's weight.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from lvm_gateway.contract.rollout import Phase, RolloutStatus
from lvm_gateway.redisconn import open_client, pause, raise_if_cancelled
from lvm_gateway.rollout.store import RolloutStore

log = logging.getLogger(__name__)

Pair = tuple[str | None, str | None]
_MAX_BACKOFF_S = 1.0


def weight_of(status: RolloutStatus | None, pair: Pair) -> tuple[float, float]:
    """(canary weight, mirror share) a status gives the route whose policy names `pair`."""
    if status is None or (status.stable, status.canary) != pair:
        return 0.0, 0.0
    if status.phase == Phase.PROMOTED:
        return 100.0, 0.0
    if status.phase in (Phase.PROGRESSING, Phase.PAUSED):
        return status.weight, status.mirror
    return 0.0, 0.0


class RolloutSnapshot:
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        poll_interval_s: float = 0.25,
        state_file: Path | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.poll_interval_s = poll_interval_s
        self.state_file = state_file
        self.connected = False
        # Every bound rollout always has an entry (0 when nothing is known), so a policy never
        # falls back to its YAML weight for a rollout-driven canary.
        self.weights: Mapping[str, float] = MappingProxyType({})
        self.shadow: Mapping[str, float] = MappingProxyType({})
        self.statuses: Mapping[str, RolloutStatus | None] = MappingProxyType({})
        self.saved_at: float | None = None  # when the statuses routed by now were saved
        self._saved: dict[str, object] | None = None
        self._pairs: dict[str, Pair] = {}
        self._stale = asyncio.Event()
        self._load()

    @property
    def routing(self) -> str:
        """Where the weights in force come from, for /readyz."""
        if self.connected:
            return "redis"
        if self.saved_at is not None:
            return f"the snapshot saved {time.time() - self.saved_at:.0f}s ago (Redis unreachable)"
        return "no snapshot and no Redis: every rollout's canary at weight 0"

    def bind(self, pairs: Mapping[str, Pair]) -> None:
        """The rollouts the current config drives, each with its route's (stable, canary)."""
        self._pairs = dict(pairs)
        self._publish(self.statuses)
        self._stale.set()

    def _load(self) -> None:
        if self.state_file is None:
            return
        try:
            doc = json.loads(self.state_file.read_text())
            statuses = {
                name: RolloutStatus.from_dict({**data, "name": name}) if data else None
                for name, data in doc["statuses"].items()
            }
            saved_at = float(doc["saved_at"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable rollout snapshot %s: %s", self.state_file, exc)
            return
        self.statuses = MappingProxyType(statuses)
        self.saved_at = saved_at
        self._saved = doc["statuses"]

    def _save(self, statuses: Mapping[str, RolloutStatus | None]) -> None:
        """Write what Redis said to the state file when it changed (atomically: replicas and
        workers share the file; a reader sees the old or the new one, never half)."""
        if self.state_file is None:
            return
        doc = {name: s.to_dict() if s else None for name, s in statuses.items()}
        if doc == self._saved:
            return
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"saved_at": time.time(), "statuses": doc}))
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.warning("could not save the rollout snapshot to %s: %s", self.state_file, exc)
            return
        self._saved = doc
        self.saved_at = time.time()

    def _publish(self, statuses: Mapping[str, RolloutStatus | None]) -> None:
        weights, shadow = {}, {}
        for name, pair in self._pairs.items():
            weights[name], mirror = weight_of(statuses.get(name), pair)
            if mirror > 0:  # entries only in a shadow step: otherwise the YAML's mirror applies
                shadow[name] = mirror
        # Whole-mapping swaps: a request reads either the old or the new weights, never a mix.
        self.statuses = MappingProxyType(dict(statuses))
        self.weights = MappingProxyType(weights)
        self.shadow = MappingProxyType(shadow)

    async def refresh(self, store: RolloutStore) -> int:
        epoch = await store.epoch()
        statuses = await store.statuses(list(self._pairs))
        self._publish(statuses)
        self._save(statuses)
        return epoch

    async def run(self) -> None:
        backoff = 0.05
        while True:
            client = open_client(self.redis_url)
            store = RolloutStore(client, self.prefix)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(store.keys.events)
                epoch = await self.refresh(store)
                self.connected = True
                backoff = 0.05
                await self._follow(store, pubsub, epoch)
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                if self.connected:
                    log.warning("rollout snapshot lost Redis (%s); keeping last weights", exc)
                self.connected = False
                await pause(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF_S)
            except Exception:
                # A malformed record must not freeze the weights for good: log, retry.
                log.exception("rollout snapshot failed to read rollouts; retrying")
                self.connected = False
                await pause(_MAX_BACKOFF_S)
            finally:
                await _quietly_close(pubsub, client)

    async def _follow(self, store: RolloutStore, pubsub: PubSub, epoch: int) -> None:
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.poll_interval_s
        while True:
            raise_if_cancelled()
            message = await pubsub.get_message(
                ignore_subscribe_messages=True, timeout=self.poll_interval_s
            )
            if message is not None or self._stale.is_set():
                self._stale.clear()
                epoch = await self.refresh(store)
            elif loop.time() >= next_poll:
                next_poll = loop.time() + self.poll_interval_s
                if await store.epoch() != epoch:
                    epoch = await self.refresh(store)


async def _quietly_close(pubsub: PubSub, client: aioredis.Redis) -> None:
    with contextlib.suppress(RedisError, OSError):
        await pubsub.aclose()
    with contextlib.suppress(RedisError, OSError):
        await client.aclose()

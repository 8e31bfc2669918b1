"""Rollouts in Redis: status with a version, specs, thresholds, history, change notifications.

The keys (contract/keys.py): per rollout its spec, status, thresholds and history stream; the
set of names; an epoch bumped by every transition; a pub/sub channel; the controller's lease.

Every transition is one Lua script: compare the version, check the caller's lease (controller
writes only), write the status, append the history event, bump the epoch, publish. So two
concurrent writers can never both move from the same version, and a controller whose lease
has passed to another instance writes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.client import Pipeline

from lvm_gateway.config.load import Config
from lvm_gateway.contract.humanize import humanize
from lvm_gateway.contract.keys import HISTORY_MAXLEN, RedisKeys
from lvm_gateway.contract.rollout import TUNABLE_KEYS, Actor, RolloutSpec, RolloutStatus, Thresholds
from lvm_gateway.errors import (
    ConflictError,
    NotLeaderError,
    ThresholdError,
    UnknownRolloutError,
)
from lvm_gateway.logfmt import iso_time
from lvm_gateway.redisconn import text
from lvm_gateway.rollout.reconcile import Action
from lvm_gateway.rollout.transitions import ACTIVE, abort

_RETIRE_ATTEMPTS = 5

_TRANSITION = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if cur ~= tonumber(ARGV[1]) then return {0, cur} end
if ARGV[3] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[3] then return {-1, cur} end
local v = cur + 1
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', v, 'fence', ARGV[3])
if ARGV[6] ~= '' then redis.call('SET', KEYS[5], ARGV[6]) end
local event = {}
for i = 8, #ARGV do event[#event + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'version', v, unpack(event))
redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. v)
return {1, v}
"""


@dataclass(frozen=True)
class Registered:
    """A rollout as the policy YAML declares it, with the route's stable and canary names."""

    spec: RolloutSpec
    stable: str | None
    canary: str | None


def _parse_threshold_value(key: str, raw: str) -> Any:
    if raw.strip().lower() in ("none", "null", "off", ""):
        if "." not in key:
            raise ThresholdError(f"{key}: cannot be unset")
        return None
    try:
        return json.loads(raw)  # 8, 0.5, 1e3 as numbers; the model refuses anything else
    except ValueError:
        return raw


class RolloutStore:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self._transition = client.register_script(_TRANSITION)

    def key(self, name: str, part: str) -> str:
        return self.keys.rollout(name, part)

    # -- specs -------------------------------------------------------------------------------

    async def register_specs(self, config: Config, identity: str = "") -> list[str]:
        """Publish the YAML's rollouts so rolloutctl and the controller work without --config,
        and its webhooks, each with the time it was first seen (where its notifications start);
        retire the rollouts it no longer declares; returns the names retired."""
        declared = await self.names()
        pipe = self.client.pipeline(transaction=True)
        targets = config.spec.notifications
        pipe.set(
            self.keys.notify("targets"), json.dumps([t.model_dump(mode="json") for t in targets])
        )
        for target in targets:
            pipe.hsetnx(self.keys.notify("since"), target.key, int(time.time() * 1000))
        for name, spec in config.rollouts.items():
            route = config.routes.get(spec.route)
            doc = {
                "spec": spec.model_dump(mode="json"),
                "stable": route.stable if route else None,
                "canary": route.canary if route else None,
            }
            pipe.set(self.key(name, "spec"), json.dumps(doc))
            pipe.sadd(self.keys.rollouts, name)
            pipe.srem(self.keys.rollouts_removed, name)
        await pipe.execute()
        retired = []
        for name in declared:
            if name not in config.rollouts and await self._retire(name, identity):
                retired.append(name)
        return retired

    async def _retire(self, name: str, identity: str) -> bool:
        """Stop reconciling a rollout the policy no longer declares. Its spec, status and history
        stay readable (`rolloutctl status/history NAME`); an unfinished one is Aborted, so no
        weight outlives its declaration. False when another registrar retired it first."""
        pipe = self.client.pipeline(transaction=True)
        pipe.srem(self.keys.rollouts, name)
        pipe.sadd(self.keys.rollouts_removed, name)
        won, _ = await pipe.execute()
        if not won:
            return False
        reason = "removed from the policy YAML"
        for _ in range(_RETIRE_ATTEMPTS):
            status = await self.get(name)
            if status.phase not in ACTIVE:
                await self._append(status, Actor.CONFIG, identity, "removed", reason)
                return True
            try:
                await self.transition(
                    status, abort(status, time.time(), reason), Actor.CONFIG, "removed", identity
                )
                return True
            except ConflictError:
                continue  # the controller moved it meanwhile: judge the new state
        raise ConflictError(
            f"{name} was removed from the policy and is no longer reconciled, but its status "
            f"kept changing while being aborted: run `rolloutctl abort {name}`"
        )

    async def has_all(self, names: list[str]) -> bool:
        """Whether every named rollout's spec is registered (one round trip)."""
        if not names:
            return True
        return int(await self.client.exists(*(self.key(n, "spec") for n in names))) == len(names)

    async def names(self) -> list[str]:
        """The rollouts the policy declares: the ones the controller reconciles."""
        return sorted(text(n) for n in await self.client.smembers(self.keys.rollouts))

    async def removed(self) -> list[str]:
        """Rollouts once declared and since removed from the policy (kept for their history)."""
        return sorted(text(n) for n in await self.client.smembers(self.keys.rollouts_removed))

    async def registered(self, name: str) -> Registered:
        raw = await self.client.get(self.key(name, "spec"))
        if raw is None:
            known = ", ".join(await self.names()) or "none"
            raise UnknownRolloutError(
                f"unknown rollout {name!r} (known: {known}; a gateway or `rolloutctl --config "
                "FILE` registers the policy's rollouts)"
            )
        doc = json.loads(raw)
        return Registered(RolloutSpec.model_validate(doc["spec"]), doc["stable"], doc["canary"])

    async def tunables(self, name: str) -> dict[str, Any]:
        raw = await self.client.get(self.key(name, "thresholds"))
        if raw is not None:
            return dict(json.loads(raw))
        return (await self.registered(name)).spec.tunables()

    async def effective(self, name: str) -> Registered:
        """The registered spec with the thresholds held in Redis applied."""
        reg = await self.registered(name)
        raw = await self.client.get(self.key(name, "thresholds"))
        if raw is None:
            return reg
        merged = {**reg.spec.model_dump(mode="json"), **json.loads(raw)}
        return Registered(RolloutSpec.model_validate(merged), reg.stable, reg.canary)

    async def set_thresholds(
        self, name: str, assignments: Mapping[str, str], identity: str = ""
    ) -> dict[str, Any]:
        """Validate KEY=VALUE changes against the whole spec, then store them; all or nothing."""
        reg = await self.registered(name)
        current = await self.tunables(name)
        updated: dict[str, Any] = json.loads(json.dumps(current))
        for key, raw in assignments.items():
            side, _, field = key.partition(".")
            if field and side in ("success", "rollback"):
                if field not in Thresholds.model_fields:
                    known = ", ".join(f"{side}.{k}" for k in Thresholds.model_fields)
                    raise ThresholdError(f"unknown key {key!r} (known: {known})")
                updated[side][field] = _parse_threshold_value(key, raw)
            elif key in TUNABLE_KEYS:
                updated[key] = _parse_threshold_value(key, raw)
            else:
                known = ", ".join(
                    [*TUNABLE_KEYS, *(f"{s}.{k}" for s in ("success", "rollback")
                                      for k in Thresholds.model_fields)]
                )  # fmt: skip
                raise ThresholdError(f"unknown key {key!r} (known: {known})")
        merged = {**reg.spec.model_dump(mode="json"), **updated}
        try:
            spec = RolloutSpec.model_validate(merged)
        except ValidationError as exc:
            first = humanize(exc, merged, RolloutSpec)[0]
            raise ThresholdError(first.removeprefix("(document): ")) from exc
        tunables = spec.tunables()
        status = await self.get(name)
        changes = ", ".join(f"{k}={v}" for k, v in assignments.items())
        await self._append(
            status, Actor.OPERATOR, identity, "thresholds", f"thresholds: {changes}",
            also=lambda pipe: pipe.set(self.key(name, "thresholds"), json.dumps(tunables)),
        )  # fmt: skip
        return tunables

    async def _append(
        self,
        status: RolloutStatus,
        actor: Actor,
        identity: str,
        action: str,
        reason: str,
        also: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """A history event that changes no status (with `also`'s writes in the same MULTI)."""
        pipe = self.client.pipeline(transaction=True)
        if also is not None:
            also(pipe)
        pipe.xadd(
            self.key(status.name, "history"),
            {
                "version": str(status.version),
                **self._event(status, actor, identity, action, reason),
            },
            maxlen=HISTORY_MAXLEN,
            approximate=True,
        )
        await pipe.execute()

    # -- status ------------------------------------------------------------------------------

    async def get(self, name: str) -> RolloutStatus:
        raw = await self.client.hgetall(self.key(name, "status"))
        if not raw:
            reg = await self.registered(name)
            return RolloutStatus(name=name, stable=reg.stable, canary=reg.canary)
        return self._decode(name, raw)

    async def statuses(self, names: list[str]) -> dict[str, RolloutStatus | None]:
        """Each name's stored status, None where it was never started. One round trip."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.key(name, "status"))
        replies = await pipe.execute()
        return {n: (self._decode(n, r) if r else None) for n, r in zip(names, replies, strict=True)}

    @staticmethod
    def _decode(name: str, raw: Mapping[bytes | str, bytes | str]) -> RolloutStatus:
        fields = {text(k): text(v) for k, v in raw.items()}
        data = json.loads(fields["data"])
        data["name"] = name
        data["version"] = int(fields.get("version", 0))
        return RolloutStatus.from_dict(data)

    async def epoch(self) -> int:
        return int(await self.client.get(self.keys.epoch) or 0)

    def _event(
        self,
        status: RolloutStatus,
        actor: Actor,
        identity: str,
        action: str,
        reason: str,
        metrics: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        return {
            "at": repr(time.time()),
            "actor": str(actor),
            "identity": identity,
            "action": action,
            "phase": str(status.phase),
            "step": str(status.step),
            "weight": repr(status.weight),
            "stable": status.stable or "",
            "canary": status.canary or "",
            "reason": reason,
            "metrics": json.dumps(dict(metrics or {})),
        }

    async def transition(
        self,
        old: RolloutStatus,
        new: RolloutStatus,
        actor: Actor,
        action: str,
        identity: str = "",
        metrics: Mapping[str, Any] | None = None,
        lease: str | None = None,
        seed_thresholds: RolloutSpec | None = None,
    ) -> RolloutStatus:
        """Write `new` if the stored version is still `old.version`; returns it with its version.

        `lease` (controller writes) must still be the current lease value; `seed_thresholds`
        resets the thresholds held in Redis to that spec's in the same atomic step (start).
        """
        data = new.to_dict()
        del data["version"]
        event = self._event(new, actor, identity, action, new.reason, metrics)
        args: list[str | int] = [
            old.version,
            json.dumps(data),
            lease or "",
            self.keys.events,
            new.name,
            json.dumps(seed_thresholds.tunables()) if seed_thresholds else "",
            HISTORY_MAXLEN,
        ]
        for k, v in event.items():
            args += [k, v]
        ok, version = await self._transition(
            keys=[
                self.key(new.name, "status"),
                self.key(new.name, "history"),
                self.keys.epoch,
                self.keys.leader,
                self.key(new.name, "thresholds"),
            ],
            args=args,
        )
        if ok == -1:
            raise NotLeaderError(f"{identity or 'controller'} no longer holds the lease")
        if ok == 0:
            raise ConflictError(
                f"{new.name} changed underneath (version {old.version} -> {version}); "
                "nothing was written: check `rolloutctl status` and retry"
            )
        return new.evolve(version=int(version))

    # -- analyses ------------------------------------------------------------------------------

    async def record_analysis(self, name: str, action: Action, now: float, ttl_s: float) -> None:
        """The controller's latest analysis of a rollout: what it did, the guards' values and
        every judge test's evidence; it expires when the controller stops analysing."""
        doc = {
            "at": now,
            "action": str(action.kind),
            "reason": action.reason,
            "metrics": dict(action.metrics),
            "evidence": action.analysis.evidence() if action.analysis is not None else [],
        }
        await self.client.set(self.key(name, "analysis"), json.dumps(doc), px=int(ttl_s * 1000))

    async def analyses(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The latest recorded analysis of each named rollout that has one (one round trip)."""
        if not names:
            return {}
        raws = await self.client.mget([self.key(n, "analysis") for n in names])
        return {n: json.loads(r) for n, r in zip(names, raws, strict=True) if r is not None}

    # -- history -----------------------------------------------------------------------

    async def history(self, name: str) -> list[dict[str, Any]]:
        await self.registered(name)
        out = []
        for entry_id, fields in await self.client.xrange(self.key(name, "history")):
            f = {text(k): text(v) for k, v in fields.items()}
            ts = float(f["at"])
            out.append(
                {
                    "id": text(entry_id),
                    "at": iso_time(ts),
                    "ts": ts,
                    "version": int(f["version"]),
                    "actor": f["actor"],
                    "identity": f["identity"],
                    "action": f["action"],
                    "phase": f["phase"],
                    "step": int(f["step"]),
                    "weight": float(f["weight"]),
                    "stable": f["stable"] or None,
                    "canary": f["canary"] or None,
                    "reason": f["reason"],
                    "metrics": json.loads(f["metrics"]),
                }
            )
        return out

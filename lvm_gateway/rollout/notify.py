"""Webhook notifications of rollout transitions, sent by the controller that holds the lease.

The history stream is the queue. For each webhook (the policy's `notifications:`, published to
Redis by every gateway) and each rollout, the leader reads the history after a cursor kept in
Redis, posts every event the webhook asked for, and advances the cursor together with a
history note of the outcome, in one script that first checks the lease. So operator actions
are notified like the controller's own, a standby controller sends nothing, and a controller
that takes over resumes at the cursor: each transition is posted once. The one exception is a
leader that dies between a post and its cursor write: its successor posts that event again,
with the same `X-LVMGW-Delivery` id, by which a receiver can drop the copy.

Per webhook, events are posted in history order; a failing one is retried with exponential
back-off and jitter (connection errors, 429, 5xx; other statuses are final), up to `attempts`
times, then recorded as failed and skipped. While one webhook lags, at most `max_backlog`
history entries wait per rollout; older ones are skipped and recorded as dropped.

Body (format json): {"id", "rollout", "event", "phase", "step", "steps", "weight", "reason",
"at", "actor", "identity", "stable", "canary"}; `step` counts from 1 like `rolloutctl status`;
`at` is ISO 8601 UTC. Format slack: {"text": one line}. With `secret_env`, the header
`X-LVMGW-Signature: sha256=<hex HMAC-SHA256 of the body>` keyed by that variable's value.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from lvm_gateway.config.spec import NotificationSpec, NotifyEvent
from lvm_gateway.contract.keys import HISTORY_MAXLEN, RedisKeys
from lvm_gateway.contract.rollout import Actor, Phase
from lvm_gateway.errors import NotLeaderError
from lvm_gateway.logfmt import iso_time
from lvm_gateway.redisconn import pause, raise_if_cancelled, text

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-LVMGW-Signature"
DELIVERY_HEADER = "X-LVMGW-Delivery"
EVENT_HEADER = "X-LVMGW-Event"
NOTE_ACTION = "notify"

# Advance a webhook's cursor, and with an outcome also note it in the rollout's history, only
# while the caller still holds the lease: a deposed leader can neither skip nor repeat events.
_ADVANCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if #ARGV > 4 then
  local note = {}
  for i = 5, #ARGV do note[#note + 1] = ARGV[i] end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(note))
end
return 1
"""

_BY_ACTION: dict[str, NotifyEvent] = {
    "start": "started",
    "advance": "advanced",
    "pause": "paused",
    "resume": "resumed",
    "abort": "aborted",
}


def event_of(action: str, phase: str) -> NotifyEvent | None:
    """The notification a history entry stands for, if any (notes, alignments, failures and
    threshold changes are not transitions a webhook hears about)."""
    if action == "abort":
        return "aborted"
    if phase == Phase.PROMOTED and action in ("advance", "promote"):
        return "promoted"
    if phase == Phase.ROLLED_BACK and action == "rollback":
        return "rolled_back"
    return _BY_ACTION.get(action)


@dataclass(frozen=True)
class Entry:
    """One history entry, as stored (stream id and string fields)."""

    id: str
    fields: Mapping[str, str]

    @property
    def event(self) -> NotifyEvent | None:
        return event_of(self.fields.get("action", ""), self.fields.get("phase", ""))


def payload(rollout: str, entry: Entry, steps: int | None) -> dict[str, Any]:
    f = entry.fields
    step = int(f.get("step", "-1"))
    return {
        "id": f"{rollout}/{entry.id}",
        "rollout": rollout,
        "event": entry.event,
        "phase": f.get("phase"),
        "step": step + 1 if step >= 0 else None,
        "steps": steps,
        "weight": float(f.get("weight", "0")),
        "reason": f.get("reason", ""),
        "at": iso_time(float(f.get("at", "0"))),
        "actor": f.get("actor"),
        "identity": f.get("identity"),
        "stable": f.get("stable") or None,
        "canary": f.get("canary") or None,
    }


def render(target: NotificationSpec, body: Mapping[str, Any]) -> bytes:
    if target.format == "slack":
        line = (
            f"rollout {body['rollout']} {body['event']}: {body['phase']}, "
            f"{body['weight']:g}% on {body['canary']}"
        )
        if body["reason"]:
            line += f" ({body['reason']})"
        return json.dumps({"text": line}).encode()
    return json.dumps(body, separators=(",", ":")).encode()


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class DeliveryError(Exception):
    def __init__(self, message: str, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class DeliveryStats:
    """Outcomes per (webhook label, event, outcome) for /metrics; one per controller process.
    Outcomes: delivered, failed (gave up), retried (one failed attempt), dropped (backlog)."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str, str]] = Counter()

    def add(self, target: str, event: str, outcome: str) -> None:
        self.counts[(target, event, outcome)] += 1


class Notifier:
    """Runs while its controller leads: one task per configured webhook."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        identity: str,
        lease_value: Callable[[], str | None],
        stats: DeliveryStats | None = None,
        attempts: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 5.0,
        poll_s: float = 0.25,
        max_backlog: int = 100,
    ) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.identity = identity
        self.lease_value = lease_value
        self.stats = stats or DeliveryStats()
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.max_backlog = max_backlog
        self._advance = client.register_script(_ADVANCE)

    async def run(self) -> None:
        """Until cancelled (the controller cancels it when it stops leading)."""
        workers: dict[str, asyncio.Task[None]] = {}
        async with httpx.AsyncClient(timeout=self.timeout_s) as http:
            try:
                while True:
                    try:
                        targets = await self._targets()
                    except (RedisError, OSError) as exc:
                        raise_if_cancelled(exc)
                        log.debug("notifications wait for Redis: %s", exc)
                        targets = None
                    if targets is not None:
                        for key in set(workers) - set(targets):
                            workers.pop(key).cancel()
                        for key, target in targets.items():
                            if key not in workers or workers[key].done():
                                task = self._worker(http, target)
                                workers[key] = asyncio.create_task(task, name=f"notify-{key}")
                    await pause(self.poll_s)
            finally:
                for task in workers.values():
                    task.cancel()
                await asyncio.gather(*workers.values(), return_exceptions=True)

    async def _targets(self) -> dict[str, NotificationSpec]:
        raw = await self.client.get(self.keys.notify("targets"))
        out = {}
        for doc in json.loads(raw) if raw else []:
            try:
                target = NotificationSpec.model_validate(doc)
            except ValidationError as exc:  # written by a newer or older gateway: skip it
                log.warning("ignoring a stored webhook %r: %s", doc.get("url"), exc)
                continue
            out[target.key] = target
        return out

    async def _worker(self, http: httpx.AsyncClient, target: NotificationSpec) -> None:
        backoff = self.poll_s
        while True:
            try:
                busy = False
                names = sorted(text(n) for n in await self.client.smembers(self.keys.rollouts))
                for name in names:
                    busy |= await self._drain(http, target, name)
                backoff = self.poll_s
                if not busy:
                    await pause(self.poll_s)
            except NotLeaderError:
                return  # the controller stops this notifier on its next tick
            except (RedisError, OSError) as exc:
                raise_if_cancelled(exc)
                log.warning("notifications to %s wait for Redis: %s", target.label, exc)
                await pause(backoff * random.uniform(1.0, 1.5))
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception as exc:
                raise_if_cancelled(exc)
                # A malformed history entry must not stop this webhook's notifications for good.
                log.exception("notifications to %s failed; retrying", target.label)
                await pause(self.max_backoff_s)

    async def _start_of(self, target: NotificationSpec, name: str) -> str:
        """The exclusive lower bound of what this webhook still has to hear about `name`."""
        cursor = await self.client.hget(self.keys.notify("cursor"), f"{target.key}:{name}")
        if cursor is not None:
            return "(" + text(cursor)
        since_key = self.keys.notify("since")
        # Normally set by the gateway that published the target; if not, it starts now.
        await self.client.hsetnx(since_key, target.key, int(time.time() * 1000))
        return f"{text(await self.client.hget(since_key, target.key))}-0"

    async def _drain(self, http: httpx.AsyncClient, target: NotificationSpec, name: str) -> bool:
        """Post what is pending for one rollout; True if anything was read."""
        start = await self._start_of(target, name)
        history = self.keys.rollout(name, "history")
        newest = await self.client.xrevrange(history, "+", start, count=self.max_backlog + 1)
        if not newest:
            return False
        entries = [Entry(text(i), {text(k): text(v) for k, v in f.items()}) for i, f in newest]
        entries.reverse()
        if len(entries) > self.max_backlog:
            skipped = entries.pop(0)
            self.stats.add(target.label, "any", "dropped")
            why = f"over {self.max_backlog} history entries behind; older ones skipped"
            await self._advance_to(target, name, skipped, f"{target.label}: dropped: {why}")
        last = None
        for entry in entries:
            if entry.fields.get("action") == NOTE_ACTION or entry.event not in target.events:
                last = entry
                continue
            outcome = await self._deliver(http, target, name, entry)
            await self._advance_to(target, name, entry, outcome)
            last = None
        if last is not None:
            await self._advance_to(target, name, last, None)
        return True

    async def _advance_to(
        self, target: NotificationSpec, name: str, entry: Entry, outcome: str | None
    ) -> None:
        lease = self.lease_value()
        if lease is None:
            raise NotLeaderError("lease lost")
        args: list[str | int] = [lease, f"{target.key}:{name}", entry.id, HISTORY_MAXLEN]
        if outcome is not None:
            f = entry.fields
            note = {
                "version": f.get("version", "0"),
                "at": repr(time.time()),
                "actor": str(Actor.CONTROLLER),
                "identity": self.identity,
                "action": NOTE_ACTION,
                "phase": f.get("phase", ""),
                "step": f.get("step", "-1"),
                "weight": f.get("weight", "0"),
                "stable": f.get("stable", ""),
                "canary": f.get("canary", ""),
                "reason": outcome,
                "metrics": "{}",
            }
            for k, v in note.items():
                args += [k, v]
        keys = [self.keys.leader, self.keys.notify("cursor"), self.keys.rollout(name, "history")]
        if not await self._advance(keys=keys, args=args):
            raise NotLeaderError("lease lost: cursor not advanced")

    async def _steps_of(self, name: str) -> int | None:
        raw = await self.client.get(self.keys.rollout(name, "spec"))
        return len(json.loads(raw)["spec"]["steps"]) if raw is not None else None

    async def _deliver(
        self, http: httpx.AsyncClient, target: NotificationSpec, name: str, entry: Entry
    ) -> str:
        """Post one event with retries; the outcome as a history note's reason."""
        event = str(entry.event)
        body = render(target, payload(name, entry, await self._steps_of(name)))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "lvm-gateway",
            EVENT_HEADER: event,
            DELIVERY_HEADER: f"{name}/{entry.id}",
        }
        what = f"{event} -> {target.label}"
        if target.secret_env:
            secret = os.environ.get(target.secret_env)
            if not secret:
                self.stats.add(target.label, event, "failed")
                log.error("webhook %s: $%s is not set; not sent", target.label, target.secret_env)
                return f"{what}: not sent: ${target.secret_env} is not set for the controller"
            headers[SIGNATURE_HEADER] = sign(secret, body)
        delay, attempt = self.backoff_s, 0
        while True:
            attempt += 1
            try:
                await self._post(http, target.url, body, headers)
                self.stats.add(target.label, event, "delivered")
                return f"{what}: delivered (attempt {attempt}/{self.attempts})"
            except DeliveryError as exc:
                if not exc.retry or attempt >= self.attempts:
                    self.stats.add(target.label, event, "failed")
                    log.warning("webhook %s: %s: %s", target.label, event, exc)
                    return f"{what}: failed after {attempt} attempt(s): {exc}"
                self.stats.add(target.label, event, "retried")
                log.info("webhook %s: attempt %d failed (%s); retrying", target.label, attempt, exc)
            # Jitter keeps retries of several webhooks (and controllers) from aligning.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, self.max_backoff_s)

    @staticmethod
    async def _post(
        http: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str]
    ) -> None:
        try:
            response = await http.post(url, content=body, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}".rstrip(": "), retry=True) from exc
        if response.status_code < 300:
            return
        retry = response.status_code == 429 or response.status_code >= 500
        raise DeliveryError(f"HTTP {response.status_code}", retry=retry)

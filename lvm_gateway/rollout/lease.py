"""Leader election for the controller: a Redis lease with a fencing token.

The lease value is "<token>:<identity>", the token a fresh INCR per acquisition. The holder
renews it well before it expires; every controller write passes the value to the transition
script, which refuses it unless the lease still holds exactly that value. A paused or
partitioned ex-leader therefore cannot write after another instance took over.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.redisconn import text

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(
        self, client: aioredis.Redis, prefix: str, identity: str, lease_seconds: float = 3.0
    ) -> None:
        self.client = client
        keys = RedisKeys(prefix)
        self.key = keys.leader
        self.fence_key = keys.fence
        self.identity = identity
        self.lease_ms = int(lease_seconds * 1000)
        self.value: str | None = None  # set while this instance believes it leads
        self._renew_at = 0.0
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Acquire or renew as due; True while this instance holds the lease."""
        now = time.monotonic()
        if self.value is not None and now < self._renew_at:
            return True
        if self.value is not None:
            if await self._renew(keys=[self.key], args=[self.value, self.lease_ms]):
                self._renew_at = now + self.lease_ms / 3000
                return True
            self.value = None
        if await self.client.exists(self.key):
            return False
        token = await self.client.incr(self.fence_key)
        value = f"{token}:{self.identity}"
        if await self.client.set(self.key, value, nx=True, px=self.lease_ms):
            self.value = value
            self._renew_at = now + self.lease_ms / 3000
            return True
        return False

    def lost(self) -> None:
        self.value = None

    async def holder(self) -> str | None:
        raw = await self.client.get(self.key)
        return None if raw is None else text(raw)

    async def release(self) -> None:
        if self.value is not None:
            await self._release(keys=[self.key], args=[self.value])
            self.value = None

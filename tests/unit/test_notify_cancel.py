"""A loop that polls Redis stops when cancelled, even when a library turns the cancellation into
its own error or drops it (redisconn.raise_if_cancelled)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from lvm_gateway.redisconn import pause
from lvm_gateway.rollout.notify import Notifier


class _SwallowingClient:
    """A client library that turns a cancellation into its own error: the command ends with a
    Redis TimeoutError instead of CancelledError."""

    def register_script(self, _: str) -> object:
        return object()

    async def get(self, _: str) -> bytes:
        return b'[{"url": "http://127.0.0.1:9/hook"}]'

    async def smembers(self, _: str) -> set[bytes]:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            raise RedisTimeoutError("Timeout reading from socket") from None
        return set()

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Redis call {name}")


@pytest.mark.asyncio
async def test_a_cancel_turned_into_a_redis_error_still_stops_the_notifier() -> None:
    notifier = Notifier(_SwallowingClient(), "t", "me", lambda: "1:me", poll_s=0.01)  # type: ignore[arg-type]
    task = asyncio.create_task(notifier.run())
    await asyncio.sleep(0.1)  # its webhook worker is waiting in smembers
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the notifier ignored its cancellation"
    assert task.cancelled()


async def test_pause_raises_the_cancel_that_wait_for_dropped() -> None:
    """redis-py writes a command as `wait_for(write, socket_timeout)`. On 3.11, a cancel that
    arrives while the write is done but not yet collected makes wait_for return its result."""
    returned: list[int] = []

    async def written() -> int:  # a write to a local socket: done in one step
        return 1

    async def poll_loop() -> None:
        while True:
            returned.append(await asyncio.wait_for(written(), 1.0))
            await pause(0.01)

    task = asyncio.create_task(poll_loop())
    await asyncio.sleep(0)  # the loop is in wait_for, the write scheduled
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert done, "the loop ignored its cancellation"
    assert task.cancelled()
    # On 3.11 the cancel was dropped (the write's result came back), so pause() is what stopped
    # the loop; from 3.12 wait_for itself raises it.
    assert returned == ([1] if sys.version_info < (3, 12) else [])

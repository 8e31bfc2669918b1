"""A notifier stops when cancelled even if a library turns the cancellation into its own error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from lvm_gateway.rollout.notify import Notifier


class _SwallowingClient:
    """What redis-py does when its read timeout and a cancellation fire together on 3.11: the
    command ends with its own TimeoutError instead of CancelledError."""

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

"""Small asyncio helpers the tests share."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest


async def cancel_after(coro: Coroutine[Any, Any, Any], after_s: float) -> None:
    """Run `coro` as a task, cancel it after `after_s`, and check the cancellation went through."""
    task = asyncio.create_task(coro)
    await asyncio.sleep(after_s)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

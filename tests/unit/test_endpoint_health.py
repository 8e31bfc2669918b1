"""Per-endpoint outlier detection and the retry budget, driven with explicit clock values; the
per-attempt deadline."""

from __future__ import annotations

import asyncio

import pytest

from lvm_gateway.gateway.deadline import Deadline, DeadlineClock
from lvm_gateway.gateway.h1pool import EndpointPool
from lvm_gateway.gateway.upstream import (
    BASE_EJECTION_S,
    CONSECUTIVE_ERRORS,
    FAILURE_WINDOW_S,
    RETRY_MAX_TOKENS,
    Endpoint,
    RetryBudget,
)
from tests.asynckit import cancel_after


def endpoint() -> Endpoint:
    return Endpoint("http://127.0.0.1:9", 1, None, EndpointPool)  # no connection is made here


def test_consecutive_failures_eject_with_doubling_backoff() -> None:
    ep = endpoint()
    for i in range(CONSECUTIVE_ERRORS - 1):
        ep.failure(float(i))
    ep.success(5.0)  # a success resets the run
    for _ in range(CONSECUTIVE_ERRORS - 1):
        ep.failure(6.0)
    assert ep.available(6.0)
    ep.failure(6.0)
    assert not ep.available(6.0)
    assert ep.available(6.0 + BASE_EJECTION_S)
    t = 6.0 + BASE_EJECTION_S
    for _ in range(CONSECUTIVE_ERRORS):  # re-admitted and failing again: twice as long
        ep.failure(t)
    assert not ep.available(t + 2 * BASE_EJECTION_S - 0.01)
    assert ep.available(t + 2 * BASE_EJECTION_S)


def test_error_rate_ejects_without_a_consecutive_run() -> None:
    ep = endpoint()
    ep.success(0.0)  # opens a window
    for i in range(30):  # two failures, one success: never CONSECUTIVE_ERRORS in a row
        (ep.success if i % 3 == 0 else ep.failure)(0.1 + i * 0.3)
    assert ep.available(FAILURE_WINDOW_S - 0.1)
    ep.success(FAILURE_WINDOW_S)  # the window closes with 20 failures in 31 calls
    assert not ep.available(FAILURE_WINDOW_S + 0.1)


def test_a_few_errors_in_a_busy_window_do_not_eject() -> None:
    ep = endpoint()
    ep.success(0.0)
    for i in range(100):
        (ep.failure if i % 10 == 0 else ep.success)(0.05 * i)
    ep.success(FAILURE_WINDOW_S + 1)
    assert ep.available(FAILURE_WINDOW_S + 1)


def test_clean_windows_earn_ejections_back() -> None:
    ep = endpoint()
    for _ in range(CONSECUTIVE_ERRORS):
        ep.failure(0.0)
    assert ep.ejections == 1
    t = BASE_EJECTION_S
    ep.success(t)
    assert ep.ejections == 1
    ep.success(t + FAILURE_WINDOW_S + 0.1)  # a window without failures after the ejection ends
    assert ep.ejections == 0


def test_retry_budget_caps_retries_and_refills() -> None:
    budget = RetryBudget()
    allowed = sum(budget.withdraw(0.0) for _ in range(100))
    assert allowed == int(RETRY_MAX_TOKENS)
    assert not budget.withdraw(0.0)
    for _ in range(5):  # five requests at 20% buy one retry
        budget.deposit()
    assert budget.withdraw(0.0)
    assert not budget.withdraw(0.0)
    assert budget.withdraw(0.1)  # 10 a second from the clock
    assert not budget.withdraw(0.1)


def test_a_deadline_behaves_as_asyncio_timeout() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        with Deadline(loop, 1.0):  # not reached: the block's result stands
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError), Deadline(loop, 0.02):
            await asyncio.sleep(5)
        assert asyncio.current_task().cancelling() == 0
        with Deadline(loop, 0.02) as deadline:  # disarmed while the upstream is not awaited
            deadline.reschedule(None)
            await asyncio.sleep(0.05)
            deadline.reschedule(loop.time() + 1.0)

        async def cancelled_from_outside() -> None:
            with Deadline(loop, 5.0):
                await asyncio.sleep(5)

        await cancel_after(cancelled_from_outside(), 0.01)

    asyncio.run(run())


def test_deadlines_on_a_shared_clock_expire_each_on_time() -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        clock = DeadlineClock(loop)

        async def call(delay: float, work_s: float, move: bool = False) -> str:
            try:
                with Deadline(loop, delay, clock) as deadline:
                    if move:  # a streamed body's deadline leaves the clock
                        deadline.reschedule(loop.time() + 0.02)
                    await asyncio.sleep(work_s)
            except TimeoutError:
                return "timeout"
            return "done"

        # Fast calls finish under the slow ones' deadlines (which fire in order), a moved
        # deadline keeps its own time, and 3,000 finished calls behind a live one are compacted.
        slow = asyncio.gather(call(0.05, 5), call(0.08, 5), call(5.0, 0.03, move=True))
        fast = [await call(0.05, 0) for _ in range(3000)]
        t0 = loop.time()
        assert await slow == ["timeout", "timeout", "timeout"]
        assert loop.time() - t0 < 0.2
        assert fast == ["done"] * 3000
        assert len(clock._pending) < 3000
        assert await call(0.01, 0.2) == "timeout"  # the clock arms itself again when idle
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(run())

"""Deadlines for the data plane's awaits, without asyncio's per-use costs.

`Deadline` is `asyncio.timeout(delay)` for a given loop; `DeadlineClock` lets the deadlines of
one delay share one timer; `clock_on_running_loop` keeps a clock bound to the loop that runs,
so the hot path looks the loop up once rather than per call (on Python 3.11 each
`asyncio.get_running_loop()` is a getpid() syscall: its fork check).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final

_EARLY_S: Final = 0.001  # a loop timer may fire this much before its time (uvloop: milliseconds)
_COMPACT_MIN: Final = 1024  # DeadlineClock: queue length that first triggers a compaction


class Deadline:
    """`asyncio.timeout(delay)` for the loop at hand, with the same outcome: when it expires the
    task is cancelled and that cancellation leaves the block as TimeoutError (unless the task
    was also cancelled from elsewhere, which stays a cancellation).

    asyncio's looks the running loop up three times per use, and on Python 3.11 each look-up is
    a getpid() syscall (its fork check): measured with py-spy, a few percent of a small
    request's CPU for this one timeout. With a `clock` it shares the clock's timer instead of
    arming one of its own (a uvloop call_at and its cancel cost ~2 us)."""

    __slots__ = ("_cancelling", "_clock", "_expired", "_handle", "_loop", "_task", "_when")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay: float, clock: DeadlineClock | None = None
    ) -> None:
        self._loop = loop
        self._when = loop.time() + delay
        self._handle: asyncio.TimerHandle | None = None
        self._clock = clock  # None once it left the clock (or never was on one)
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    def __enter__(self) -> Deadline:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("Deadline should be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        if self._clock is not None:
            self._clock.add(self)
        else:
            self._handle = self._loop.call_at(self._when, self._expire)
        return self

    def reschedule(self, when: float | None) -> None:
        """Expire at loop time `when` instead (None: not until rescheduled)."""
        if self._expired:
            return
        self._clock = None  # on a timer of its own from now on
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None if when is None else self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._handle = self._clock = None
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        self._clock = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task, self._task = self._task, None  # a deadline the clock still holds keeps no task
        if (
            self._expired
            and task is not None
            and task.uncancel() <= self._cancelling
            and exc_type is asyncio.CancelledError
        ):
            raise TimeoutError from exc


class DeadlineClock:
    """The deadlines of one delay on one loop (a variant's timeout): set one after the other,
    they expire in the order they were set, so one timer serves them all, armed for the oldest.
    A deadline that left its block, or moved to a timer of its own, is dropped when it comes
    to the front; the queue is compacted when one slow request holds many such behind it."""

    __slots__ = ("_compact_at", "_pending", "_timer", "delay", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float | None = None) -> None:
        self.loop = loop
        self.delay = delay  # the one delay of its deadlines, when its owner states it
        self._pending: deque[Deadline] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._compact_at = _COMPACT_MIN

    def add(self, deadline: Deadline) -> None:
        pending = self._pending
        while pending and pending[0]._clock is not self:
            pending.popleft()
        if len(pending) >= self._compact_at:
            pending = self._pending = deque(d for d in pending if d._clock is self)
            self._compact_at = max(_COMPACT_MIN, 2 * len(pending))
        pending.append(deadline)
        if self._timer is None:
            self._timer = self.loop.call_at(pending[0]._when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        pending = self._pending
        # A timer may fire up to the loop's clock resolution early.
        due = self.loop.time() + _EARLY_S
        while pending:
            deadline = pending[0]
            if deadline._clock is not self:
                pending.popleft()
            elif deadline._when <= due:
                pending.popleft()
                deadline._expire()
            else:
                self._timer = self.loop.call_at(deadline._when, self._fire)
                return


def clock_on_running_loop(clock: DeadlineClock | None, delay: float) -> DeadlineClock:
    """`clock` while its loop runs and it serves `delay`; else a new clock on the running loop.
    (A clock holds deadlines of one delay: a new delay, after a reload, needs a new clock.)"""
    if clock is None or clock.delay != delay or not clock.loop.is_running():
        return DeadlineClock(asyncio.get_running_loop(), delay)
    return clock

"""Mirroring: fire-and-forget copies to another variant with bounded concurrency.

A copy never delays or changes the client's response: it is a detached task, and when the bound
is reached the copy is dropped (and counted) rather than queued.
"""

from __future__ import annotations

import asyncio

from lvm_gateway.errors import BadRequestError, UpstreamError
from lvm_gateway.gateway.dispatch import Call, Dispatcher
from lvm_gateway.gateway.metrics import MetricsRecorder
from lvm_gateway.policies.base import Decision


class Mirror:
    def __init__(self, dispatch: Dispatcher, metrics: MetricsRecorder, max_inflight: int) -> None:
        self.dispatch = dispatch
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, decision: Decision, call: Call) -> None:
        if len(self._tasks) >= self.max_inflight:
            self.metrics.mirror(decision.variant, "dropped")
            return
        task = asyncio.create_task(self._send(decision, call.mirrored()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, decision: Decision, call: Call) -> None:
        try:
            await self.dispatch.serve(decision, call, served=False)
        except (UpstreamError, BadRequestError):  # a body the copy's protocol cannot carry
            self.metrics.mirror(decision.variant, "failed")
            return
        self.metrics.mirror(decision.variant, "sent")

    async def drain(self, timeout_s: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

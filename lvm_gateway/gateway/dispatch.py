"""One call to a variant, or to a mixture of experts, with everything that must happen around it.

The client's request, its fallback and its mirrored (shadow) copies all go through here, so each
is bounded by the variant's circuit and timeout, inspected as an LVM answer, counted in the
rollout windows and the Prometheus metrics, and recorded for feedback, in the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Protocol

import orjson

from lvm_gateway.errors import (
    CircuitOpenError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from lvm_gateway.gateway.circuit import Circuits
from lvm_gateway.gateway.fusion import fuse
from lvm_gateway.gateway.metrics import MetricsRecorder
from lvm_gateway.gateway.records import PredictionRecords
from lvm_gateway.gateway.signals import Prediction, inspect_answer
from lvm_gateway.gateway.upstream import UpstreamPool, UpstreamResponse
from lvm_gateway.policies.base import Decision


class RecorderLike(Protocol):
    def record_request(
        self, variant: str, latency_s: float, error: bool, lane: str | None = None
    ) -> None: ...

    def incr(self, variant: str, metric: str, n: int = 1, lane: str | None = None) -> None: ...


class Dispatcher:
    def __init__(
        self,
        pool: UpstreamPool,
        circuits: Circuits,
        metrics: MetricsRecorder,
        windows: RecorderLike,
        records: PredictionRecords,
    ) -> None:
        self.pool = pool
        self.circuits = circuits
        self.metrics = metrics
        self.windows = windows
        self.records = records
        self.inflight: dict[str, int] = {}  # read by policies (expert capacity) via RoutingView

    def _observe(
        self,
        variant: str,
        lane: str | None,
        request_id: str,
        prediction: Prediction | None,
        served: bool,
    ) -> None:
        if prediction is None or lane is None:
            return
        if prediction.empty:
            self.windows.incr(variant, "empty", lane=lane)
            self.metrics.empty_hit(variant, lane)
        if self.records.sampled(request_id):
            self.records.add(request_id, variant, lane, prediction, served)

    async def _answer(
        self, variant: str, target: str, body: bytes, headers: Mapping[str, str], lane: str | None
    ) -> tuple[UpstreamResponse, Prediction | None]:
        """The variant's inspected answer, counted against its circuit and in its windows."""
        if self.circuits.is_open(variant):
            exc: UpstreamError = CircuitOpenError(variant, "circuit open after repeated errors")
            self.metrics.upstream_error(variant, exc.kind)
            raise exc
        client = self.pool.clients.get(variant)
        if client is None:  # a copy that outlived the reload that removed its variant
            raise UpstreamConnectError(variant, "no longer configured")
        self.inflight[variant] = self.inflight.get(variant, 0) + 1
        t0 = time.perf_counter()
        try:
            resp = await client.post(target, body, dict(headers))
            inspect = lane is not None and resp.status == 200
            prediction = inspect_answer(resp.body, variant) if inspect else None
        except UpstreamError as exc:
            elapsed = time.perf_counter() - t0
            self.circuits.record(variant, True)
            self.metrics.upstream_error(variant, exc.kind)
            self.metrics.upstream(variant, elapsed)
            if exc.kind == "invalid_prediction":
                self.windows.incr(variant, "invalid", lane=lane)
            self.windows.record_request(variant, elapsed, True, lane)
            raise
        finally:
            self.inflight[variant] -= 1
        elapsed = time.perf_counter() - t0
        self.circuits.record(variant, False)
        self.metrics.upstream(variant, elapsed)
        self.windows.record_request(variant, elapsed, False, lane)
        return resp, prediction

    async def serve(
        self,
        decision: Decision,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str,
        lane: str | None,
        served: bool,
    ) -> UpstreamResponse:
        """Carry out a policy's decision: one variant, or a mixture's fan-out."""
        if decision.fanout:
            self.metrics.masked(decision.variant, decision.masked)
            return await self.call_mixture(
                decision.variant, decision.experts, decision.deadline_s, target, body, headers,
                request_id=request_id, lane=lane, served=served,
            )  # fmt: skip
        return await self.call(
            decision.variant, target, body, headers, request_id=request_id, lane=lane, served=served
        )

    async def call(
        self,
        variant: str,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str,
        lane: str | None,
        served: bool,
    ) -> UpstreamResponse:
        """The variant's answer; UpstreamError (after counting it) when it has none to give.

        `lane` is None on routes that are not LVM inference routes: then the answer is passed
        through uninspected.
        """
        resp, prediction = await self._answer(variant, target, body, headers, lane)
        self._observe(variant, lane, request_id, prediction, served)
        return resp

    async def call_mixture(
        self,
        name: str,
        experts: tuple[tuple[str, float], ...],
        deadline_s: float,
        target: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        request_id: str,
        lane: str | None,
        served: bool,
    ) -> UpstreamResponse:
        """Fan out to the chosen experts at once; fuse the answers that arrive by the deadline.

        An expert that fails or misses the deadline is masked out and the gate weights are
        renormalised over the others; with no answer at all this is an UpstreamError of `name`.
        """
        if not experts:
            self.metrics.upstream_error(name, "circuit_open")
            raise CircuitOpenError(name, "every expert is masked (circuits open or at capacity)")
        t0 = time.perf_counter()
        calls = [
            asyncio.wait_for(self._answer(e, target, body, headers, lane or "none"), deadline_s)
            for e, _ in experts
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        answered: list[tuple[str, float, Prediction]] = []
        for (expert, weight), result in zip(experts, results, strict=True):
            if isinstance(result, BaseException):
                reason = "deadline" if isinstance(result, TimeoutError) else "error"
                self.metrics.expert(name, expert, reason)
                continue
            _, prediction = result
            if prediction is not None:
                answered.append((expert, weight, prediction))
                self.metrics.expert(name, expert, "answered")
        elapsed = time.perf_counter() - t0
        if not answered:
            self.windows.record_request(name, elapsed, True, lane)
            self.metrics.upstream_error(name, "no_expert")
            raise UpstreamTimeoutError(name, f"none of {len(experts)} experts answered in time")
        doc, fused = fuse(answered)
        self.windows.record_request(name, elapsed, False, lane)
        self._observe(name, lane, request_id, fused, served)
        return UpstreamResponse(200, orjson.dumps(doc), "application/json")

"""One call to one variant, with everything that must happen around it.

The client's request, its fallback and its mirrored (shadow) copies all go through `call`, so
each is bounded by the variant's circuit and timeout, inspected as an LVM answer, counted in the
rollout windows and the Prometheus metrics, and recorded for feedback, in the same way.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Protocol

from lvm_gateway.errors import CircuitOpenError, UpstreamError
from lvm_gateway.gateway.circuit import Circuits
from lvm_gateway.gateway.metrics import MetricsRecorder
from lvm_gateway.gateway.records import PredictionRecords
from lvm_gateway.gateway.signals import inspect_answer
from lvm_gateway.gateway.upstream import UpstreamPool, UpstreamResponse


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

    def known(self, variant: str) -> bool:
        return variant in self.pool.clients

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
        if self.circuits.is_open(variant):
            exc: UpstreamError = CircuitOpenError(variant, "circuit open after repeated errors")
            self.metrics.upstream_error(variant, exc.kind)
            raise exc
        client = self.pool.clients[variant]
        t0 = time.perf_counter()
        try:
            resp = await client.post(target, body, dict(headers))
            if lane is not None and resp.status == 200:
                prediction = inspect_answer(resp.body, variant)
                if prediction.empty:
                    self.windows.incr(variant, "empty", lane=lane)
                    self.metrics.empty_hit(variant, lane)
                if self.records.sampled(request_id):
                    self.records.add(request_id, variant, lane, prediction, served)
        except UpstreamError as exc:
            self.circuits.record(variant, True)
            self.metrics.upstream_error(variant, exc.kind)
            if exc.kind == "invalid_prediction":
                self.windows.incr(variant, "invalid", lane=lane)
            self.windows.record_request(variant, time.perf_counter() - t0, True, lane)
            raise
        self.circuits.record(variant, False)
        self.windows.record_request(variant, time.perf_counter() - t0, False, lane)
        return resp

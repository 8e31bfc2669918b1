"""One call to a variant, or to a mixture of experts, with everything that must happen around it.

The client's request, its fallback and its mirrored (shadow) copies all go through here, so each
is bounded by the variant's circuit and timeout, inspected as an LVM answer, counted in the
rollout windows and the Prometheus metrics, and recorded for feedback, in the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import orjson

from lvm_gateway.config.spec import DEFAULT_RETRY, RetrySpec
from lvm_gateway.contract.oip import LVM_PROTOCOL, PROTOCOL, RequestHead
from lvm_gateway.contract.windows import DIVERTED, EMPTY, INVALID
from lvm_gateway.errors import (
    CircuitOpenError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeoutError,
)
from lvm_gateway.gateway.bodies import StreamedBody
from lvm_gateway.gateway.circuit import Circuits
from lvm_gateway.gateway.fusion import fuse
from lvm_gateway.gateway.metrics import MetricsRecorder
from lvm_gateway.gateway.records import PredictionRecords
from lvm_gateway.gateway.signals import Prediction, inspect_answer, inspect_oip_answer
from lvm_gateway.gateway.translate import answer_header_length, client_answer, upstream_request
from lvm_gateway.gateway.upstream import UpstreamPool, UpstreamResponse
from lvm_gateway.policies.base import Decision


class RecorderLike(Protocol):
    def record_request(
        self, variant: str, latency_s: float, error: bool, lane: str | None = None
    ) -> None: ...

    def incr(self, variant: str, metric: str, n: int = 1, lane: str | None = None) -> None: ...


class Call:
    """One client request as every upstream call made for it sends it.

    A plain class built per request: its __init__ is compiled (lvm_gateway/native.py), where a
    dataclass's generated one would run as Python (~0.5 us per request)."""

    __slots__ = (
        "body",
        "client_id",
        "headers",
        "lane",
        "lane_of",
        "method",
        "model",
        "oip",
        "protocol",
        "query",
        "record",
        "request_id",
        "retry",
        "target",
        "translated",
    )

    def __init__(
        self,
        target: str,  # path and query
        body: bytes | StreamedBody,  # streamed: forwarded as it arrives (gateway/bodies.py)
        headers: dict[str, str],  # forwarded headers, with X-Request-Id
        request_id: str,  # the gateway's own id: the key of the prediction record
        lane: str | None,  # None on routes that are not LVM inference routes: not inspected
        client_id: str | None = None,  # the client's X-Request-Id, for tracing only
        record: bool = False,  # keep the answers for feedback (sampled: a token can be issued)
        method: str = "POST",  # as the client sent it
        protocol: str = LVM_PROTOCOL,  # what the client speaks
        oip: RequestHead | None = None,  # a v2 request's checked JSON object
        model: str = "",  # the model a v2 client named
        query: str = "",  # "?..." or empty
        lane_of: Callable[[], str] | None = None,  # a streamed body's lane, read off its edges
        # once they arrived (`lane` is then a stand-in)
        retry: RetrySpec = DEFAULT_RETRY,  # the route's retry policy
    ) -> None:
        self.target = target
        self.body = body
        self.headers = headers
        self.request_id = request_id
        self.lane = lane
        self.client_id = client_id
        self.record = record
        self.method = method
        self.protocol = protocol
        self.oip = oip
        self.model = model
        self.query = query
        self.lane_of = lane_of
        self.retry = retry
        # The body in the other protocol and its content headers, made once for the first
        # variant that needs it (shared with the call's fallback and mirrored copies).
        self.translated: dict[str, tuple[bytes, dict[str, str]]] = {}

    def mirrored(self) -> Call:
        """The copy a mirror sends: marked `x-mirror: 1`, sharing the translated bodies."""
        copy = Call(
            self.target, self.body, {**self.headers, "x-mirror": "1"}, self.request_id,
            self.lane, self.client_id, self.record, self.method, self.protocol, self.oip,
            self.model, self.query, self.lane_of, self.retry,
        )  # fmt: skip
        copy.translated = self.translated
        return copy

    def lane_now(self) -> str | None:
        return self.lane_of() if self.lane_of is not None else self.lane


def _variant_time(t0: float, body: bytes | StreamedBody, end: float = 0.0) -> float:
    """The time a call took once the variant could have the whole request: from `t0`, or from
    the last byte of a streamed body if that came later, to `end` (the answer's last byte; now
    when 0). A client's slow upload of a large context is not the variant's latency, nor is the
    wait of the gateway's busy loop before it reads the answer: the judge's latency SLO is about
    the variant."""
    end = end or time.perf_counter()
    if isinstance(body, StreamedBody) and body.finished_at > t0:
        return end - body.finished_at
    return end - t0


class Dispatcher:
    def __init__(
        self,
        pool: UpstreamPool,
        circuits: Circuits,
        metrics: MetricsRecorder,
        recorder: RecorderLike,
        records: PredictionRecords,
    ) -> None:
        self.pool = pool
        self.circuits = circuits
        self.metrics = metrics
        self.windows = recorder
        self.records = records
        self.inflight: dict[str, int] = {}  # read by policies (expert capacity) via RoutingView

    def _observe(
        self, variant: str, call: Call, prediction: Prediction | None, served: bool
    ) -> None:
        lane = call.lane_now()
        if prediction is None or lane is None:
            return
        if prediction.empty:
            self.windows.incr(variant, EMPTY, lane=lane)
            self.metrics.empty_hit(variant, lane)
        if call.record:
            self.records.add(call.request_id, variant, lane, prediction, served, call.client_id)

    def divert(self, variant: str, lane: str | None) -> None:
        """A request meant for `variant` goes elsewhere because its circuit is open: a failure
        of `variant` that its own counts would not show (it never saw the request)."""
        self.windows.incr(variant, DIVERTED, lane=lane)

    async def _answer(
        self, variant: str, call: Call, lane: str | None
    ) -> tuple[UpstreamResponse, Prediction | None, str]:
        """The variant's inspected answer and the protocol it speaks, counted against its
        circuit and in its windows."""
        if self.circuits.is_open(variant):
            self.divert(variant, lane)
            exc: UpstreamError = CircuitOpenError(variant, "circuit open after repeated errors")
            self.metrics.upstream_error(variant, exc.kind)
            raise exc
        client = self.pool.clients.get(variant)
        if client is None:  # a copy that outlived the reload that removed its variant
            raise UpstreamConnectError(variant, "no longer configured")
        self.inflight[variant] = self.inflight.get(variant, 0) + 1
        protocol = client.spec.protocol
        target, body, headers = upstream_request(call, client.spec)
        t0 = time.perf_counter()
        try:
            resp = await client.request(call.method, target, body, headers, call.retry)
            lane = call.lane_now() or lane if lane is not None else None
            prediction = None
            if lane is not None and resp.status == 200:
                prediction = (
                    inspect_oip_answer(resp.body, answer_header_length(resp), variant)
                    if protocol == PROTOCOL
                    else inspect_answer(resp.body, variant)
                )
        except UpstreamError as exc:
            elapsed = _variant_time(t0, body)
            self.circuits.record(variant, True)
            self.metrics.upstream_error(variant, exc.kind)
            self.metrics.upstream(variant, elapsed)
            if exc.kind == "invalid_prediction":
                self.windows.incr(variant, INVALID, lane=lane)
            self.windows.record_request(variant, elapsed, True, lane)
            raise
        finally:
            self.inflight[variant] -= 1
        elapsed = _variant_time(t0, body, resp.received_at)
        self.circuits.record(variant, False)
        self.metrics.upstream(variant, elapsed)
        self.windows.record_request(variant, elapsed, False, lane)
        return resp, prediction, protocol

    async def serve(self, decision: Decision, call: Call, served: bool) -> UpstreamResponse:
        """Carry out a policy's decision (one variant, or a mixture's fan-out): the answer in
        the client's protocol; UpstreamError, after counting it, when there is no answer to
        give. `served`: the user sees it."""
        if decision.fanout:
            self.metrics.masked(decision.variant, decision.masked)
            resp = await self._mixture(decision, call, served)
            return client_answer(call, resp, LVM_PROTOCOL, decision.variant)
        resp, prediction, protocol = await self._answer(decision.variant, call, call.lane)
        self._observe(decision.variant, call, prediction, served)
        return client_answer(call, resp, protocol, decision.variant)

    async def _mixture(self, decision: Decision, call: Call, served: bool) -> UpstreamResponse:
        """Fan out to the chosen experts at once; fuse the answers that arrive by the deadline.

        An expert that fails or misses the deadline is masked out and the gate weights are
        renormalised over the others; with no answer at all this is an UpstreamError of the
        mixture.
        """
        name, experts = decision.variant, decision.experts
        if not experts:
            self.divert(name, call.lane)
            self.metrics.upstream_error(name, "circuit_open")
            raise CircuitOpenError(name, "every expert is masked (circuits open or at capacity)")
        t0 = time.perf_counter()
        # Experts' answers are always inspected: fusion needs their vectors.
        calls = [
            asyncio.wait_for(self._answer(e, call, call.lane or "none"), decision.deadline_s)
            for e, _ in experts
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        answered: list[tuple[str, float, Prediction]] = []
        for (expert, weight), result in zip(experts, results, strict=True):
            if isinstance(result, BaseException):
                reason = "deadline" if isinstance(result, TimeoutError) else "error"
                self.metrics.expert(name, expert, reason)
                continue
            _, prediction, _ = result
            if prediction is not None:
                answered.append((expert, weight, prediction))
                self.metrics.expert(name, expert, "answered")
        elapsed = time.perf_counter() - t0
        if not answered:
            self.windows.record_request(name, elapsed, True, call.lane_now())
            self.metrics.upstream_error(name, "no_expert")
            raise UpstreamTimeoutError(name, f"none of {len(experts)} experts answered in time")
        doc, fused = fuse(answered)
        self.windows.record_request(name, elapsed, False, call.lane_now())
        self._observe(name, call, fused, served)
        return UpstreamResponse(200, orjson.dumps(doc), "application/json")

"""User feedback: parse it strictly, score the recorded answers with the LVM plan's Hit@K proxy,
count the scores.

`{"request_id", "clicked_vector": [768]}` is scored by cosine (> 0.8 / 0.6 / 0.4 is a hit at
1 / 5 / 10); `{"request_id", "clicked_id"}` exactly, against the neighbour ids the variant
returned (a hit at k when the id is among the first k). `parse_feedback` and `score` are pure;
`FeedbackIntake` does the I/O around them: the token check (gateway/ids.py), the record lookup,
the once-only key across replicas, the window counters and the Prometheus metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from lvm_gateway.config.spec import FeedbackSpec
from lvm_gateway.contract.lvm import DIM, cosine, cosine_hits, id_hits, json_object
from lvm_gateway.contract.windows import FEEDBACK, HITS
from lvm_gateway.errors import BadRequestError
from lvm_gateway.gateway.dispatch import RecorderLike
from lvm_gateway.gateway.ids import FeedbackAuthError, FeedbackTokens, is_gateway_id
from lvm_gateway.gateway.metrics import MetricsRecorder
from lvm_gateway.gateway.records import PredictionRecords, Record


@dataclass(frozen=True, slots=True)
class Feedback:
    request_id: str
    clicked_vector: np.ndarray | None
    clicked_id: str | None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Score:
    variant: str
    shadow: bool  # scored an answer the user never saw
    hits: dict[int, bool]
    cosine: float | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "shadow": self.shadow}
        out.update({f"hit@{k}": v for k, v in self.hits.items()})
        if self.cosine is not None:
            out["cosine"] = round(self.cosine, 4)
        return out


def parse_feedback(body: bytes) -> Feedback:
    doc = json_object(body)
    unknown = set(doc) - {"request_id", "clicked_vector", "clicked_id", "token"}
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(sorted(unknown))}")
    rid = doc.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        raise BadRequestError("request_id must be a non-empty string (the X-Request-Id answered)")
    token = doc.get("token")
    if token is not None and (not isinstance(token, str) or not 0 < len(token) <= 128):
        raise BadRequestError("token must be the X-Feedback-Token the answer carried")
    has_vec, has_id = "clicked_vector" in doc, "clicked_id" in doc
    if has_vec == has_id:
        raise BadRequestError("give exactly one of clicked_vector or clicked_id")
    if has_id:
        cid = doc["clicked_id"]
        if not isinstance(cid, str) or not cid:
            raise BadRequestError("clicked_id must be a non-empty string")
        return Feedback(rid, None, cid, token)
    vec = doc["clicked_vector"]
    if not isinstance(vec, list) or len(vec) != DIM:
        size = len(vec) if isinstance(vec, list) else type(vec).__name__
        raise BadRequestError(f"clicked_vector must be a list of {DIM} numbers, got {size}")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vec):
        raise BadRequestError("clicked_vector must contain only numbers")
    with np.errstate(over="ignore"):
        arr = np.asarray(vec, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise BadRequestError("clicked_vector holds a non-finite number")
    if not np.any(arr):
        raise BadRequestError("clicked_vector is all zeros")
    return Feedback(rid, arr, None, token)


def score(record: Record, fb: Feedback) -> list[Score]:
    """One score per recorded answer: the served one first, then shadows."""
    out = []
    for variant in sorted(record.answers, key=lambda v: v != record.served):
        answer = record.answers[variant]
        if fb.clicked_vector is not None:
            c = cosine(answer.vector, fb.clicked_vector)
            hits, cos = cosine_hits(answer.vector, fb.clicked_vector), c
        else:
            assert fb.clicked_id is not None
            hits, cos = id_hits(fb.clicked_id, answer.neighbor_ids), None
        out.append(Score(variant, variant != record.served, hits, cos))
    return out


class FeedbackIntake:
    """POST /v1/feedback behind the HTTP layer: (status, JSON payload) for a body."""

    def __init__(
        self,
        records: PredictionRecords,
        tokens: FeedbackTokens,
        windows: RecorderLike,
        metrics: MetricsRecorder,
    ) -> None:
        self.records = records
        self.tokens = tokens
        self.windows = windows
        self.metrics = metrics

    async def receive(
        self,
        client: aioredis.Redis,
        body: bytes,
        header_token: str | None,
        spec: FeedbackSpec,
    ) -> tuple[int, dict[str, Any]]:
        """Score a feedback post. BadRequestError (FeedbackAuthError: 401/403) changes nothing;
        RedisError/OSError when the store is unreachable."""
        fb = parse_feedback(body)
        token = fb.token or header_token
        if token is None:
            if is_gateway_id(fb.request_id) and not self.records.sampled(fb.request_id):
                return 202, {"request_id": fb.request_id, "sampled": False, "recorded": []}
            raise FeedbackAuthError(
                "missing feedback token: send the X-Feedback-Token the answer carried, as "
                '"token" or in the X-Feedback-Token header (answers without one were not sampled)',
                status=401,
            )
        gateway_id = self.tokens.verify(token)
        record = await self.records.fetch(client, gateway_id)
        if record is None:
            return 404, {
                "error": "not_found",
                "message": f"no prediction recorded for request_id {fb.request_id!r}: expired"
                f" (kept {spec.ttl_seconds:g} s) or not yet written",
            }
        if fb.request_id not in (gateway_id, record.client_id):
            raise FeedbackAuthError(
                f"the token belongs to another request than {fb.request_id!r}", status=403
            )
        # Across replicas, the first feedback for an answer wins; repeats count nothing.
        first = await client.set(
            self.records.keys.feedback_seen(gateway_id), 1, nx=True,
            px=int(spec.ttl_seconds * 1000),
        )  # fmt: skip
        if not first:
            self.metrics.feedback("duplicate")
            return 200, {"request_id": fb.request_id, "duplicate": True, "recorded": []}
        scores = score(record, fb)
        for s in scores:
            self.windows.incr(s.variant, FEEDBACK, lane=record.lane)
            for k, hit in s.hits.items():
                if hit:
                    self.windows.incr(s.variant, HITS[k], lane=record.lane)
            self.metrics.hits(s.variant, record.lane, s.hits)
        self.metrics.feedback("recorded")
        return 202, {
            "request_id": fb.request_id,
            "sampled": True,
            "lane": record.lane,
            "duplicate": False,
            "recorded": [s.as_json() for s in scores],
        }

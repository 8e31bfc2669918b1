"""Prediction records: what feedback needs to score an answer later, kept in Redis with a TTL.

One Redis hash per sampled request id: the lane, the variant the user saw, and per answering
variant (the served one and any shadow) the predicted vector as int8 with a float32 scale
(772 bytes instead of 3 KB of float32; cosine error below 1e-3) and the neighbour ids. The hot
path only appends to a local buffer; `flush` writes it in one pipeline, and `fetch` also looks
in the buffer, so feedback that beats the flush to this replica is still found.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import redis.asyncio as aioredis

from lvm_gateway.gateway.signals import Prediction

_SEP = "\x1f"
MAX_PENDING = 50_000  # records kept while Redis is unreachable; older ones are dropped


def pack_vector(vec: np.ndarray) -> bytes:
    peak = float(np.abs(vec).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    return struct.pack("<f", scale) + np.round(vec / scale).astype(np.int8).tobytes()


def unpack_vector(blob: bytes) -> np.ndarray:
    (scale,) = struct.unpack_from("<f", blob)
    return np.frombuffer(blob, dtype=np.int8, offset=4).astype(np.float32) * scale


@dataclass(frozen=True, slots=True)
class Answer:
    vector: np.ndarray
    neighbor_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Record:
    lane: str
    served: str  # the variant whose answer the user saw
    answers: dict[str, Answer]  # variant -> answer (the served one and shadow ones)


class PredictionRecords:
    def __init__(self, prefix: str, ttl_s: float, sample_rate: float) -> None:
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.threshold = int(sample_rate * 10_000)
        self._pending: dict[str, dict[str, bytes | str]] = {}
        self.dropped = 0

    def configure(self, prefix: str, ttl_s: float, sample_rate: float) -> None:
        self.prefix, self.ttl_ms = prefix, int(ttl_s * 1000)
        self.threshold = int(sample_rate * 10_000)

    def key(self, request_id: str) -> str:
        return f"{self.prefix}:pred:{request_id}"

    def sampled(self, request_id: str) -> bool:
        # By hash of the id, so the served answer and its shadows are kept or skipped together.
        return zlib.crc32(request_id.encode()) % 10_000 < self.threshold

    def add(self, request_id: str, variant: str, lane: str, pred: Prediction, served: bool) -> None:
        fields = self._pending.get(request_id)
        if fields is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
                self.dropped += 1
            fields = self._pending[request_id] = {"lane": lane}
        if served:
            fields["served"] = variant
        fields[f"v:{variant}"] = pack_vector(pred.vector())
        fields[f"n:{variant}"] = _SEP.join(pred.neighbor_ids)

    async def flush(self, client: aioredis.Redis) -> int:
        """Write the buffer in one pipeline; on failure the records stay for the next try."""
        if not self._pending:
            return 0
        batch = self._pending
        self._pending = {}
        try:
            async with client.pipeline(transaction=False) as pipe:
                for rid, fields in batch.items():
                    pipe.hset(self.key(rid), mapping=fields)
                    pipe.pexpire(self.key(rid), self.ttl_ms)
                await pipe.execute()
        except BaseException:
            # Newer records for the same ids (arrived meanwhile) win over the failed batch.
            for rid, fields in batch.items():
                self._pending[rid] = {**fields, **self._pending.get(rid, {})}
            raise
        return len(batch)

    async def fetch(self, client: aioredis.Redis, request_id: str) -> Record | None:
        stored = await client.hgetall(self.key(request_id))
        fields: dict[str, bytes | str] = {k.decode(): v for k, v in stored.items()}
        fields.update(self._pending.get(request_id, {}))
        if "served" not in fields and not any(k.startswith("v:") for k in fields):
            return None
        answers = {}
        for name, value in fields.items():
            if name.startswith("v:"):
                variant = name[2:]
                ids = fields.get(f"n:{variant}", b"")
                text = ids.decode() if isinstance(ids, bytes) else ids
                answers[variant] = Answer(
                    unpack_vector(value if isinstance(value, bytes) else value.encode()),
                    tuple(text.split(_SEP)) if text else (),
                )
        served = fields.get("served", "")
        lane = fields.get("lane", "none")
        return Record(
            lane=lane.decode() if isinstance(lane, bytes) else lane,
            served=served.decode() if isinstance(served, bytes) else served,
            answers=answers,
        )

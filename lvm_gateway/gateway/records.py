"""Prediction records: what feedback needs to score an answer later, kept in Redis with a TTL.

One Redis hash per sampled request id: the lane, the variant the user saw, and per answering
variant (the served one and any shadow) one blob: the predicted vector as int8 with a float32
scale (774 bytes instead of 3 KB of float32; cosine error below 1e-3), then the neighbour ids.
The hot path only appends to a local buffer; `flush` writes it in one pipeline, and `fetch`
also looks in the buffer, so feedback that beats the flush to this replica is still found.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import redis.asyncio as aioredis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.gateway.signals import Prediction
from lvm_gateway.redisconn import binary, text

_SEP: Final = "\x1f"
MAX_PENDING: Final = 50_000  # records kept while Redis is unreachable; older ones are dropped
FLUSH_CHUNK: Final = 500  # records per script call: bounded Redis blocking time per call

# One call writes a whole chunk: a pipeline of HSET+PEXPIRE per record costs ~2x the Python
# (command packing and reply parsing) on the gateway's event loop, measured at 1,000 records.
# ARGV: ttl_ms, then per key: field count n, then n field/value pairs.
_WRITE_LUA = """
local ttl = ARGV[1]
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  redis.call('HSET', KEYS[k], unpack(ARGV, a + 1, a + 2 * n))
  redis.call('PEXPIRE', KEYS[k], ttl)
  a = a + 1 + 2 * n
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Answer:
    vector: np.ndarray
    neighbor_ids: tuple[str, ...]


_HEAD: Final = struct.Struct("<fH")  # int8 scale, vector length
_ABS: Final = np.abs
_PEAK: Final = np.maximum.reduce
_RINT: Final = np.rint


def pack_answer(values: np.ndarray, neighbor_ids: Sequence[str]) -> bytes:
    # Ufuncs called directly, from the values as inspected (float64 or float32): ndarray.max
    # and np.round go through Python wrappers, and each step is a temporary (~1 us apiece).
    peak = float(_PEAK(_ABS(values))) if values.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    quantized = _RINT(values * (1.0 / scale)).astype(np.int8).tobytes()
    return _HEAD.pack(scale, values.size) + quantized + _SEP.join(neighbor_ids).encode()


def unpack_answer(blob: bytes) -> Answer:
    scale, n = _HEAD.unpack_from(blob)
    start = _HEAD.size
    vector = np.frombuffer(blob, dtype=np.int8, count=n, offset=start).astype(np.float32) * scale
    ids = blob[start + n :].decode()
    return Answer(vector, tuple(ids.split(_SEP)) if ids else ())


@dataclass(frozen=True, slots=True)
class Record:
    lane: str
    served: str  # the variant whose answer the user saw
    answers: dict[str, Answer]  # variant -> answer (the served one and shadow ones)
    client_id: str | None = None  # the client's X-Request-Id, kept for tracing


class PredictionRecords:
    def __init__(self, prefix: str, ttl_s: float, sample_rate: float) -> None:
        self.keys = RedisKeys(prefix)
        self.ttl_ms = int(ttl_s * 1000)
        self.threshold = int(sample_rate * 10_000)
        self._pending: dict[str, dict[str, bytes | str]] = {}
        # The batch a flush is writing: still visible to `fetch` until Redis has it.
        self._writing: dict[str, dict[str, bytes | str]] = {}
        self.dropped = 0

    def configure(self, prefix: str, ttl_s: float, sample_rate: float) -> None:
        self.keys, self.ttl_ms = RedisKeys(prefix), int(ttl_s * 1000)
        self.threshold = int(sample_rate * 10_000)

    def sampled(self, request_id: str) -> bool:
        # By hash of the id, so the served answer and its shadows are kept or skipped together.
        return zlib.crc32(request_id.encode()) % 10_000 < self.threshold

    def add(
        self,
        request_id: str,
        variant: str,
        lane: str,
        pred: Prediction,
        served: bool,
        client_id: str | None = None,
    ) -> None:
        """Record an answer under the gateway's request id (`client_id`: the client's own)."""
        fields = self._pending.get(request_id)
        if fields is None:
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
                self.dropped += 1
            fields = self._pending[request_id] = {"lane": lane}
            if client_id is not None:
                fields["cid"] = client_id
        if served:
            fields["served"] = variant
        fields[f"a:{variant}"] = pack_answer(pred.values, pred.neighbor_ids)

    async def flush(self, client: aioredis.Redis) -> int:
        """Write the buffer in one pipeline; on failure the records stay for the next try."""
        if not self._pending:
            return 0
        batch = self._writing = self._pending
        self._pending = {}
        items = list(batch.items())
        try:
            for start in range(0, len(items), FLUSH_CHUNK):
                keys: list[str] = []
                args: list[bytes | str | int] = [self.ttl_ms]
                for rid, fields in items[start : start + FLUSH_CHUNK]:
                    keys.append(self.keys.prediction(rid))
                    args.append(len(fields))
                    for name, value in fields.items():
                        args += (name, value)
                await client.eval(_WRITE_LUA, len(keys), *keys, *args)
        except BaseException:
            # Newer records for the same ids (arrived meanwhile) win over the failed batch.
            for rid, fields in batch.items():
                self._pending[rid] = {**fields, **self._pending.get(rid, {})}
            raise
        finally:
            self._writing = {}
        return len(batch)

    async def fetch(self, client: aioredis.Redis, request_id: str) -> Record | None:
        # Read the local buffers before awaiting Redis: a record not in them by then is written.
        local = {**self._writing.get(request_id, {}), **self._pending.get(request_id, {})}
        stored = await client.hgetall(self.keys.prediction(request_id))
        fields: dict[str, bytes | str] = {text(k): v for k, v in stored.items()}
        fields.update(local)
        answers = {
            name[2:]: unpack_answer(binary(blob))
            for name, blob in fields.items()
            if name.startswith("a:")
        }
        if not answers:
            return None
        cid = fields.get("cid")
        return Record(
            lane=text(fields.get("lane", "none")),
            served=text(fields.get("served", "")),
            answers=answers,
            client_id=text(cid) if cid is not None else None,
        )

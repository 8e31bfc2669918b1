"""The Open Inference Protocol (KServe v2) for LVM predictions: encoding, decoding, translation.

Pure functions over bytes and numpy arrays, shared by the gateway (routing, inspection,
translation to and from the LVM JSON protocol) and `lvm-serve` (which speaks both).

The names are part of the contract (issue 12), so that clients can rely on them:
- `POST /v2/models/{model}/infer`; inputs `context_vectors` FP32 [N, 768] and, optionally,
  `tmd_codes` INT32 [3] (domain, task, modifier);
- outputs `predicted_vector` FP32 [768], `neighbor_ids` BYTES [K], `neighbor_scores` FP32 [K];
  answer-level `parameters` carry what the LVM JSON answer has beside them (`confidence`,
  `latency_ms`, `model_type`), so translation keeps them both ways.

Tensor data may be JSON (`data`, nested or flat, row-major) or binary (the binary tensor data
extension): the HTTP body is the JSON object, whose length `Inference-Header-Content-Length`
gives, followed by each binary tensor in the order of the JSON's tensors, little-endian, row
major, no padding; a BYTES element is a 4-byte little-endian length and its bytes. A tensor is
binary when its parameters hold `binary_data_size`. A request asks for binary outputs with
`parameters.binary_data_output` (all) or an output's `parameters.binary_data` (that one, which
overrides). Errors are `{"error": message}`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from lvm_gateway.contract.lvm import DIM, Tmd, tmd_from_body, tmd_of_codes
from lvm_gateway.errors import BadRequestError

PROTOCOL = "oip-v2"
LVM_PROTOCOL = "lvm-json"
PROTOCOLS = (LVM_PROTOCOL, PROTOCOL)
HEADER_LENGTH = "inference-header-content-length"  # lower-case, as ASGI servers give it
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

CONTEXT = "context_vectors"
TMD = "tmd_codes"
PREDICTED = "predicted_vector"
NEIGHBOR_IDS = "neighbor_ids"
NEIGHBOR_SCORES = "neighbor_scores"
INPUTS = (CONTEXT, TMD)
OUTPUTS = (PREDICTED, NEIGHBOR_IDS, NEIGHBOR_SCORES)
# Answer-level parameters that are fields of the LVM JSON answer.
_LVM_FIELDS = ("confidence", "latency_ms", "model_type")

LVM_PATH = "/infer"  # where an LVM JSON model server answers
# /v2/models/{name}[/versions/{version}]/infer
INFER_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
HEALTH_READY_PATH = "/v2/health/ready"
HEALTH_LIVE_PATH = "/v2/health/live"

_FP32 = np.dtype("<f4")
_INT32 = np.dtype("<i4")
_ITEM = {"FP32": _FP32, "INT32": _INT32}  # the fixed-size types of the LVM tensors
_LEN = struct.Struct("<I")


def infer_path(model: str) -> str:
    return f"/v2/models/{model}/infer"


def model_of(path: str) -> str | None:
    """The model name of an infer path, None when `path` is not one."""
    m = INFER_PATH.match(path)
    return m.group(1) if m else None


# -- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TensorRef:
    """One input as the JSON object declares it; its data is JSON or a slice of the body."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None  # the JSON `data` when not binary
    offset: int = -1  # where its binary data starts in the body (-1: JSON data)
    size: int = 0  # bytes of binary data


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A v2 request's JSON object, checked against the LVM tensors; the body is not copied."""

    json_length: int  # bytes of JSON at the start of the body
    inputs: Mapping[str, TensorRef]
    id: str | None
    outputs: tuple[str, ...]  # the outputs to return, in order
    binary_outputs: frozenset[str]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def context_length(self) -> int:
        return self.inputs[CONTEXT].shape[0]

    @property
    def binary(self) -> bool:
        return any(t.offset >= 0 for t in self.inputs.values())


def _header_length(raw: str | None, body_size: int) -> int:
    if raw is None:
        return body_size
    try:
        n = int(raw)
    except ValueError:
        raise BadRequestError(
            f"Inference-Header-Content-Length must be an integer, got {raw!r}"
        ) from None
    if not 0 < n <= body_size:
        raise BadRequestError(
            f"Inference-Header-Content-Length {n} is outside the {body_size}-byte body"
        )
    return n


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise BadRequestError(message)


def _shape(raw: Any, where: str) -> tuple[int, ...]:
    _expect(
        isinstance(raw, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw),
        f"{where}.shape must be a list of non-negative integers",
    )
    return tuple(raw)


def parse_request_head(body: bytes, header_length: str | None) -> RequestHead:
    """The JSON object of a v2 LVM request, its tensors checked (names, types, shapes, binary
    sizes); BadRequestError with the reason otherwise. Binary data is located, not read."""
    json_length = _header_length(header_length, len(body))
    try:
        doc = orjson.loads(memoryview(body)[:json_length])
    except orjson.JSONDecodeError as exc:
        hint = (
            ""
            if header_length is not None
            else " (a body with binary tensors needs Inference-Header-Content-Length)"
        )
        raise BadRequestError(f"inference request is not valid JSON{hint}: {exc}") from None
    _expect(isinstance(doc, dict), "inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    _expect(isinstance(raw_inputs, list) and bool(raw_inputs), "inputs must be a non-empty list")
    inputs: dict[str, TensorRef] = {}
    offset = json_length
    for i, raw in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        _expect(isinstance(raw, dict), f"{where} must be an object")
        name = raw.get("name")
        _expect(name in INPUTS, f"{where}.name must be one of {', '.join(INPUTS)}, got {name!r}")
        _expect(name not in inputs, f"input {name} is given twice")
        where = f"input {name}"
        datatype = raw.get("datatype")
        want = "FP32" if name == CONTEXT else "INT32"
        _expect(datatype == want, f"{where} must have datatype {want}, got {datatype!r}")
        shape = _shape(raw.get("shape"), where)
        if name == CONTEXT:
            _expect(
                len(shape) == 2 and shape[0] >= 1 and shape[1] == DIM,
                f"{where} must have shape [N, {DIM}] with N >= 1, got {list(shape)}",
            )
        else:
            _expect(shape == (3,), f"{where} must have shape [3], got {list(shape)}")
        params = raw.get("parameters") or {}
        _expect(isinstance(params, dict), f"{where}.parameters must be an object")
        size = params.get("binary_data_size")
        if size is None:
            _expect("data" in raw, f"{where} has neither data nor binary_data_size")
            inputs[name] = TensorRef(name, datatype, shape, raw["data"])
            continue
        _expect("data" not in raw, f"{where} has both data and binary_data_size")
        _expect(
            header_length is not None,
            f"{where} has binary_data_size but the request has no Inference-Header-Content-Length",
        )
        expected = math.prod(shape) * _ITEM[datatype].itemsize
        _expect(
            size == expected,
            f"{where}: binary_data_size {size!r} does not match shape {list(shape)} of"
            f" {datatype} ({expected} bytes)",
        )
        inputs[name] = TensorRef(name, datatype, shape, None, offset, size)
        offset += size
    _expect(CONTEXT in inputs, f"input {CONTEXT} is required")
    _expect(
        offset == len(body),
        f"the body holds {len(body) - json_length} bytes after the JSON object but the"
        f" inputs' binary_data_size add up to {offset - json_length}",
    )
    params = doc.get("parameters") or {}
    _expect(isinstance(params, dict), "parameters must be an object")
    outputs, binary = _requested_outputs(doc.get("outputs"), params)
    rid = doc.get("id")
    _expect(rid is None or isinstance(rid, str), "id must be a string")
    return RequestHead(json_length, inputs, rid, outputs, binary, params)


def _requested_outputs(
    raw: Any, params: Mapping[str, Any]
) -> tuple[tuple[str, ...], frozenset[str]]:
    all_binary = params.get("binary_data_output", False)
    _expect(isinstance(all_binary, bool), "parameters.binary_data_output must be true or false")
    if raw is None:
        return OUTPUTS, frozenset(OUTPUTS) if all_binary else frozenset()
    _expect(isinstance(raw, list), "outputs must be a list")
    names: list[str] = []
    binary: set[str] = set()
    for i, out in enumerate(raw):
        _expect(isinstance(out, dict), f"outputs[{i}] must be an object")
        name = out.get("name")
        _expect(
            name in OUTPUTS, f"outputs[{i}].name must be one of {', '.join(OUTPUTS)}, got {name!r}"
        )
        p = out.get("parameters") or {}
        _expect(isinstance(p, dict), f"outputs[{i}].parameters must be an object")
        flag = p.get("binary_data", all_binary)
        _expect(isinstance(flag, bool), f"outputs[{i}].parameters.binary_data must be a boolean")
        names.append(name)
        if flag:
            binary.add(name)
    return tuple(names), frozenset(binary)


def _tensor(ref: TensorRef, body: bytes) -> np.ndarray:
    dtype = _ITEM[ref.datatype]
    if ref.offset >= 0:
        return np.frombuffer(body, dtype=dtype, count=ref.size // dtype.itemsize, offset=ref.offset)
    try:
        arr = np.asarray(ref.data, dtype=dtype)
    except (ValueError, TypeError):
        raise BadRequestError(f"input {ref.name}: data must be numbers, nested or flat") from None
    want = math.prod(ref.shape)
    _expect(
        arr.size == want,
        f"input {ref.name}: data has {arr.size} elements, shape {list(ref.shape)} needs {want}",
    )
    return arr.reshape(-1)


def request_context(head: RequestHead, body: bytes) -> np.ndarray:
    """The context as an (N, 768) float32 array (a view of the body when binary)."""
    ref = head.inputs[CONTEXT]
    return _tensor(ref, body).reshape(ref.shape)


def request_tmd(head: RequestHead, body: bytes) -> Tmd | None:
    """The tmd_codes tensor as (domain, task, modifier), None when the request has none."""
    ref = head.inputs.get(TMD)
    if ref is None:
        return None
    return tmd_of_codes([int(x) for x in _tensor(ref, body)])


def encode_request(
    context: np.ndarray,
    tmd: Tmd | None = None,
    *,
    binary: bool = True,
    binary_output: bool = True,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A v2 request body and the headers it needs (Content-Type, and the JSON length when
    binary)."""
    ctx = np.ascontiguousarray(context, dtype=_FP32)
    tensors: list[tuple[str, str, np.ndarray]] = [(CONTEXT, "FP32", ctx)]
    if tmd is not None:
        tensors.append((TMD, "INT32", np.asarray(tmd, dtype=_INT32)))
    params = dict(parameters or {})
    if binary_output:
        params["binary_data_output"] = True
    doc: dict[str, Any] = {"inputs": [], **({"id": request_id} if request_id else {})}
    if params:
        doc["parameters"] = params
    blobs: list[bytes] = []
    for name, dtype, arr in tensors:
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": dtype}
        if binary:
            blob = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1)
        doc["inputs"].append(entry)
    return _message(doc, blobs)


def _message(doc: dict[str, Any], blobs: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body (the JSON object, then the binary tensors) and its content headers."""
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": JSON_TYPE}
    headers = {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}
    return b"".join((head, *blobs)), headers


# -- answers ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    predicted: np.ndarray  # (768,) float32
    neighbor_ids: tuple[str, ...]
    neighbor_scores: np.ndarray  # (K,) float32
    model_name: str = ""
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


def encode_answer(
    answer: Answer,
    outputs: Collection[str] = OUTPUTS,
    binary_outputs: Collection[str] = (),
) -> tuple[bytes, dict[str, str]]:
    """A v2 answer body with `outputs` (binary for those in `binary_outputs`) and its headers."""
    doc: dict[str, Any] = {"model_name": answer.model_name, "outputs": []}
    if answer.id is not None:
        doc["id"] = answer.id
    if answer.parameters:
        doc["parameters"] = dict(answer.parameters)
    blobs: list[bytes] = []
    for name in outputs:
        entry: dict[str, Any] = {"name": name}
        if name == NEIGHBOR_IDS:
            entry.update(shape=[len(answer.neighbor_ids)], datatype="BYTES")
            if name in binary_outputs:
                blob = b"".join(
                    _LEN.pack(len(b)) + b for b in (i.encode() for i in answer.neighbor_ids)
                )
            else:
                entry["data"] = list(answer.neighbor_ids)
        else:
            arr = np.ascontiguousarray(
                answer.predicted if name == PREDICTED else answer.neighbor_scores, dtype=_FP32
            )
            entry.update(shape=list(arr.shape), datatype="FP32")
            if name in binary_outputs:
                blob = arr.tobytes()
            else:
                entry["data"] = arr
        if name in binary_outputs:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        doc["outputs"].append(entry)
    return _message(doc, blobs)


def decode_answer(body: bytes, header_length: str | None) -> Answer:
    """A v2 LVM answer; ValueError saying what is wrong. NaN/Inf are left for the caller."""
    try:
        json_length = _header_length(header_length, len(body))
        doc = orjson.loads(memoryview(body)[:json_length])
    except (BadRequestError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"answer is not a v2 inference response: {exc}") from None
    outs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outs, list):
        raise ValueError("answer has no outputs list")
    found: dict[str, Any] = {}
    offset = json_length
    for out in outs:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            continue
        name, params = out["name"], out.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            found[name] = out.get("data")
            continue
        if not isinstance(size, int) or offset + size > len(body):
            raise ValueError(f"output {name}: binary_data_size {size!r} overruns the body")
        found[name] = memoryview(body)[offset : offset + size]
        offset += size
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the outputs' binary data")
    predicted = _floats(found.get(PREDICTED), PREDICTED)
    if predicted.shape != (DIM,):
        raise ValueError(f"{PREDICTED} must have {DIM} numbers, got {predicted.size}")
    ids = _strings(found.get(NEIGHBOR_IDS))
    scores = _floats(found.get(NEIGHBOR_SCORES), NEIGHBOR_SCORES) if ids else _EMPTY
    if len(scores) != len(ids):
        raise ValueError(f"{len(ids)} neighbor_ids but {len(scores)} neighbor_scores")
    params = doc.get("parameters")
    rid = doc.get("id")
    return Answer(
        predicted,
        ids,
        scores,
        str(doc.get("model_name", "")),
        rid if isinstance(rid, str) else None,
        params if isinstance(params, dict) else {},
    )


_EMPTY = np.zeros(0, dtype=_FP32)


def _floats(data: Any, name: str) -> np.ndarray:
    if data is None:
        raise ValueError(f"answer has no {name} output")
    if isinstance(data, memoryview):
        if len(data) % 4:
            raise ValueError(f"{name}: {len(data)} bytes is not a whole number of FP32")
        return np.frombuffer(data, dtype=_FP32)
    try:
        return np.asarray(data, dtype=_FP32).reshape(-1)
    except (ValueError, TypeError):
        raise ValueError(f"{name} holds non-numbers") from None


def _strings(data: Any) -> tuple[str, ...]:
    if data is None:
        return ()
    if isinstance(data, list):
        if not all(isinstance(s, str) for s in data):
            raise ValueError(f"{NEIGHBOR_IDS} must hold strings")
        return tuple(data)
    raw, out, pos = bytes(data), [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise ValueError(f"{NEIGHBOR_IDS}: truncated element length")
        (n,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ValueError(f"{NEIGHBOR_IDS}: element overruns its tensor")
        out.append(raw[pos : pos + n].decode("utf-8", "replace"))
        pos += n
    return tuple(out)


# -- translation to and from the LVM JSON protocol --------------------------------------------


def to_lvm_request(head: RequestHead, body: bytes) -> bytes:
    """The LVM JSON body of a v2 request (for a variant that speaks only LVM JSON)."""
    doc: dict[str, Any] = {"context_vectors": request_context(head, body)}
    tmd = request_tmd(head, body)
    if tmd is not None:
        doc["tmd_codes"] = list(tmd)
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def from_lvm_request(body: bytes, request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary v2 request (asking for binary outputs) from an LVM JSON body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from None
    ctx = doc.get("context_vectors") if isinstance(doc, dict) else None
    try:
        arr = np.asarray(ctx, dtype=_FP32)
    except (ValueError, TypeError):
        arr = _EMPTY
    _expect(
        arr.ndim == 2 and arr.shape[0] >= 1 and arr.shape[1] == DIM,
        f"context_vectors must be a non-empty list of {DIM}-d vectors",
    )
    return encode_request(arr, tmd_from_body(doc), request_id=request_id)


def to_lvm_answer(answer: Answer) -> bytes:
    """The LVM JSON answer of a v2 answer, with the answer-level parameters it carried."""
    doc: dict[str, Any] = {"predicted_vector": answer.predicted}
    doc.update((k, answer.parameters[k]) for k in _LVM_FIELDS if k in answer.parameters)
    doc["neighbors"] = [
        {"id": i, "score": round(float(s), 6)}
        for i, s in zip(answer.neighbor_ids, answer.neighbor_scores, strict=True)
    ]
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def from_lvm_answer(body: bytes, model_name: str, request_id: str | None) -> Answer:
    """An LVM JSON answer as a v2 Answer; ValueError when it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"answer is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("answer is not a JSON object")
    predicted = _floats(doc.get("predicted_vector"), PREDICTED)
    pairs = [
        (n["id"], n["score"])
        for n in doc.get("neighbors") or ()
        if isinstance(n, dict) and isinstance(n.get("id"), str)
    ]
    params = {k: doc[k] for k in _LVM_FIELDS if k in doc}
    return Answer(
        predicted,
        tuple(i for i, _ in pairs),
        np.asarray([s for _, s in pairs], dtype=_FP32),
        model_name,
        request_id,
        params,
    )


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return orjson.dumps({"error": message})


def model_metadata(name: str, platform: str, versions: tuple[str, ...] = ()) -> dict[str, Any]:
    """`GET /v2/models/{name}`: the model's tensors (-1: a variable dimension)."""
    doc: dict[str, Any] = {"name": name}
    if versions:
        doc["versions"] = list(versions)
    doc["platform"] = platform
    doc["inputs"] = [
        {"name": CONTEXT, "datatype": "FP32", "shape": [-1, DIM]},
        {"name": TMD, "datatype": "INT32", "shape": [3]},
    ]
    doc["outputs"] = [
        {"name": PREDICTED, "datatype": "FP32", "shape": [DIM]},
        {"name": NEIGHBOR_IDS, "datatype": "BYTES", "shape": [-1]},
        {"name": NEIGHBOR_SCORES, "datatype": "FP32", "shape": [-1]},
    ]
    return doc

"""The v2 wire format (contract/oip.py) as pure functions: round trips, both tensor forms, the
binary layout, and what a malformed answer is."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from lvm_gateway.contract import oip
from lvm_gateway.errors import BadRequestError

CTX = np.arange(3 * 768, dtype=np.float32).reshape(3, 768) / 1000


@pytest.mark.parametrize("binary", [True, False])
def test_requests_round_trip_in_both_forms(binary):
    body, headers = oip.encode_request(CTX, (4, 5, 6), binary=binary, request_id="r-1")
    head = oip.parse_request_head(body, headers.get(oip.HEADER_LENGTH))
    assert head.binary == binary and head.id == "r-1" and head.context_length == 3
    assert np.array_equal(oip.request_context(head, body), CTX)
    assert oip.request_tmd(head, body) == (4, 5, 6)
    assert head.binary_outputs == frozenset(oip.OUTPUTS)  # encode_request asks binary answers


def test_binary_layout_is_json_then_little_endian_tensors_in_input_order():
    body, headers = oip.encode_request(CTX, (4, 5, 6))
    n = int(headers[oip.HEADER_LENGTH])
    assert body[n : n + CTX.nbytes] == CTX.astype("<f4").tobytes()
    assert struct.unpack("<3i", body[n + CTX.nbytes :]) == (4, 5, 6)


def test_nested_and_flat_json_data_are_the_same_tensor():
    flat = {"name": "context_vectors", "shape": [3, 768], "datatype": "FP32"}
    for data in (CTX.reshape(-1).tolist(), CTX.tolist()):
        body = orjson.dumps({"inputs": [{**flat, "data": data}]})
        head = oip.parse_request_head(body, None)
        assert np.array_equal(oip.request_context(head, body), CTX)


def test_a_wrong_element_type_in_json_data_is_a_bad_request():
    doc = {"inputs": [{"name": "context_vectors", "shape": [1, 768], "datatype": "FP32",
                       "data": ["x"] * 768}]}  # fmt: skip
    body = orjson.dumps(doc)
    head = oip.parse_request_head(body, None)
    with pytest.raises(BadRequestError, match="data must be numbers"):
        oip.request_context(head, body)


def test_answers_round_trip_with_bytes_elements_length_prefixed():
    a = oip.Answer(CTX[0], ("c-1", "ü"), np.array([0.9, 0.1], dtype=np.float32), "m", "r", {})
    body, headers = oip.encode_answer(a, oip.OUTPUTS, {oip.NEIGHBOR_IDS})
    n = int(headers[oip.HEADER_LENGTH])
    assert body[n:] == b"\x03\0\0\0c-1\x02\0\0\0\xc3\xbc"
    back = oip.decode_answer(body, headers[oip.HEADER_LENGTH])
    assert back.neighbor_ids == ("c-1", "ü") and back.id == "r" and back.model_name == "m"
    assert np.array_equal(back.predicted, CTX[0])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b, n: (b[:-1], n), "overruns"),
        (lambda b, n: (b + b"\0", n), "1 bytes after"),
        (lambda b, n: (b, "x"), "not a v2 inference response"),
    ],
)
def test_malformed_answers_say_what_is_wrong(mutate, message):
    a = oip.Answer(CTX[0], ("a",), np.array([0.5], dtype=np.float32))
    body, headers = oip.encode_answer(a, oip.OUTPUTS, oip.OUTPUTS)
    with pytest.raises(ValueError, match=message):
        oip.decode_answer(*mutate(body, headers[oip.HEADER_LENGTH]))


def test_translation_to_lvm_json_keeps_vector_neighbours_and_fields():
    a = oip.Answer(CTX[1], ("a", "b"), np.array([0.75, 0.5], dtype=np.float32), "m", None,
                   {"confidence": 0.75, "model_type": "phase2"})  # fmt: skip
    doc = orjson.loads(oip.to_lvm_answer(a))
    assert doc["neighbors"] == [{"id": "a", "score": 0.75}, {"id": "b", "score": 0.5}]
    assert doc["confidence"] == 0.75 and doc["model_type"] == "phase2"
    back = oip.from_lvm_answer(oip.to_lvm_answer(a), "m", "r")
    assert np.allclose(back.predicted, a.predicted) and back.neighbor_ids == a.neighbor_ids

"""Quality signals, pure: answer inspection, lanes, record packing, feedback parse and score."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from lvm_gateway.errors import BadRequestError, InvalidPredictionError
from lvm_gateway.gateway.feedback import parse_feedback, score
from lvm_gateway.gateway.records import (
    Answer,
    PredictionRecords,
    Record,
    pack_answer,
    unpack_answer,
)
from lvm_gateway.gateway.signals import inspect_answer
from lvm_gateway.policies.base import RequestInfo

DIM = 768


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def answer(vec: list[float], neighbors: list[dict[str, object]] | None = None) -> bytes:
    return orjson.dumps({"predicted_vector": vec, "confidence": 0.5, "neighbors": neighbors or []})


def with_cosine(base: np.ndarray, c: float, seed: int = 99) -> np.ndarray:
    """A unit vector whose cosine with `base` is exactly c."""
    other = unit(seed)
    other -= other.dot(base) * base
    other /= np.linalg.norm(other)
    return (c * base + np.sqrt(1 - c * c) * other).astype(np.float32)


def test_valid_answer_and_empty_hit() -> None:
    v = unit(0).tolist()
    p = inspect_answer(answer(v, [{"id": "c1", "score": 0.3}, {"id": "c2", "score": 0.2}]), "x")
    assert p.neighbor_ids == ["c1", "c2"] and p.best_score == pytest.approx(0.3) and p.empty
    assert not inspect_answer(answer(v, [{"id": "c1", "score": 0.45}]), "x").empty
    assert inspect_answer(answer(v), "x").empty  # no neighbours at all
    assert np.array_equal(p.values, np.asarray(v))
    # Other arrays in the answer (here a server's own field) and integers in the vector are fine.
    doc = {"predicted_vector": [0, *v[1:]], "neighbors": [], "model": {"layers": [1, 2]}}
    assert inspect_answer(orjson.dumps(doc), "x").values[0] == 0.0
    # A `[` inside a string is no array: the bracket count only decides whether the vector's
    # elements are checked one by one, and they are numbers.
    p = inspect_answer(answer(v, [{"id": "c[1]", "score": 0.5}, {"id": "[", "score": 0.45}]), "x")
    assert p.neighbor_ids == ["c[1]", "["] and p.best_score == pytest.approx(0.5) and not p.empty


def test_a_document_the_inspection_left_referenced_does_not_stop_the_next() -> None:
    # The parser is reused; a failed inspection's traceback can still hold its document.
    try:
        inspect_answer(orjson.dumps({"predicted_vector": ["x"] * DIM}), "x")
    except InvalidPredictionError as exc:
        kept = exc
    assert inspect_answer(answer(unit(1).tolist()), "x").best_score is None
    assert kept.__traceback__ is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps({"predicted_vector": [float("nan")] + [0.0] * 767}).encode(), "not valid JSON"),
        (b'{"predicted_vector": [1e400]}', "not valid JSON"),
        (orjson.dumps({"predicted_vector": [None] + [0.0] * 767}), "non-numbers"),
        (orjson.dumps({"predicted_vector": ["x"] + [0.0] * 767}), "non-numbers"),
        (b'{"predicted_vector": [123456789012345678901234567890]}', "not valid JSON"),
        (orjson.dumps({"predicted_vector": [0.0] * 512}), "must have 768 numbers, got 512"),
        (orjson.dumps({"confidence": 1}), "must have 768 numbers, got null"),
        (orjson.dumps({"predicted_vector": "x" * 768}), "must have 768 numbers, got a string"),
        (orjson.dumps({"predicted_vector": [[0.0]] * 768}), "non-numbers"),
        (orjson.dumps({"predicted_vector": [[0.0, 0.0]] * 384}), "must have 768 numbers, got 384"),
        (orjson.dumps({"predicted_vector": [0.0] * 767 + [True]}), "non-numbers"),
        (orjson.dumps([0.0] * 768), "must have 768 numbers, got null"),
        # Nested arrays whose numbers add up to 768, with other arrays in the document or not.
        (orjson.dumps({"predicted_vector": [[0.0]] + [0.0] * 767, "x": [1]}), "non-numbers"),
        (orjson.dumps({"predicted_vector": [[0.0, 1.0], []] + [0.0] * 766}), "non-numbers"),
    ],
)
def test_invalid_answers(body: bytes, message: str) -> None:
    with pytest.raises(InvalidPredictionError, match=message):
        inspect_answer(body, "canary")


def lane_of(headers: dict[str, str], body: bytes) -> str:
    return RequestInfo(headers, body).lane()


def test_lane_from_header_then_body() -> None:
    assert lane_of({"x-tmd-lane": "3"}, b'{"tmd_codes": [5, 1, 2]}') == "lane_3"
    assert lane_of({}, b'{"context_vectors": [[1]], "tmd_codes": [ 12, 1, 2]}') == "lane_12"
    assert lane_of({}, b'{"context_vectors": [[1]]}') == "none"
    assert lane_of({"x-tmd-lane": "99"}, b"") == "none"
    assert lane_of({"x-tmd-lane": "x"}, b"") == "none"


def test_int8_packing_keeps_the_cosine_and_the_ids() -> None:
    for seed in range(20):
        v = unit(seed)
        ids = tuple(f"c{seed}{i:04d}" for i in range(10))
        blob = pack_answer(v, ids)
        assert len(blob) == 6 + DIM + len("\x1f".join(ids))
        back = unpack_answer(blob)
        assert float(back.vector.dot(v) / np.linalg.norm(back.vector)) > 0.999
        assert back.neighbor_ids == ids
    assert unpack_answer(pack_answer(unit(0), ())).neighbor_ids == ()


def test_sampling_is_by_request_id() -> None:
    half = PredictionRecords("p", 60, 0.5)
    ids = [f"req-{i}" for i in range(20_000)]
    share = sum(half.sampled(i) for i in ids) / len(ids)
    assert 0.47 < share < 0.53
    assert [half.sampled(i) for i in ids[:100]] == [half.sampled(i) for i in ids[:100]]
    assert not any(PredictionRecords("p", 60, 0.0).sampled(i) for i in ids[:1000])
    assert all(PredictionRecords("p", 60, 1.0).sampled(i) for i in ids[:1000])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (orjson.dumps({"clicked_id": "c1"}), "request_id must be a non-empty string"),
        (orjson.dumps({"request_id": "r"}), "exactly one of clicked_vector or clicked_id"),
        (
            orjson.dumps({"request_id": "r", "clicked_id": "c", "clicked_vector": [0.0] * DIM}),
            "exactly one of",
        ),
        (orjson.dumps({"request_id": "r", "clicked_vector": [0.1] * 767}), "768 numbers, got 767"),
        (orjson.dumps({"request_id": "r", "clicked_vector": ["a"] * DIM}), "only numbers"),
        (orjson.dumps({"request_id": "r", "clicked_vector": [0.0] * DIM}), "all zeros"),
        (orjson.dumps({"request_id": "r", "clicked_vector": [1e39] * DIM}), "non-finite"),
        (orjson.dumps({"request_id": "r", "clicked_id": ""}), "clicked_id must be"),
        (orjson.dumps({"request_id": "r", "clicked_id": "c", "extra": 1}), "unknown field"),
    ],
)
def test_malformed_feedback(doc: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_feedback(doc)


def record(served: np.ndarray, shadow: np.ndarray | None = None) -> Record:
    answers = {"stable": Answer(served, ("c1", "c2", "c3", "c4", "c5", "c6"))}
    if shadow is not None:
        answers["canary"] = Answer(shadow, ("c9",))
    return Record(lane="lane_2", served="stable", answers=answers)


@pytest.mark.parametrize(
    ("c", "expected"),
    [(0.85, {1: True, 5: True, 10: True}), (0.7, {1: False, 5: True, 10: True}),
     (0.5, {1: False, 5: False, 10: True}), (0.3, {1: False, 5: False, 10: False})],
)  # fmt: skip
def test_cosine_thresholds(c: float, expected: dict[int, bool]) -> None:
    clicked = unit(1)
    fb = parse_feedback(orjson.dumps({"request_id": "r", "clicked_vector": clicked.tolist()}))
    (s,) = score(record(with_cosine(clicked, c)), fb)
    assert s.hits == expected and s.cosine == pytest.approx(c, abs=1e-4) and not s.shadow


def test_id_hits_and_shadow_scoring() -> None:
    fb = parse_feedback(orjson.dumps({"request_id": "r", "clicked_id": "c5"}))
    served, shadow = score(record(unit(1), unit(2)), fb)
    assert (served.variant, served.shadow, served.hits) == (
        "stable",
        False,
        {1: False, 5: True, 10: True},
    )
    assert (shadow.variant, shadow.shadow, shadow.hits) == (
        "canary",
        True,
        {1: False, 5: False, 10: False},
    )

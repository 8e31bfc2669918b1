"""Feedback and quality signals through real gateways, real model servers and a real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from tests.integration.gateway_env import Gateway, gateway, infer_body, model_servers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    specs = {
        "phase1": ["phase1", "--latency-ms", "0"],
        "phase2": ["phase2", "--latency-ms", "0"],
        "nan": ["phase2", "--latency-ms", "0", "--nan-rate", "1"],
    }
    with model_servers(specs, tmp_path_factory.mktemp("servers")) as urls:
        yield urls


def config(
    servers: dict[str, str],
    policy: str,
    extra: str = "feedback: {sample_rate: 1.0}\n",
    fallback: bool = True,
) -> str:
    variants = "\n".join(
        f'  {name}: {{url: "{url}", timeout_ms: 500}}' for name, url in servers.items()
    )
    return (
        f"variants:\n{variants}\nroutes:\n  - path: /infer\n    fallback: {str(fallback).lower()}\n"
        f"    policy: {policy}\n{extra}"
    )


# The feedback token of each request id this test run was answered (X-Feedback-Token).
TOKENS: dict[str, str] = {}


def served_vector(gw: Gateway, **headers: str) -> tuple[str, np.ndarray, list[str]]:
    r = gw.infer(headers, body=infer_body(tmd=(3, 1, 2)))
    assert r.status_code == 200, r.text
    doc = r.json()
    rid = r.headers["x-request-id"]
    if "x-feedback-token" in r.headers:
        TOKENS[rid] = r.headers["x-feedback-token"]
    return (
        rid,
        np.asarray(doc["predicted_vector"], dtype=np.float32),
        [n["id"] for n in doc["neighbors"]],
    )


def post_feedback(
    gw: Gateway, doc: dict[str, object], token: str | None = None
) -> tuple[int, dict[str, object]]:
    """POST /v1/feedback with the token the request id was answered with (if any)."""
    token = token or TOKENS.get(str(doc.get("request_id")))
    headers = {"X-Feedback-Token": token} if token else {}
    r = gw.http.post("/v1/feedback", content=orjson.dumps(doc), headers=headers)
    return r.status_code, r.json()


def test_feedback_round_trip_across_two_replicas(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    text = config(servers, "phase2")
    with gateway(text, redis_url, tmp_path) as a, gateway(text, redis_url, tmp_path) as b:
        rid, vec, _ = served_vector(a)
        # Scored on replica b: the record crossed through Redis (flushed within ~100 ms).
        status, body = 0, {}
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            status, body = post_feedback(b, {"request_id": rid, "clicked_vector": vec.tolist()})
            if status != 404:
                break
            time.sleep(0.05)
        assert status == 202, body
        (scored,) = body["recorded"]
        assert scored["variant"] == "phase2" and scored["shadow"] is False
        assert scored["hit@1"] and scored["hit@5"] and scored["hit@10"]
        assert scored["cosine"] > 0.99  # int8 storage keeps the cosine
        assert body["lane"] == "lane_3"
        # The same feedback again, on either replica, counts once.
        assert post_feedback(a, {"request_id": rid, "clicked_vector": vec.tolist()}) == (
            200, {"request_id": rid, "duplicate": True, "recorded": []})  # fmt: skip
        assert b.metric("lvmgw_hit_proxy_total", variant="phase2", k="5", lane="lane_3") == 1
        assert a.metric("lvmgw_hit_proxy_total", variant="phase2") == 0
        assert a.metric("lvmgw_feedback_total", result="duplicate") == 1
        # Exact id feedback: the 7th neighbour is a hit at 10, not at 5.
        rid2, _, ids2 = served_vector(a)
        a.wait_until(
            lambda: post_feedback(b, {"request_id": rid2, "clicked_id": ids2[6]})[0] == 202
        )
        assert b.metric("lvmgw_hit_proxy_total", variant="phase2", k="10") == 2
        assert b.metric("lvmgw_hit_proxy_total", variant="phase2", k="5") == 1


def test_unknown_and_expired_ids_are_404(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    text = config(servers, "phase2", "feedback: {ttl_seconds: 0.5, sample_rate: 1.0}\n")
    with gateway(text, redis_url, tmp_path) as gw:
        rid, _, ids = served_vector(gw)
        time.sleep(1.0)
        status, body = post_feedback(gw, {"request_id": rid, "clicked_id": ids[0]})
        assert status == 404 and "expired" in str(body["message"])


def test_unsampled_requests_are_not_recorded(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    text = config(servers, "phase2", "feedback: {sample_rate: 0}\n")
    with gateway(text, redis_url, tmp_path) as gw:
        rid, _, ids = served_vector(gw)
        assert rid not in TOKENS  # no record, so no token
        time.sleep(0.3)
        # Not a misleading 404: the answer was not sampled, and nothing is recorded.
        status, body = post_feedback(gw, {"request_id": rid, "clicked_id": ids[0]})
        assert (status, body) == (202, {"request_id": rid, "sampled": False, "recorded": []})
        assert gw.metric("lvmgw_feedback_total", result="recorded") == 0


def test_malformed_feedback_is_4xx_and_records_nothing(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with gateway(config(servers, "phase2"), redis_url, tmp_path) as gw:
        rid, vec, _ = served_vector(gw)
        time.sleep(0.3)
        cases = [
            b"{nope",
            orjson.dumps({"request_id": rid}),
            orjson.dumps({"request_id": rid, "clicked_id": "c1", "clicked_vector": vec.tolist()}),
            orjson.dumps({"request_id": rid, "clicked_vector": vec.tolist()[:100]}),
            b'{"request_id": "%s", "clicked_vector": [NaN]}' % rid.encode(),
            orjson.dumps({"request_id": 5, "clicked_id": "c1"}),
        ]
        for case in cases:
            r = gw.http.post("/v1/feedback", content=case)
            assert r.status_code == 400, (case[:80], r.text)
            assert r.json()["message"]
        assert gw.http.get("/v1/feedback").status_code == 405
        assert gw.metric("lvmgw_feedback_total", result="rejected") == len(cases) + 1
        assert gw.metric("lvmgw_feedback_total", result="recorded") == 0
        # Nothing was consumed: the first valid feedback for the id still counts.
        assert post_feedback(gw, {"request_id": rid, "clicked_vector": vec.tolist()})[0] == 202


def test_nan_predictions_never_reach_a_client_as_success(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = "{canary: {stable: phase1, canary: nan, weight: 100}}"
    with gateway(config(servers, policy, fallback=False), redis_url, tmp_path) as gw:
        for _ in range(5):
            r = gw.infer()
            assert r.status_code == 502 and r.json()["error"] == "invalid_prediction"
            assert r.headers["x-variant"] == "nan"
        assert gw.metric("lvmgw_invalid_predictions_total", variant="nan") == 5
    with gateway(config(servers, policy), redis_url, tmp_path) as gw:
        for _ in range(5):
            r = gw.infer()
            assert r.status_code == 200 and r.headers["x-variant"] == "phase1"
            assert all(np.isfinite(r.json()["predicted_vector"]))


def test_feedback_needs_the_token_of_its_own_answer(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with gateway(config(servers, "phase2"), redis_url, tmp_path) as gw:
        rid, vec, _ = served_vector(gw)
        other, _, _ = served_vector(gw)
        time.sleep(0.3)
        doc = {"request_id": rid, "clicked_vector": vec.tolist()}
        r = gw.http.post("/v1/feedback", content=orjson.dumps(doc))
        assert r.status_code == 401 and "X-Feedback-Token" in r.json()["message"]
        forged = TOKENS[rid][:-4] + ("0000" if not TOKENS[rid].endswith("0000") else "1111")
        assert post_feedback(gw, doc, token=forged)[0] == 403
        status, body = post_feedback(gw, doc, token=TOKENS[other])  # someone else's answer
        assert status == 403 and "another request" in str(body["message"])
        assert gw.metric("lvmgw_feedback_total", result="recorded") == 0
        # The rightful client, with the token in the body this time, still scores it once.
        assert post_feedback(gw, {**doc, "token": TOKENS[rid]})[0] == 202


def test_client_chosen_request_ids_are_traced_never_merged(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with gateway(config(servers, "phase2"), redis_url, tmp_path) as gw:
        answers = []
        for seed in (1, 2):  # two users, the same X-Request-Id, different contexts
            r = gw.infer({"X-Request-Id": "same-id"}, body=infer_body(seed=seed, tmd=(3, 1, 2)))
            assert r.status_code == 200 and r.headers["x-request-id"] == "same-id"
            vec = np.asarray(r.json()["predicted_vector"], dtype=np.float32)
            answers.append((r.headers["x-feedback-token"], vec))
        (t1, v1), (t2, v2) = answers
        assert t1 != t2 and float(v1 @ v2) < 0.99
        time.sleep(0.3)
        # Each user's feedback scores that user's own answer: both are exact hits.
        for token, vec in answers:
            fb = {"request_id": "same-id", "clicked_vector": vec.tolist()}
            status, body = post_feedback(gw, fb, token=token)
            assert status == 202, body
            assert body["recorded"][0]["cosine"] > 0.99
        for bad in ("x" * 10_000, "caf\u00e9", "has space"):
            raw = bad.encode("latin-1")  # a latin-1 byte, as the repro sent it
            r = gw.http.post("/infer", content=infer_body(), headers=[(b"X-Request-Id", raw)])
            assert r.status_code == 400 and "X-Request-Id" in r.json()["message"], bad[:20]
            assert r.headers["x-request-id"].encode("latin-1") != raw

"""The Open Inference Protocol (KServe v2) through real processes: `lvm-serve` speaking it, the
gateway forwarding it to v2 variants and translating it for LVM JSON ones (and back), binary
tensors and JSON both ways, malformed requests answered 400 with a message, feedback and lanes
recorded as for LVM JSON, and `lvm-traffic --protocol oip-v2`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis

from lvm_gateway.contract import oip
from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.lvm.traffic import TrafficConfig, run_traffic
from lvm_gateway.lvm.world import World
from tests.integration.gateway_env import Gateway, gateway, model_server

pytestmark = pytest.mark.integration

V2 = "/v2/models/lvm/infer"


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(seed=0)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with model_server("phase2", "--latency-ms", "0") as url:
        yield url


@pytest.fixture(scope="module")
def gw(server: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # One lvm-serve process speaks both protocols: the variants differ only in what the gateway
    # sends them. X-Variant picks one per request.
    config = f"""
variants:
  lvm: {{url: "{server}"}}
  v2: {{url: "{server}", protocol: oip-v2}}
routes:
  - path: {V2}
    protocol: oip-v2
    policy: {{header: {{header: X-Variant, allow: [lvm, v2], default: lvm}}}}
  - path: /infer
    policy: {{header: {{header: X-Variant, allow: [lvm, v2], default: lvm}}}}
feedback: {{sample_rate: 1.0}}
"""
    with gateway(config, redis_url, tmp_path_factory.mktemp("oip")) as g:
        yield g


def context(world: World, n: int = 20, seed: int = 0) -> tuple[np.ndarray, tuple[int, int, int]]:
    seq = world.sequences(1, n, 3, np.random.default_rng(seed))[0]
    tmd = world.tmd[int(seq.concepts[-1])]
    return world.vectors[seq.concepts], (int(tmd[0]), int(tmd[1]), int(tmd[2]))


def post_v2(
    url: str, ctx: np.ndarray, tmd: tuple[int, int, int] | None, binary: bool, **headers: str
) -> httpx.Response:
    body, content = oip.encode_request(ctx, tmd, binary=binary, binary_output=binary)
    return httpx.post(url, content=body, headers={**content, **headers}, timeout=10)


def answer(r: httpx.Response) -> oip.Answer:
    assert r.status_code == 200, r.text
    return oip.decode_answer(r.content, r.headers.get(oip.HEADER_LENGTH))


def lvm_answer(url: str, ctx: np.ndarray, tmd: tuple[int, int, int], **headers: str) -> dict:
    body = orjson.dumps(
        {"context_vectors": ctx, "tmd_codes": list(tmd)}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    r = httpx.post(url, content=body, headers={"content-type": "application/json", **headers})
    assert r.status_code == 200, r.text
    return r.json()


# -- lvm-serve ---------------------------------------------------------------------------------


def test_lvm_serve_answers_v2_binary_and_json_as_it_answers_lvm_json(server, world):
    ctx, tmd = context(world)
    reference = lvm_answer(f"{server}/infer", ctx, tmd)
    binary = post_v2(f"{server}{V2}", ctx, tmd, binary=True)
    assert binary.headers["content-type"] == oip.BINARY_TYPE
    head_length = int(binary.headers[oip.HEADER_LENGTH])
    head = orjson.loads(binary.content[:head_length])
    assert head["model_name"] == "lvm"
    assert [o["name"] for o in head["outputs"]] == list(oip.OUTPUTS)
    assert head["outputs"][0] == {
        "name": "predicted_vector",
        "shape": [768],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 768 * 4},
    }
    assert len(binary.content) > head_length + 768 * 4  # raw tensors follow the JSON
    as_json = post_v2(f"{server}{V2}", ctx, tmd, binary=False)
    assert as_json.headers["content-type"] == oip.JSON_TYPE
    assert oip.HEADER_LENGTH not in as_json.headers
    doc = as_json.json()
    assert len(doc["outputs"][0]["data"]) == 768
    assert doc["outputs"][1]["datatype"] == "BYTES"
    for r in (binary, as_json):
        a = answer(r)
        np.testing.assert_allclose(a.predicted, reference["predicted_vector"], atol=1e-6)
        assert list(a.neighbor_ids) == [n["id"] for n in reference["neighbors"]]
        assert a.parameters["model_type"] == "phase2"


def test_lvm_serve_v2_metadata_health_and_unknown_models(server):
    meta = httpx.get(f"{server}/v2/models/lvm").json()
    assert meta["name"] == "lvm" and meta["platform"] == "lvm-serve/phase2"
    assert meta["inputs"] == [
        {"name": "context_vectors", "datatype": "FP32", "shape": [-1, 768]},
        {"name": "tmd_codes", "datatype": "INT32", "shape": [3]},
    ]
    assert [o["name"] for o in meta["outputs"]] == list(oip.OUTPUTS)
    assert httpx.get(f"{server}/v2/health/ready").status_code == 200
    assert httpx.get(f"{server}/v2/models/lvm/ready").status_code == 200
    assert "binary_tensor_data" in httpx.get(f"{server}/v2").json()["extensions"]
    r = httpx.post(f"{server}/v2/models/other/infer", content=b"{}")
    assert r.status_code == 404 and "unknown model 'other'" in r.json()["error"]


def binary_request(n: int = 2) -> tuple[bytes, dict[str, str]]:
    return oip.encode_request(np.ones((n, 768), dtype=np.float32), (1, 2, 3))


def with_header(value: str) -> tuple[bytes, dict[str, str]]:
    body, headers = binary_request()
    return body, {**headers, oip.HEADER_LENGTH: value}


def resized(extra: bytes) -> tuple[bytes, dict[str, str]]:
    body, headers = binary_request()
    return body + extra, headers


def declared(shape: list[int], size: int) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps({"inputs": [{
        "name": "context_vectors", "shape": shape, "datatype": "FP32",
        "parameters": {"binary_data_size": size},
    }]})  # fmt: skip
    return head + b"\0" * size, {oip.HEADER_LENGTH: str(len(head))}


def json_form(doc: dict) -> tuple[bytes, dict[str, str]]:
    return orjson.dumps(doc), {"content-type": "application/json"}


MALFORMED = [
    (with_header("abc"), "Inference-Header-Content-Length must be an integer"),
    (with_header("99999999"), "is outside the"),
    (with_header("10"), "not valid JSON"),
    (resized(b"\0\0\0\0"), "bytes after the JSON object but the inputs' binary_data_size add up"),
    (declared([2, 768], 100), "binary_data_size 100 does not match shape [2, 768]"),
    (declared([2, 512], 2 * 512 * 4), "must have shape [N, 768]"),
    (json_form({"inputs": []}), "inputs must be a non-empty list"),
    (
        json_form({"inputs": [{"name": "ctx", "shape": [1, 768], "datatype": "FP32", "data": []}]}),
        "inputs[0].name must be one of context_vectors, tmd_codes",
    ),
    (
        json_form({"inputs": [{"name": "context_vectors", "shape": [2, 768], "datatype": "FP32",
                               "data": [0.0] * 768}]}),
        "data has 768 elements, shape [2, 768] needs 1536",
    ),
    (
        json_form({"inputs": [{"name": "context_vectors", "shape": [1, 768], "datatype": "FP64",
                               "data": [0.0] * 768}]}),
        "must have datatype FP32",
    ),
    (
        json_form({"inputs": [{"name": "context_vectors", "shape": [1, 768], "datatype": "FP32",
                               "parameters": {"binary_data_size": 3072}}]}),
        "has binary_data_size but the request has no Inference-Header-Content-Length",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), MALFORMED)
def test_malformed_v2_requests_are_400_with_a_message_at_server_and_gateway(
    server, gw, request_, message
):
    body, headers = request_
    for base in (server, gw.url):
        r = httpx.post(f"{base}{V2}", content=body, headers=headers)
        assert r.status_code == 400, (base, r.text)
        error = r.json()
        text = error.get("message", error["error"])  # the gateway's error has a code beside
        assert message in text, (base, text)


def test_lvm_serve_refuses_out_of_range_tmd_and_non_finite_context(server):
    bad_tmd, headers = oip.encode_request(np.ones((1, 768), dtype=np.float32), (16, 0, 0))
    r = httpx.post(f"{server}{V2}", content=bad_tmd, headers=headers)
    assert r.status_code == 400 and "tmd_codes" in r.json()["error"]
    ctx = np.ones((2, 768), dtype=np.float32)
    ctx[1, 5] = np.nan
    nan, headers = oip.encode_request(ctx)
    r = httpx.post(f"{server}{V2}", content=nan, headers=headers)
    assert r.status_code == 400 and "context_vectors[1]" in r.json()["error"]


# -- the gateway -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["v2", "lvm"])
@pytest.mark.parametrize("binary", [True, False])
def test_gateway_serves_v2_clients_from_v2_and_translated_lvm_variants(
    gw, server, world, variant, binary
):
    ctx, tmd = context(world, seed=1)
    reference = lvm_answer(f"{server}/infer", ctx, tmd)
    r = post_v2(f"{gw.url}{V2}", ctx, tmd, binary=binary, **{"X-Variant": variant})
    assert r.headers["x-variant"] == variant
    assert (oip.HEADER_LENGTH in r.headers) == binary
    assert r.headers["content-type"] == (oip.BINARY_TYPE if binary else oip.JSON_TYPE)
    a = answer(r)
    np.testing.assert_allclose(a.predicted, reference["predicted_vector"], atol=1e-6)
    assert list(a.neighbor_ids) == [n["id"] for n in reference["neighbors"]]
    np.testing.assert_allclose(
        a.neighbor_scores, [n["score"] for n in reference["neighbors"]], atol=1e-5
    )
    assert a.parameters["model_type"] == "phase2"  # carried across the translation
    assert r.headers["x-feedback-token"]


def test_gateway_translates_lvm_json_clients_for_v2_variants(gw, server, world):
    ctx, tmd = context(world, seed=2)
    reference = lvm_answer(f"{server}/infer", ctx, tmd)
    translated = lvm_answer(f"{gw.url}/infer", ctx, tmd, **{"X-Variant": "v2"})
    np.testing.assert_allclose(
        translated["predicted_vector"], reference["predicted_vector"], atol=1e-6
    )
    assert [n["id"] for n in translated["neighbors"]] == [n["id"] for n in reference["neighbors"]]
    assert translated["model_type"] == "phase2"
    r = httpx.post(
        f"{gw.url}/infer", content=b'{"context_vectors": [[1, 2]]}', headers={"X-Variant": "v2"}
    )
    assert r.status_code == 400 and "768-d vectors" in r.json()["message"]


def test_v2_answers_are_recorded_with_the_lane_of_the_tensor_or_the_headers(gw, world, redis_url):
    ctx, tmd = context(world, seed=3)
    keys = RedisKeys("lvmgw")
    client = redis.Redis.from_url(redis_url)
    lanes = {}
    for variant, extra in (("v2", {}), ("lvm", {}), ("v2", {"X-TMD-Domain": "7"})):
        r = post_v2(f"{gw.url}{V2}", ctx, tmd, binary=True, **{"X-Variant": variant, **extra})
        rid = r.headers["x-request-id"]
        gw.wait_until(lambda rid=rid: client.exists(keys.prediction(rid)) == 1)
        lanes[(variant, bool(extra))] = client.hget(keys.prediction(rid), "lane")
        fb = httpx.post(
            f"{gw.url}/v1/feedback",
            json={"request_id": rid, "clicked_vector": answer(r).predicted.tolist()},
            headers={"X-Feedback-Token": r.headers["x-feedback-token"]},
        )
        assert fb.status_code == 202, fb.text
    assert lanes == {("v2", False): b"lane_3", ("lvm", False): b"lane_3", ("v2", True): b"lane_7"}
    client.close()


def test_gateway_v2_endpoints_and_output_selection(gw, world):
    assert httpx.get(f"{gw.url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{gw.url}/v2/health/live").status_code == 200
    meta = httpx.get(f"{gw.url}/v2/models/lvm").json()
    assert meta["name"] == "lvm" and meta["inputs"][0]["shape"] == [-1, 768]
    ctx, tmd = context(world, seed=4)
    # Only neighbor_ids as binary, the vector as JSON, whichever variant serves.
    doc = orjson.loads(oip.encode_request(ctx, tmd, binary=False, binary_output=False)[0])
    doc["outputs"] = [
        {"name": "predicted_vector"},
        {"name": "neighbor_ids", "parameters": {"binary_data": True}},
        {"name": "neighbor_scores"},
    ]
    for variant in ("v2", "lvm"):
        r = httpx.post(f"{gw.url}{V2}", content=orjson.dumps(doc), headers={"X-Variant": variant})
        head = orjson.loads(r.content[: int(r.headers[oip.HEADER_LENGTH])])
        assert [("data" in o, o.get("parameters")) for o in head["outputs"]] == [
            (True, None),
            (False, {"binary_data_size": len(r.content) - int(r.headers[oip.HEADER_LENGTH])}),
            (True, None),
        ]
        assert len(answer(r).neighbor_ids) == 10
    doc["outputs"] = [{"name": "neighbor_ids"}]
    r = httpx.post(f"{gw.url}{V2}", content=orjson.dumps(doc))
    assert r.status_code == 400 and "outputs must include predicted_vector" in r.text


def test_gateway_rejects_an_invalid_v2_answer_as_an_invalid_prediction(redis_url, tmp_path):
    with model_server("phase1", "--nan-rate", "1.0", "--latency-ms", "0") as url:
        config = f"""
variants:
  v2: {{url: "{url}", protocol: oip-v2}}
routes:
  - path: {V2}
    protocol: oip-v2
    policy: v2
"""
        with gateway(config, redis_url, tmp_path) as g:
            for binary in (True, False):
                r = post_v2(f"{g.url}{V2}", np.ones((2, 768), dtype=np.float32), None, binary)
                assert r.status_code == 502, r.text
                assert "NaN or Inf" in r.json()["message"]
            assert g.metric("lvmgw_invalid_predictions_total", variant="v2") == 2


def test_lvm_traffic_drives_the_gateway_in_oip_v2_with_feedback(gw):
    cfg = TrafficConfig(
        gateway=gw.url,
        rps=40,
        duration=2.0,
        users=10,
        path=V2,
        protocol="oip-v2",
        feedback_rate=1.0,
        feedback_delay_s=0.05,
    )
    report = asyncio.run(run_traffic(cfg))
    stats = report.total()
    assert stats.requests == report.issued > 0
    assert stats.ok == stats.requests, stats.errors
    assert stats.scored == stats.ok and stats.hit_rate(10) > 0.3
    assert stats.feedback_sent == stats.ok and not stats.feedback_failed


def test_v2_route_path_is_checked(tmp_path: Path):
    from lvm_gateway.config.load import parse_config
    from lvm_gateway.errors import ConfigError

    doc = {
        "variants": {"a": {"url": "http://127.0.0.1:1", "protocol": "grpc"}},
        "routes": [{"path": "/infer", "protocol": "oip-v2", "policy": "a"}],
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    text = "\n".join(exc.value.errors)
    assert (
        "variants.a.protocol" in text and "routes[0]" in text and "/v2/models/{name}/infer" in text
    )

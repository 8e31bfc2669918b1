"""`lvm-serve` as a real process: the LVM wire protocol, 400s for malformed input, fault knobs."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from lvm_gateway.contract.lvm import DIM
from lvm_gateway.lvm import server
from lvm_gateway.lvm.world import World
from lvm_gateway.procs import BIN, free_port
from tests.integration.gateway_env import model_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(seed=0)


@pytest.fixture(scope="module")
def phase2() -> Iterator[str]:
    with model_server("phase2") as url:
        yield url


def context_body(world: World, n: int = 32, seed: int = 0, lane: int | None = None) -> dict:
    seq = world.sequences(1, n, lane, np.random.default_rng(seed))[0]
    last = world.ids[int(seq.concepts[-1])]
    return {
        "context_vectors": world.vectors[seq.concepts].tolist(),
        "tmd_codes": list(world.tmd_code(last)),
    }


def test_health_names_the_model(phase2):
    r = httpx.get(f"{phase2}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "model_type": "phase2"}


def test_infer_speaks_the_seed_wire_protocol(phase2, world):
    body = {**context_body(world), "temperature": 0.0, "normalize": True}
    r = httpx.post(f"{phase2}/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"predicted_vector", "confidence", "latency_ms", "model_type", "neighbors"}
    vec = np.asarray(doc["predicted_vector"], dtype=np.float32)
    assert vec.shape == (DIM,)
    assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    assert doc["model_type"] == "phase2"
    assert doc["latency_ms"] >= 2.0  # the profile's simulated model latency, 2.5 +- 0.5 ms
    assert 0.0 <= doc["confidence"] <= 1.0
    ids = [n["id"] for n in doc["neighbors"]]
    scores = [n["score"] for n in doc["neighbors"]]
    assert len(ids) == 10 and scores == sorted(scores, reverse=True)
    assert ids == [cid for cid, _ in world.neighbors(vec, 10)]


def test_context_alone_is_enough(phase2, world):
    r = httpx.post(f"{phase2}/infer", json={"context_vectors": [world.vectors[7].tolist()]})
    assert r.status_code == 200, r.text


ROW = [0.01] * DIM


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", "non-empty list"),
        (orjson.dumps({"context_vectors": []}), "non-empty list"),
        (orjson.dumps({"context_vectors": ROW}), "context_vectors[0]"),
        (orjson.dumps({"context_vectors": [ROW, [0.1] * 767]}), "got 767"),
        (orjson.dumps({"context_vectors": [["x"] * DIM]}), "only numbers"),
        (orjson.dumps({"context_vectors": [[1e39] * DIM]}), "non-finite"),
        (b'{"context_vectors": [[NaN]]}', "not valid JSON"),
        (orjson.dumps({"context_vectors": [ROW], "tmd_codes": [16, 0, 0]}), "tmd_codes"),
        (orjson.dumps({"context_vectors": [ROW], "tmd_codes": [1, 2]}), "tmd_codes"),
        (orjson.dumps({"context_vectors": [ROW], "tmd_codes": [True, 0, 0]}), "tmd_codes"),
        (orjson.dumps({"context_vectors": [ROW], "temperature": -1}), "temperature"),
        (orjson.dumps({"context_vectors": [ROW], "normalize": "yes"}), "normalize"),
    ],
)
def test_malformed_requests_get_a_400_with_a_clear_message(phase2, body, message):
    r = httpx.post(f"{phase2}/infer", content=body)
    assert r.status_code == 400
    assert message in r.json()["error"]


def test_error_and_nan_rates_are_roughly_as_configured(world):
    n = 400
    body = orjson.dumps({"context_vectors": [world.vectors[11].tolist()]})
    counts = {"error": 0, "nan": 0, "ok": 0}
    with (
        model_server("phase1", "--error-rate", "0.3", "--nan-rate", "0.2") as url,
        httpx.Client() as client,
    ):
        for _ in range(n):
            r = client.post(f"{url}/infer", content=body)
            if r.status_code == 500:
                counts["error"] += 1
                continue
            assert r.status_code == 200
            vec = json.loads(r.content)["predicted_vector"]  # stdlib json reads the NaN token
            assert len(vec) == DIM
            counts["nan" if any(math.isnan(x) for x in vec) else "ok"] += 1
    # Binomial standard deviations are ~2.3 and ~2.0 points: these bounds are 4 of them.
    assert 0.21 <= counts["error"] / n <= 0.39, counts
    assert 0.12 <= counts["nan"] / n <= 0.28, counts


def test_latency_knob_sets_the_least_time_per_answer(world):
    body = {"context_vectors": [world.vectors[3].tolist()]}
    with model_server("phase1", "--latency-ms", "60") as url:
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/infer", json=body)
        elapsed = time.perf_counter() - t0
    assert r.status_code == 200
    assert r.json()["latency_ms"] >= 59.5
    assert elapsed >= 0.06


def test_degraded_lane_changes_only_that_lanes_answers(phase2, world):
    with model_server("phase2", "--degrade-lane", "5", "--degrade-factor", "0.7") as bad:
        for lane in (5, 6):
            body = context_body(world, lane=lane, seed=lane)
            good_vec = httpx.post(f"{phase2}/infer", json=body).json()["predicted_vector"]
            bad_vec = httpx.post(f"{bad}/infer", json=body).json()["predicted_vector"]
            assert (good_vec == bad_vec) is (lane != 5)


# -- its HTTP/1.1 (lvm/http1.py), spoken over raw sockets -------------------------------------


def exchange(url: str, wire: bytes, answers: int) -> list[tuple[bytes, bytes]]:
    """Send `wire` on one connection; the first `answers` responses as (head, body)."""
    port = int(url.rsplit(":", 1)[1])
    out: list[tuple[bytes, bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(wire)
        data = b""
        while len(out) < answers:
            if b"\r\n\r\n" in data:
                head, rest = data.split(b"\r\n\r\n", 1)
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    out.append((head, rest[:length]))
                    data = rest[length:]
                    continue
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    return out


def test_pipelined_requests_are_answered_in_order(phase2, world):
    body = orjson.dumps(context_body(world))
    infer = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    # The slow answer first: the health check behind it must wait its turn.
    answers = exchange(phase2, infer + body + health + infer + body, 3)
    assert [orjson.loads(b).get("model_type") for _, b in answers] == ["phase2"] * 3
    assert "predicted_vector" in orjson.loads(answers[0][1])
    assert orjson.loads(answers[1][1]) == {"status": "ok", "model_type": "phase2"}
    assert "predicted_vector" in orjson.loads(answers[2][1])


def test_chunked_and_expect_continue_bodies_are_read(phase2, world):
    body = orjson.dumps(context_body(world))
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (
        half,
        body[:half],
        len(body) - half,
        body[half:],
    )
    wire = b"POST /infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    [(head, answer)] = exchange(phase2, wire, 1)
    assert head.startswith(b"HTTP/1.1 200") and "predicted_vector" in orjson.loads(answer)
    port = int(phase2.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # sent before the body
        s.sendall(body)
        assert s.recv(100).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("wire", "status", "message"),
    [
        (b"GET /infer HTTP/1.1\r\nHost: x\r\n\r\n", b"405", "method not allowed"),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"404", "no such endpoint: /nope"),
        (b"GET /v2/models/x/y HTTP/1.1\r\nHost: x\r\n\r\n", b"404", "no such endpoint"),
        (b"GET /v2/models/other HTTP/1.1\r\nHost: x\r\n\r\n", b"404", "unknown model"),
        (b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", b"413",
         "request body over 67108864 bytes"),
        (b"NOT HTTP AT ALL\r\n\r\n", b"400", "malformed HTTP request"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_status_and_a_message(phase2, wire, status, message):
    [(head, answer)] = exchange(phase2, wire, 1)
    assert head.split(b" ")[1] == status
    assert message in orjson.loads(answer)["error"]


def test_connection_close_is_honoured_and_a_broken_request_ends_the_connection(phase2):
    port = int(phase2.rsplit(":", 1)[1])
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n"
    for wire in (health + b"Connection: close\r\n\r\n", health + b"\r\nBROKEN\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(wire)
            data = b""
            while chunk := s.recv(65536):  # the server closes: recv returns b""
                data += chunk
        assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close" not in data[:20]
        assert data.count(b"HTTP/1.1 ") == (1 if b"BROKEN" not in wire else 2)


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with model_server("stub") as url:
        yield url


def test_stub_answers_anything_with_a_constant_valid_response(stub):
    with httpx.Client() as client:
        assert client.get(f"{stub}/health").json() == {"status": "ok", "model_type": "stub"}
        answers = [client.post(f"{stub}/infer", content=b"ignored").json() for _ in range(3)]
    assert answers[0] == answers[1] == answers[2]
    vec = np.asarray(answers[0]["predicted_vector"])
    assert vec.shape == (DIM,) and np.linalg.norm(vec) == pytest.approx(1.0)
    assert answers[0]["model_type"] == "stub" and len(answers[0]["neighbors"]) == 10


def test_stub_keeps_pipelined_requests_in_order_on_one_connection(stub):
    port = int(stub.rsplit(":", 1)[1])
    req = b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req + health + req)
        data = b""
        while data.count(b"HTTP/1.1 200") < 3:
            chunk = s.recv(65536)
            assert chunk, "connection closed early"
            data += chunk
    heads = [part.split(b"\r\n\r\n", 1)[1][:20] for part in data.split(b"HTTP/1.1 200")[1:]]
    assert heads[0].startswith(b'{"predicted_vector"')
    assert heads[1].startswith(b'{"status":"ok"')
    assert heads[2].startswith(b'{"predicted_vector"')


def test_stub_honours_the_fault_knobs():
    statuses, nans = [], 0
    with model_server("stub", "--error-rate", "0.5", "--nan-rate", "0.5") as url:
        for _ in range(40):
            r = httpx.post(f"{url}/infer", content=b"{}")
            statuses.append(r.status_code)
            if r.status_code == 200:
                nans += math.isnan(json.loads(r.content)["predicted_vector"][0])
    assert set(statuses) == {200, 500}
    assert nans == statuses.count(200)  # error + NaN rates add up to 1: no clean answer


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lvm-serve"), *args], capture_output=True, text=True, timeout=60
    )


def test_a_bad_checkpoint_fails_before_serving(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run_serve("--profile", "phase2", "--port", str(free_port()), "--checkpoint", str(bad))
    assert result.returncode != 0
    assert "checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        result = run_serve("--profile", "stub", "--port", str(s.getsockname()[1]))
    assert result.returncode != 0
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--error-rate", "1.5"], "--error-rate must be in [0, 1]"),
        (["--error-rate", "0.6", "--nan-rate", "0.6"], "must not exceed 1"),
        (["--degrade-lane", "16"], "--degrade-lane must be in 0..15"),
        (["--profile", "stub", "--degrade-lane", "2"], "stub takes no"),
        (["--profile", "phase9"], "invalid choice"),
    ],
)
def test_bad_options_exit_2_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        server.main(args)  # options are checked before anything is built or bound
    assert exc.value.code == 2
    assert message in capsys.readouterr().err

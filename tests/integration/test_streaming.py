"""Request bodies streamed to the upstream as they arrive, through a real gateway process.

A recording upstream on a raw socket counts the body bytes it has received; the client sends
the first part of an 8 MB body (larger than every buffer on the way: the server's 1 MiB
read-ahead, the gateway's 2 MiB whole-body limit, h1pool's 1 MB write buffer) and pauses.
With a policy that does not need the body the upstream sees those bytes before the client
sends the rest; with one that does (context_length without X-Context-Length) it sees nothing
until the body is complete, and neither does it for a body under the whole-body limit. A
fallback replays the body in full, and the lane comes from the body's tail.
"""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
import redis

from lvm_gateway.contract.keys import RedisKeys
from lvm_gateway.procs import free_port
from tests.integration.gateway_env import gateway

pytestmark = pytest.mark.integration

ANSWER = orjson.dumps({
    "predicted_vector": (np.ones(768, dtype=np.float32) / np.sqrt(768)).tolist(),
    "neighbors": [{"id": "c-1", "score": 0.9}],
})  # fmt: skip


class Recorder(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), RecordingHandler)
        self.received = 0  # body bytes of the request being read
        self.bodies: list[str] = []  # sha256 of each complete body


class RecordingHandler(socketserver.StreamRequestHandler):
    server: Recorder

    def handle(self) -> None:
        while True:
            length = None
            while (line := self.rfile.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if line == b"" or length is None:
                return
            self.server.received = 0
            digest = hashlib.sha256()
            while self.server.received < length:
                chunk = self.rfile.read1(min(65536, length - self.server.received))
                if not chunk:
                    return
                digest.update(chunk)
                self.server.received += len(chunk)
            self.server.bodies.append(digest.hexdigest())
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(ANSWER)).encode()
                + b"\r\n\r\n"
                + ANSWER
            )


@pytest.fixture
def upstream() -> Iterator[tuple[str, Recorder]]:
    server = Recorder(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def big_body(vectors: int = 880) -> bytes:
    """~8 MB of LVM JSON, its tmd_codes last (lane 5)."""
    ctx = np.random.default_rng(0).standard_normal((vectors, 768)).astype(np.float32)
    doc = {"context_vectors": ctx, "tmd_codes": [5, 1, 2]}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def send_in_two_parts(
    url: str,
    body: bytes,
    pause_check: Callable[[], bool],
    headers: str = "",
    first: int = 2 * 1024 * 1024,
) -> tuple[bytes, bool]:
    """POST `body` in two parts, the first `first` bytes long; `pause_check()` runs between
    them. The answer, and what the check returned."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(
            f"POST /infer HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:first]
        )
        seen = pause_check()
        s.sendall(body[first:])
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer, seen


def config(url: str, policy: object, extra: str = "") -> str:
    return orjson.dumps(
        {
            "variants": {"a": {"url": url, "timeout_ms": 2000}, **orjson.loads(extra or "{}")},
            "routes": [{"path": "/infer", "policy": policy}],
            "feedback": {"sample_rate": 1.0},
        }
    ).decode()  # fmt: skip  (JSON is YAML)


def wait_for(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return False


def recorded_lane(redis_url: str, answer: bytes) -> bytes | None:
    """The lane of the prediction record of a raw HTTP answer (waiting up to 5 s for it)."""
    rid = answer.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode()
    client = redis.Redis.from_url(redis_url)
    key = RedisKeys("lvmgw").prediction(rid)
    try:
        wait_for(lambda: client.hget(key, "lane") is not None, 5.0)
        return client.hget(key, "lane")
    finally:
        client.close()


SERVERS = [
    "uvicorn",
    pytest.param(
        "granian",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("granian") is None, reason="granian not installed"
        ),
    ),
]


@pytest.mark.parametrize("http_server", SERVERS)
def test_a_body_no_policy_reads_is_forwarded_while_it_arrives(
    upstream, redis_url, tmp_path: Path, http_server: str
):
    url, server = upstream
    body = big_body()
    with gateway(config(url, "a"), redis_url, tmp_path, "--server", http_server) as gw:
        answer, early = send_in_two_parts(
            gw.url, body, lambda: wait_for(lambda: server.received >= 1024 * 1024, 5.0)
        )
        assert early, f"upstream saw {server.received} bytes before the client finished"
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert server.bodies == [hashlib.sha256(body).hexdigest()]
        # The lane is read off the body's tail once it arrived.
        assert recorded_lane(redis_url, answer) == b"lane_5"


def test_a_body_under_the_whole_limit_leaves_in_one_piece_after_its_last_byte(
    upstream, redis_url, tmp_path
):
    # 100 context vectors (~950 KB): over the streaming threshold, under WHOLE_MAX_BYTES.
    url, server = upstream
    body = big_body(100)
    dead = f'{{"dead": {{"url": "http://127.0.0.1:{free_port()}"}}}}'
    policy = {"canary": {"stable": "a", "canary": "dead", "weight": 100}}
    with gateway(config(url, policy, dead), redis_url, tmp_path) as gw:
        answer, early = send_in_two_parts(
            gw.url, body, lambda: wait_for(lambda: server.received > 0, 1.0), first=512 * 1024
        )
        assert not early, f"upstream saw {server.received} bytes before the body was whole"
        # The canary is unreachable: the fallback replays the body held, byte for byte.
        assert answer.startswith(b"HTTP/1.1 200") and b"x-variant: a" in answer, answer[:300]
        assert server.bodies == [hashlib.sha256(body).hexdigest()]
        assert recorded_lane(redis_url, answer) == b"lane_5"


def test_a_policy_that_needs_the_body_gets_it_whole_first(upstream, redis_url, tmp_path):
    url, server = upstream
    body = big_body()
    policy = {"context_length": {"threshold": 100, "short": "a", "long": "a"}}
    with gateway(config(url, policy), redis_url, tmp_path) as gw:
        answer, early = send_in_two_parts(
            gw.url, body, lambda: wait_for(lambda: server.received > 0, 1.0)
        )
        assert not early, "the upstream got bytes before the policy could read the body"
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert server.bodies == [hashlib.sha256(body).hexdigest()]
        # With the count in a header, the same policy needs no body: streamed.
        server.received = 0
        answer, early = send_in_two_parts(
            gw.url,
            body,
            lambda: wait_for(lambda: server.received >= 1024 * 1024, 5.0),
            headers="X-Context-Length: 880\r\n",
        )
        assert early and answer.startswith(b"HTTP/1.1 200")
        assert server.bodies[-1] == hashlib.sha256(body).hexdigest()


def test_a_fallback_replays_the_streamed_body_in_full(upstream, redis_url, tmp_path):
    url, server = upstream
    body = big_body(300)
    dead = f'{{"dead": {{"url": "http://127.0.0.1:{free_port()}"}}}}'
    policy = {"canary": {"stable": "a", "canary": "dead", "weight": 100}}
    with gateway(config(url, policy, dead), redis_url, tmp_path) as gw:
        r = gw.http.post("/infer", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200 and r.headers["x-variant"] == "a", r.text
        assert server.bodies == [hashlib.sha256(body).hexdigest()]
        assert gw.metric("lvmgw_fallbacks_total", from_variant="dead", to_variant="a") == 1


def test_a_slow_upload_is_the_clients_time_not_the_upstreams(upstream, redis_url, tmp_path):
    """The variant's 300 ms timeout runs only while the upstream is awaited: a client pausing
    1 s mid-body is still answered, and the variant is timed from the body's last byte (the
    judge's latency is the variant's, not the upload's); one pausing past body_timeout_seconds
    gets a 408."""
    url, server = upstream
    body = big_body(300)
    doc = orjson.loads(config(url, "a"))
    doc["variants"]["a"]["timeout_ms"] = 300
    doc["limits"] = {"body_timeout_seconds": 2.0}
    with gateway(orjson.dumps(doc).decode(), redis_url, tmp_path) as gw:
        answer, _ = send_in_two_parts(gw.url, body, lambda: time.sleep(1.0) is None)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert server.bodies == [hashlib.sha256(body).hexdigest()]
        assert gw.metric("lvmgw_request_duration_seconds_sum", variant="a") >= 1.0
        assert gw.metric("lvmgw_upstream_duration_seconds_sum", variant="a") < 0.3
        # Stalled past the body timeout: the 408 comes without the rest being sent.
        with socket.create_connection(("127.0.0.1", int(gw.url.rsplit(":", 1)[1])), 10) as s:
            s.sendall(
                b"POST /infer HTTP/1.1\r\nHost: gw\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body[: 1024 * 1024]
            )
            answer = s.recv(65536)
            while b"}" not in answer and (more := s.recv(65536)):  # the body may come apart
                answer += more
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"nothing arrived for 2 s" in answer
        assert len(server.bodies) == 1  # the upstream never got the stalled body whole


@pytest.mark.parametrize("vectors", [2, 880])  # read whole (below the streaming size), streamed
def test_expect_100_continue_gets_its_interim_answer_then_the_body_is_forwarded(
    upstream, redis_url, tmp_path: Path, vectors: int
):
    url, server = upstream
    body = big_body(vectors)
    with gateway(config(url, "a"), redis_url, tmp_path) as gw:
        port = int(gw.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
            s.sendall(
                b"POST /infer HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
                b"Connection: close\r\n\r\n"
            )
            interim = s.recv(65536)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
            half = len(body) // 2
            s.sendall(body[:half])
            time.sleep(0.05)  # the body arrives as several pieces
            s.sendall(body[half:])
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert server.bodies == [hashlib.sha256(body).hexdigest()]

"""The same conformance cases through a real `lvm-gateway serve` process: what the client of the
gateway gets, and (on the raw server's side) when the gateway's pooled connection was reused."""

from __future__ import annotations

import asyncio
import gzip
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from lvm_gateway.procs import BIN
from tests.conformance.conftest import (
    LVM_ANSWER,
    Handler,
    Nginx,
    Pki,
    RawConn,
    RawLoop,
    RawRequest,
    RawServer,
    response,
)
from tests.integration.gateway_env import Gateway, gateway

pytestmark = pytest.mark.integration

MakeRaw = Callable[[Handler], RawServer]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]


_SPENT: set[int] = set()  # connections the raw server treats as timed out while idle


async def scripted(req: RawRequest, conn: RawConn) -> bool:
    """The raw upstream's behaviour, chosen by the request's query string."""
    case = req.target.partition("?")[2]
    rid = req.headers.get("x-request-id", "").encode()
    if conn.index in _SPENT:
        return False  # closed as the request arrives: no answer
    if case == "spend":
        _SPENT.add(conn.index)
        conn.write(response(200, rid))
    elif case == "interim":
        conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
        await conn.writer.drain()
        conn.write(b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, rid))
    elif case == "hop":
        hop = ("Connection: keep-alive, X-Hop", "X-Hop: secret", "Keep-Alive: timeout=5")
        own = ("X-Model-Version: 9", "Cache-Control: max-age=60", "X-Request-Id: made-up")
        conn.write(response(200, rid, *hop, *own))
    elif case == "close":
        conn.write(b"HTTP/1.0 200 OK\r\n\r\nto the end " + rid)
        return False
    elif case == "conflict":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif case == "big":
        conn.write(response(200, b"b" * 200_000))
    elif case == "reset":
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf")
        await conn.writer.drain()
        await asyncio.sleep(0.05)
        conn.reset()
        return False
    elif case == "slow":
        await asyncio.sleep(1.0)
        conn.write(response(200, b"too late"))
    elif case == "fail":
        conn.write(response(500, b"boom"))
    else:
        conn.write(response(200, rid))
    return True


CONFIG = """
variants:
  raw: {{url: "{raw}", timeout_ms: 300, max_response_bytes: 100000}}
  nginx: {{url: "{nginx}"}}
  echo: {{url: "{echo}"}}
  secure: {{url: "{https}", tls: {{ca_file: "{ca}"}}}}
  half: {{urls: ["{raw}", "{bad}"]}}
{experts}
routes:
  - {{path: /raw, methods: {methods}, inspect: false, policy: raw}}
  - {{path: /method, methods: {methods}, inspect: false, policy: nginx}}
  - {{path: /empty, methods: [GET], inspect: false, policy: nginx}}
  - {{path: /plain.json, methods: [GET], inspect: false, policy: nginx}}
  - {{path: /answer.json, methods: [GET], policy: nginx}}
  - {{path: /echo, methods: {methods}, inspect: false, policy: echo}}
  - {{path: /stream, methods: [GET], inspect: false, policy: echo}}
  - {{path: /secure, methods: [GET], inspect: false, policy: secure}}
  - {{path: /half, methods: [GET], inspect: false, policy: half}}
  - {{path: /mix.json, methods: [GET], inspect: false, policy: {{tmd: {{experts: {names}}}}}}}
"""


@pytest.fixture(scope="module")
def gw_env(
    raw_loop: RawLoop,
    nginx: Nginx,
    uvicorn_url: str,
    pki: Pki,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, RawServer, RawServer]]:
    srv, bad = RawServer(raw_loop.loop, scripted), RawServer(raw_loop.loop, scripted_fail)
    raw_loop.run(srv._start())
    raw_loop.run(bad._start())
    www = Path(nginx.log).parent / "www"
    (www / "plain.json").write_bytes(b'{"text": "' + b"plain " * 200 + b'"}')
    (www / "mix.json").write_bytes(LVM_ANSWER)
    names = [f"e{i}" for i in range(16)]
    experts = "\n".join(f'  {n}: {{url: "{nginx.url}"}}' for n in names)
    config = CONFIG.format(raw=srv.url, bad=bad.url, nginx=nginx.url, echo=uvicorn_url,
                           https=nginx.https_url, ca=pki.ca, methods=METHODS,
                           experts=experts, names=names)  # fmt: skip
    try:
        with gateway(config, redis_url, tmp_path_factory.mktemp("gw")) as gw:
            yield gw, srv, bad
    finally:
        raw_loop.run(srv._stop())
        raw_loop.run(bad._stop())


async def scripted_fail(req: RawRequest, conn: RawConn) -> bool:
    conn.write(response(500, b"boom"))
    return True


@pytest.fixture
def env(gw_env: tuple[Gateway, RawServer, RawServer]) -> tuple[Gateway, RawServer]:
    gw, srv, _ = gw_env
    return gw, srv


def test_interim_responses_never_reach_the_client(env: tuple[Gateway, RawServer]) -> None:
    gw, srv = env
    before = srv.connections
    for i in range(200):
        r = gw.http.get("/raw?interim", headers={"x-request-id": f"req-{i}"})
        assert (r.status_code, r.text) == (200, f"req-{i}")
        assert r.headers["x-request-id"] == f"req-{i}"
    assert srv.connections - before <= 1  # one keep-alive connection carried all 200


def test_close_delimited_body(env: tuple[Gateway, RawServer]) -> None:
    gw, _ = env
    for i in range(3):
        r = gw.http.get("/raw?close", headers={"x-request-id": f"c{i}"})
        assert (r.status_code, r.text) == (200, f"to the end c{i}")


def test_methods_pass_through(env: tuple[Gateway, RawServer]) -> None:
    gw, _ = env
    for method in METHODS:
        r = gw.http.request(method, "/method")
        assert r.status_code == 200
        assert len(r.headers.get_list("date")) == len(r.headers.get_list("server")) == 1
        assert r.text == ("" if method == "HEAD" else method)
    r = gw.http.request("POST", "/echo", content=b"12345")
    assert orjson.loads(r.content)["method"] == "POST"
    assert orjson.loads(r.content)["body_bytes"] == 5


def test_no_body_statuses_and_chunked(env: tuple[Gateway, RawServer]) -> None:
    gw, _ = env
    r = gw.http.get("/empty")
    assert (r.status_code, r.content) == (204, b"")
    first = gw.http.get("/plain.json")
    r = gw.http.get("/plain.json", headers={"if-none-match": first.headers["etag"]})
    assert (r.status_code, r.content) == (304, b"")
    assert r.headers["etag"].removeprefix("W/") == first.headers["etag"].removeprefix("W/")
    r = gw.http.get("/stream")  # uvicorn frames it chunked
    assert (r.status_code, r.text) == (200, "alpha-beta-gamma")


def test_hop_by_hop_headers_stop_at_the_gateway_both_ways(env: tuple[Gateway, RawServer]) -> None:
    gw, _ = env
    # From 127.0.0.2: uvicorn trusts X-Forwarded-For from 127.0.0.1 (its forwarded_allow_ips
    # default) and would report 10.1.2.3 as the peer.
    with httpx.Client(
        base_url=gw.url, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    ) as other:
        r = other.get(
            "/echo",
            headers={
                "connection": "keep-alive, x-secret",
                "x-secret": "for this hop only",
                "keep-alive": "timeout=5",
                "te": "trailers",
                "proxy-authorization": "Basic c2VjcmV0",
                "x-mirror": "1",
                "x-forwarded-for": "10.1.2.3",
                "x-forwarded-proto": "https",
                "x-end-to-end": "kept",
            },
        )
    seen = orjson.loads(r.content)["headers"]
    for name in ("x-secret", "keep-alive", "te", "proxy-authorization", "x-mirror"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == "kept"
    assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.2"
    assert seen["x-forwarded-proto"] == "http"
    assert (r.headers["x-model-version"], r.headers["cache-control"]) == ("7", "no-store")

    r = gw.http.get("/raw?hop", headers={"x-request-id": "hop-1"})
    assert (r.headers["x-model-version"], r.headers["cache-control"]) == ("9", "max-age=60")
    assert "x-hop" not in r.headers and "keep-alive" not in r.headers
    assert r.headers.get_list("x-request-id") == ["hop-1"]


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=10)


def test_gzip_passes_through_and_inspected_answers_stay_readable(
    env: tuple[Gateway, RawServer], nginx: Nginx
) -> None:
    gw, _ = env
    plain = (Path(nginx.log).parent / "www" / "plain.json").read_bytes()
    out = _curl("-H", "Accept-Encoding: gzip", f"{gw.url}/plain.json")
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    assert gzip.decompress(body) == plain  # untouched: the client decodes it

    # An inspected LVM answer: the gateway asked nginx for identity, so no 502 whatever the
    # client accepts, and `curl --compressed` reads it.
    out = _curl("--compressed", f"{gw.url}/answer.json")
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out
    assert body == LVM_ANSWER
    assert len(orjson.loads(body)["predicted_vector"]) == 768


def test_mixture_reads_its_experts_answers_whatever_the_client_accepts(
    env: tuple[Gateway, RawServer],
) -> None:
    gw, _ = env
    r = gw.http.get("/mix.json", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert len(orjson.loads(r.content)["predicted_vector"]) == 768


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("conflict", 502, "Transfer-Encoding can't be present with Content-Length"),
        ("big", 502, "response body larger than 100000 bytes"),
        ("reset", 502, "connection closed"),
        ("slow", 504, "no answer within 300 ms"),
    ],
)
def test_broken_upstream_answers_are_errors_and_the_connection_is_discarded(
    env: tuple[Gateway, RawServer], case: str, status: int, message: str
) -> None:
    gw, srv = env
    gw.http.get("/raw", headers={"x-request-id": "warm"})
    before = srv.connections
    r = gw.http.get(f"/raw?{case}", headers={"x-request-id": f"{case}-1"})
    assert r.status_code == status
    assert message in orjson.loads(r.content)["message"]
    r = gw.http.get("/raw", headers={"x-request-id": f"{case}-after"})
    assert (r.status_code, r.text) == (200, f"{case}-after")
    assert srv.connections == before + 1  # the broken exchange's connection was not reused


def test_stale_pooled_connection_is_retried_on_a_fresh_one(
    env: tuple[Gateway, RawServer],
) -> None:
    gw, srv = env
    for i in range(3):
        assert gw.http.get("/raw?spend", headers={"x-request-id": f"s{i}"}).text == f"s{i}"
        before = srv.connections
        r = gw.http.post("/raw", content=b"{}", headers={"x-request-id": f"after-s{i}"})
        assert (r.status_code, r.text) == (200, f"after-s{i}")
        assert srv.connections == before + 1  # the retry went to a new connection


def test_half_broken_variant_serves_995_percent(
    gw_env: tuple[Gateway, RawServer, RawServer],
) -> None:
    gw, _, bad = gw_env
    statuses = Counter(gw.http.get("/half").status_code for _ in range(2000))
    assert statuses[200] >= 1990, statuses
    assert len(bad.requests) < 40


def test_tls_upstream(env: tuple[Gateway, RawServer]) -> None:
    gw, _ = env
    r = gw.http.get("/secure")
    assert (r.status_code, r.text) == (200, "sni=localhost")


def test_validate_reports_bad_tls_with_its_path(tmp_path: Path) -> None:
    config = tmp_path / "bad-tls.yaml"
    config.write_text(
        "variants:\n  phase2: {url: 'https://m:8443', tls: {ca_file: /nope/ca.pem}}\n"
        "routes:\n  - {path: /infer, policy: phase2}\n"
    )
    out = subprocess.run(
        [str(BIN / "lvm-gateway"), "validate", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 2, out
    assert "variants.phase2.tls.ca_file: /nope/ca.pem: no such file" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr

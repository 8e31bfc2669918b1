"""HTTP/1.1 conformance of the upstream client, h1pool and aiohttp's client side by side.

Each case asserts what the caller gets and, from the raw server's side, how many connections
were opened: a pooled connection may be reused only when its last exchange ended cleanly.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from lvm_gateway.errors import BadResponseError, ConnectionLostError
from tests.conformance.clients import CLIENTS, Client
from tests.conformance.conftest import Handler, RawConn, RawRequest, RawServer, response

pytestmark = pytest.mark.integration

ERRORS = (OSError, aiohttp.ClientError)
MakeRaw = Callable[[Handler], RawServer]


@pytest.fixture(params=sorted(CLIENTS))
async def client_for(request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(srv: RawServer, **kw: int) -> Client:
        c = CLIENTS[request.param](srv.url, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def echo(req: RawRequest, conn: RawConn) -> bool:
    conn.write(response(200, req.id.encode()))
    return True


def known_failure(request: pytest.FixtureRequest, client: str, reason: str) -> None:
    """A case `client` is known to fail: run it anyway, strictly expected to fail."""
    if request.node.callspec.params["client_for"] == client:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


async def test_interim_responses_are_skipped_without_desync(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        # 103 and 100 before the answer, in separate writes: the first reads may end mid-stream.
        conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        await conn.writer.drain()
        if conn.served % 2:
            conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    for i in range(200):
        status, headers, body = await client.request("GET", "/", headers={"x-id": f"r{i}"})
        assert (status, body) == (200, f"r{i}".encode())
        assert "link" not in headers  # the interim response's fields are not the answer's
    assert srv.connections == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",
    ],
    ids=["http10", "connection-close"],
)
async def test_close_delimited_body_is_read_to_eof(
    raw: MakeRaw, client_for: Callable[..., Client], answer: bytes
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        conn.write(answer)
        for piece in (b"part-one ", req.id.encode()):
            conn.write(piece)
            await conn.writer.drain()
            await asyncio.sleep(0.01)
        return False  # the end of the body is the end of the connection

    srv = raw(handler)
    client = client_for(srv)
    for i in range(3):
        status, _, body = await client.request("GET", "/", headers={"x-id": f"c{i}"})
        assert (status, body) == (200, f"part-one c{i}".encode())
    assert srv.connections == 3  # never pooled


async def test_chunked_body_with_trailers_keeps_the_connection(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        rid = req.id.encode()
        conn.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
        conn.write(b"4\r\nabcd\r\n")
        await conn.writer.drain()
        conn.write(b"%x\r\n%s\r\n0\r\nX-Sum: 42\r\n\r\n" % (len(rid), rid))
        return True

    srv = raw(handler)
    client = client_for(srv)
    for i in range(20):
        status, headers, body = await client.request("GET", "/", headers={"x-id": f"k{i}"})
        assert (status, body) == (200, f"abcdk{i}".encode())
        assert "x-sum" not in headers
    assert srv.connections == 1


async def test_head_204_304_have_no_body(raw: MakeRaw, client_for: Callable[..., Client]) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.method == "HEAD":  # the length a GET would have, and no body
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        elif req.target == "/204":
            conn.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif req.target == "/304":
            conn.write(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        else:
            conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    status, headers, body = await client.request("HEAD", "/")
    assert (status, body, headers["content-length"]) == (200, b"", "1000")
    assert await client.request("GET", "/", headers={"x-id": "after-head"}) == (
        200,
        {"content-length": "10"},
        b"after-head",
    )
    opened = srv.connections
    for target in ("/204", "/304", "/204"):
        status, _, body = await client.request("GET", target)
        assert (status, body) == (int(target[1:]), b"")
    status, _, body = await client.request("GET", "/", headers={"x-id": "last"})
    assert (status, body) == (200, b"last")
    assert srv.connections == opened  # 204 and 304 end cleanly: the connection is reused


async def test_every_method_is_sent_as_given(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.method == "HEAD":
            conn.write(b"HTTP/1.1 200 OK\r\nX-Method: HEAD\r\nContent-Length: 4\r\n\r\n")
        else:
            conn.write(response(200, f"{req.method} {len(req.body)}".encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        body = b"xyz" if method in ("POST", "PUT", "PATCH") else b""
        status, _, got = await client.request(method, "/m", body)
        assert (status, got) == (200, f"{method} {len(body)}".encode())
    status, headers, got = await client.request("HEAD", "/m")
    assert (status, headers["x-method"], got) == (200, "HEAD", b"")
    assert [r.method for r in srv.requests] == [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"
    ]  # fmt: skip


async def test_encoded_bodies_pass_untouched(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    plain = b'{"answer": "' + b"x" * 500 + b'"}'
    encoded = {"gzip": gzip.compress(plain), "br": os.urandom(64)}  # br: opaque bytes here

    async def handler(req: RawRequest, conn: RawConn) -> bool:
        coding = req.headers["accept-encoding"]
        conn.write(response(200, encoded[coding], f"Content-Encoding: {coding}", "Vary: A-E"))
        return True

    srv = raw(handler)
    client = client_for(srv)
    for coding, data in encoded.items():
        status, headers, body = await client.request(
            "GET", "/", headers={"accept-encoding": coding}
        )
        assert (status, headers["content-encoding"], body) == (200, coding, data)
    assert srv.connections == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
    ],
    ids=["cl-and-te", "two-cl"],
)
async def test_conflicting_framing_is_rejected_and_the_connection_discarded(
    raw: MakeRaw, client_for: Callable[..., Client], head: bytes
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.target == "/bad":
            conn.write(head + b"5\r\nhello\r\n0\r\n\r\n")
        else:
            conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    assert (await client.request("GET", "/", headers={"x-id": "a"}))[2] == b"a"
    with pytest.raises(ERRORS):
        await client.request("GET", "/bad")
    assert (await client.request("GET", "/", headers={"x-id": "b"}))[2] == b"b"
    assert srv.connections == 2


async def test_oversized_body_is_cut_off(raw: MakeRaw, client_for: Callable[..., Client]) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        # far more than socket buffers hold, so the body is still arriving when it is refused
        conn.write(response(200, b"z" * (4 << 20 if req.target == "/big" else 10)))
        return True

    srv = raw(handler)
    client = client_for(srv, limit=65536)
    assert (await client.request("GET", "/"))[2] == b"z" * 10
    with pytest.raises(BadResponseError, match="larger than 65536 bytes"):
        await client.request("GET", "/big")
    assert (await client.request("GET", "/"))[2] == b"z" * 10
    assert srv.connections == 2


async def test_reset_mid_body_fails_and_is_not_reused(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.target == "/reset":
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            await conn.writer.drain()
            await asyncio.sleep(0.05)
            conn.reset()
            return False
        conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    assert (await client.request("GET", "/", headers={"x-id": "a"}))[2] == b"a"
    with pytest.raises(ERRORS):
        await client.request("GET", "/reset")
    assert [r.target for r in srv.requests].count("/reset") == 1  # not retried: bytes came back
    assert (await client.request("GET", "/", headers={"x-id": "b"}))[2] == b"b"
    assert srv.connections == 2


async def test_timed_out_exchange_discards_its_connection(
    raw: MakeRaw, client_for: Callable[..., Client]
) -> None:
    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.target == "/slow":
            await asyncio.sleep(0.5)
        conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.request("GET", "/slow", headers={"x-id": "late"})
    await asyncio.sleep(0.6)  # the late answer arrives: it must not become the next one's
    assert await client.request("GET", "/", headers={"x-id": "next"}) == (
        200,
        {"content-length": "4"},
        b"next",
    )
    assert srv.connections == 2


async def test_stale_idle_connection_is_retried_on_a_fresh_one(
    raw: MakeRaw, client_for: Callable[..., Client], request: pytest.FixtureRequest
) -> None:
    known_failure(request, "aiohttp", "aiohttp raises ServerDisconnectedError, no retry")

    async def handler(req: RawRequest, conn: RawConn) -> bool:
        # Each connection serves one request; the next one on it finds the server has closed it
        # (an idle timeout racing the request): no answer, just the FIN.
        if conn.served:
            return False
        await asyncio.sleep(0.02)
        conn.write(response(200, req.id.encode()))
        return True

    srv = raw(handler)
    client = client_for(srv)
    # Three concurrent requests leave three idle (and, to the server, spent) connections.
    await asyncio.gather(*(client.request("GET", "/", headers={"x-id": f"w{i}"}) for i in range(3)))
    assert srv.connections == 3
    for i in range(3):
        status, _, body = await client.request("POST", "/", b"{}", headers={"x-id": f"s{i}"})
        assert (status, body) == (200, f"s{i}".encode())
    # each request: one stale idle connection, then one fresh connection (never a second idle)
    assert srv.connections == 6


async def test_stale_retry_happens_once(raw: MakeRaw) -> None:
    from tests.conformance.clients import H1Client

    async def handler(req: RawRequest, conn: RawConn) -> bool:
        if req.target == "/warm":
            conn.write(response(200, b"ok"))
            return True
        return False  # every other request: the connection closes without an answer

    srv = raw(handler)
    client = H1Client(srv.url)
    try:
        await client.request("GET", "/warm")
        with pytest.raises(ConnectionLostError) as info:
            await client.request("GET", "/x")
        assert not info.value.received
        assert [r.target for r in srv.requests] == ["/warm", "/x", "/x"]
    finally:
        await client.close()


async def test_pool_limit_queues_and_a_cancelled_waiter_passes_its_turn_on(raw: MakeRaw) -> None:
    from lvm_gateway.gateway.h1pool import EndpointPool

    srv = raw(echo)
    pool = EndpointPool(srv.url, 1)
    loop = asyncio.get_running_loop()
    try:
        held, _ = await pool._acquire(loop, fresh=False)
        queued = asyncio.create_task(pool.request("GET", "/", b"", {"x-id": "q"}, 100))
        third = asyncio.create_task(pool.request("GET", "/", b"", {"x-id": "3"}, 100))
        await asyncio.sleep(0.01)  # both wait for the one connection
        pool._release(held)  # wakes `queued` ...
        queued.cancel()  # ... which is cancelled before it runs: `third` must get the turn
        assert (await asyncio.wait_for(third, 2))[2] == b"3"
        assert queued.cancelled()
        assert srv.connections == 1
    finally:
        pool.close()

"""Clients cannot hold the gateway: idle and trickling connections are closed, stalled bodies
answered 408, connections beyond the cap 503 — against a real `lvm-gateway serve` process."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway_env import Gateway, gateway, model_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with model_server("stub", log_dir=tmp_path_factory.mktemp("stub")) as url:
        yield url


def policy(stub: str) -> str:
    return (
        f'variants:\n  stub: {{url: "{stub}"}}\n'
        "routes:\n  - path: /infer\n    inspect: false\n    policy: stub\n"
        "limits: {body_timeout_seconds: 1}\n"
    )


def connect(gw: Gateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=5)
    return s


def closed_within(s: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within `seconds`, and what it sent first."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
        return True, got
    except TimeoutError:
        return False, got
    except ConnectionResetError:
        return True, got


def test_idle_and_trickling_clients_are_cut_off(stub: str, redis_url: str, tmp_path: Path) -> None:
    extra = ("--client-header-timeout", "1", "--keep-alive-timeout", "1")
    with gateway(policy(stub), redis_url, tmp_path, *extra) as gw:
        silent = [connect(gw) for _ in range(50)]  # never send a byte
        trickle = connect(gw)
        trickle.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\n")  # and never finish the head
        body = connect(gw)
        body.sendall(b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123")
        t0 = time.monotonic()
        assert all(closed_within(s, 4)[0] for s in silent)
        closed, sent = closed_within(trickle, 4)
        assert closed and sent.startswith(b"HTTP/1.1 408")
        closed, sent = closed_within(body, 4)
        assert sent.startswith(b"HTTP/1.1 408"), sent[:100]
        assert b"request body not received" in sent
        print(
            f"idle, trickling head, stalled body: all cut off within {time.monotonic() - t0:.1f}s"
        )
        # The gateway still serves, and a keep-alive connection left idle is closed too.
        assert gw.infer().status_code == 200
        ka = connect(gw)
        ka.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        closed, sent = closed_within(ka, 4)
        assert closed and sent.startswith(b"HTTP/1.1 200")
        for s in [*silent, trickle, body, ka]:
            s.close()


def test_a_keep_alive_connections_next_head_gets_the_whole_timeout(
    stub: str, redis_url: str, tmp_path: Path
) -> None:
    """The head timer is armed once per connection and moved, not re-armed per request: a head
    begun late on a reused connection still has the full timeout from its own start."""
    with gateway(policy(stub), redis_url, tmp_path, "--client-header-timeout", "1") as gw:
        s = connect(gw)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never finish the head
        begun = time.monotonic()
        closed, sent = closed_within(s, 4)
        waited = time.monotonic() - begun
        assert closed and sent.startswith(b"HTTP/1.1 408")
        assert 0.8 < waited < 2.5, waited
        s.close()


@pytest.mark.parametrize(("head_s", "idle_s"), [(3, 1), (1, 2)])
def test_the_keep_alive_wait_and_the_head_timeout_share_a_timer(
    stub: str, redis_url: str, tmp_path: Path, head_s: int, idle_s: int
) -> None:
    """Idle after a response, a connection is closed after the keep-alive time whether that is
    shorter than the head timeout (the timer must fire earlier than it was set for) or longer
    (the head timer firing meanwhile must not close an idle connection)."""
    extra = ("--client-header-timeout", str(head_s), "--keep-alive-timeout", str(idle_s))
    with gateway(policy(stub), redis_url, tmp_path, *extra) as gw:
        s = connect(gw)
        for _ in range(2):  # the second request comes after the first head timer fired
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(1.3 if idle_s > 1.3 else 0.2)
        idle_from = time.monotonic() - (1.3 if idle_s > 1.3 else 0.2)
        closed, sent = closed_within(s, 5)
        waited = time.monotonic() - idle_from
        assert closed and sent == b""
        assert idle_s - 0.3 < waited < idle_s + 1.5, waited
        s.close()


def test_connections_beyond_the_cap_get_a_503(stub: str, redis_url: str, tmp_path: Path) -> None:
    with gateway(policy(stub), redis_url, tmp_path, "--max-connections", "8") as gw:
        held = [connect(gw) for _ in range(8)]
        time.sleep(0.2)
        r = gw.http.get("/healthz", headers={"Connection": "close"})
        assert r.status_code == 503
        for s in held:
            s.close()
        gw.wait_until(lambda: gw.http.get("/healthz").status_code == 200, 5)

"""Real upstream servers for the HTTP/1.1 conformance suite, all on 127.0.0.1 random ports.

- `raw`: a scripted asyncio server on a background thread for the edge cases no real server
  produces on demand (1xx before the answer, broken framing, resets, stale keep-alive). It
  counts the connections it accepts, so a test can assert when a pooled connection was reused.
- `nginx`: the Debian package's binary as a non-daemon child (single process) with a generated
  config; a TLS server (and mutual TLS) with a CA made by the `openssl` CLI in the test.
- `uvicorn`: a tiny ASGI app (tests/conformance/asgi_app.py) as a real uvicorn process.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lvm_gateway.procs import free_port, start, stop, wait_http


@dataclass
class RawRequest:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers.get("x-id", "")


@dataclass
class RawConn:
    """One accepted connection; `index` counts from 0 in accept order."""

    index: int
    writer: asyncio.StreamWriter
    served: int = 0  # requests answered on this connection so far

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[RawRequest, RawConn], Awaitable[bool]]  # False: stop serving this connection


def response(
    status: int = 200, body: bytes = b"", *headers: str, reason: str = "OK", version: str = "1.1"
) -> bytes:
    """A complete response with a Content-Length unless a framing header is given."""
    lines = [f"HTTP/{version} {status} {reason}", *headers]
    if not any(h.lower().startswith(("content-length:", "transfer-encoding:")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class RawServer:
    def __init__(self, loop: asyncio.AbstractEventLoop, handler: Handler) -> None:
        self.loop = loop
        self.handler = handler
        self.connections = 0
        self.requests: list[RawRequest] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = RawConn(self.connections, writer)
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                line, *fields = head.decode("latin-1").split("\r\n")[:-2]
                method, target, _ = line.split(" ", 2)
                headers = {}
                for f in fields:
                    k, v = f.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = RawRequest(method, target, headers, body)
                self.requests.append(req)
                if not await self.handler(req, conn):
                    return
                conn.served += 1
                await writer.drain()
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _stop(self) -> None:
        assert self.server is not None
        self.server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class RawLoop:
    """One event loop on a daemon thread hosting every raw server of the session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="session")
def raw_loop() -> Iterator[RawLoop]:
    rl = RawLoop()
    yield rl
    rl.close()


@pytest.fixture
def raw(raw_loop: RawLoop) -> Iterator[Callable[[Handler], RawServer]]:
    """`raw(handler)` starts a scripted server; all are stopped after the test."""
    servers: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        srv = RawServer(raw_loop.loop, handler)
        raw_loop.run(srv._start())
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        raw_loop.run(srv._stop())


# -- TLS material (openssl CLI: the cryptography package is not a dependency) ----------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: verification against it must fail


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)  # fmt: skip


def _leaf(d: Path, name: str, cn: str, san: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
             cwd=d)  # fmt: skip
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=d)  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test CA")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other")
    _leaf(d, "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    _leaf(d, "client", "gateway", "DNS:gateway")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
               d / "client.key", d / "other.pem")  # fmt: skip


# -- nginx -------------------------------------------------------------------------------------

NGINX_BIN = shutil.which("nginx") or "/usr/sbin/nginx"
LVM_ANSWER = (
    b'{"predicted_vector":[' + b",".join([b"0.036"] * 768) + b'],"neighbors":[{"id":"c1",'
    b'"score":0.9}],"model":"nginx-static"}'
)


@dataclass
class Nginx:
    url: str
    https_url: str
    mtls_url: str
    log: Path


NGINX_CONF = """
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type application/json;
    keepalive_requests 100000;
    gzip on;
    gzip_types application/json;
    gzip_min_length 1;
    gzip_proxied any;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /method {{ return 200 "$request_method"; }}
        location = /empty {{ return 204; }}
        location = /accept-encoding {{ return 200 "[$http_accept_encoding]"; }}
        location / {{ etag on; }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        location / {{ return 200 "sni=$ssl_server_name"; }}
    }}
    server {{
        listen 127.0.0.1:{mtls_port} ssl;
        ssl_certificate {pki}/server.pem;
        ssl_certificate_key {pki}/server.key;
        ssl_client_certificate {pki}/ca.pem;
        ssl_verify_client on;
        location / {{ return 200 "client=$ssl_client_s_dn"; }}
    }}
}}
"""


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Nginx]:
    if not Path(NGINX_BIN).exists():
        pytest.skip("nginx is not installed (apt-get install -y -qq nginx)")
    d = tmp_path_factory.mktemp("nginx")
    www = d / "www"
    www.mkdir()
    (www / "answer.json").write_bytes(LVM_ANSWER)
    port, tls_port, mtls_port = free_port(), free_port(), free_port()
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(d=d, port=port, tls_port=tls_port, mtls_port=mtls_port, pki=pki.ca.parent)
    )
    proc = start([NGINX_BIN, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
                 log=d / "stdout.log")  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/method", 10, proc)
        yield Nginx(
            f"http://127.0.0.1:{port}",
            f"https://localhost:{tls_port}",
            f"https://localhost:{mtls_port}",
            d / "error.log",
        )
    finally:
        stop(proc)


# -- uvicorn -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def uvicorn_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "uvicorn.log"
    proc = start(
        [sys.executable, "-m", "uvicorn", "tests.conformance.asgi_app:app", "--port", str(port),
         "--log-level", "warning"],
        health_url=f"http://127.0.0.1:{port}/echo",
        log=log,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)

"""The admin server beside the gateway: its own uvicorn server on a thread of the serving process.

One per `lvm-gateway serve`, whatever `--workers` says: the thread lives in the process that
supervises the workers (or is the single worker), so the page is served once. It has its own
event loop and Redis client; it never touches the data plane's loop or state.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from lvm_gateway.admin.app import AdminApp
from lvm_gateway.errors import AdminServerError


class AdminServer:
    def __init__(self, app: AdminApp, host: str, port: int, log_level: str) -> None:
        # Bound here, in the caller: a taken port is an immediate, clear error.
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise AdminServerError(f"admin port {host}:{port}: {exc.strerror}") from exc
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="lvmgw-admin", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise AdminServerError(f"the admin server on {self.url} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)
        self.sock.close()

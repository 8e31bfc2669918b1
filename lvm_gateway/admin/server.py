"""The admin server beside the gateway: its own uvicorn server in a child process.

One per `lvm-gateway serve`, whatever `--workers` says: the process that supervises the workers
(or is the single worker) starts it, so the page is served once. It runs in a process of its own
because rendering the page is Python work: on a thread of a single-worker gateway it held the
GIL for 35-50 ms per refresh (up to 130 ms) and stalled every request in flight, which a 5 ms
p95 gate sees (the page refreshes every 2 s for each person watching). It has its own Redis
client and never touches the data plane's state.

The parent binds the socket (a taken port is an immediate, clear error) and hands it over; the
Redis URL and the token travel in the child's environment, never in its command line (`ps`).
The child exits when its parent is gone, even after a SIGKILL. A child that dies while the
gateway runs (a crash, the OOM killer; not one asked to stop by SIGTERM or SIGINT) is started
again on the same socket, so the clients that connected meanwhile wait in its backlog and are
then answered; each restart is logged, and they back off from 1 s to 30 s while the child keeps
dying within a minute of its start.
"""

from __future__ import annotations

import argparse
import logging.config
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn

from lvm_gateway.errors import AdminServerError
from lvm_gateway.logfmt import FORMATS, LEVELS, dict_config

_ENV_REDIS = "LVMGW_ADMIN_REDIS_URL"
_ENV_TOKEN = "LVMGW_ADMIN_TOKEN"
_PARENT_POLL_S = 0.5
_RESTART_S = (1.0, 30.0)  # the first and the longest wait before starting a dead child again
_STABLE_S = 60.0  # a child that served this long starts the back-off afresh when it dies
_STOPPED = frozenset({0, -signal.SIGTERM, -signal.SIGINT})  # exit codes that are no crash

log = logging.getLogger("lvm_gateway.admin")


class AdminServer:
    def __init__(
        self,
        redis_url: str,
        prefix: str,
        token: str | None,
        host: str,
        port: int,
        log_level: str,
        log_format: str = "text",
    ) -> None:
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
            self.sock.listen(128)
        except OSError as exc:
            self.sock.close()
            raise AdminServerError(f"admin port {host}:{port}: {exc.strerror}") from exc
        self.host, self.port = host, self.sock.getsockname()[1]
        self._args = [
            sys.executable, "-m", __name__, "--fd", str(self.sock.fileno()), "--prefix", prefix,
            "--log-level", log_level, "--log-format", log_format,
        ]  # fmt: skip
        self._env = {**os.environ, _ENV_REDIS: redis_url, _ENV_TOKEN: token or ""}
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # stop() never races a restart

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the child and wait until it answers; from then on, keep it running."""
        self.proc = self._spawn()
        self._wait_ready(timeout_s)
        threading.Thread(target=self._supervise, name="admin-supervisor", daemon=True).start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self._args, env=self._env, pass_fds=(self.sock.fileno(),))

    def _supervise(self) -> None:
        wait = _RESTART_S[0]
        while True:
            proc = self.proc
            assert proc is not None
            started = time.monotonic()
            code = proc.wait()
            # Asked to stop (SIGTERM or SIGINT, which a stop of the gateway's process group
            # sends the page too), or done: not a death to repair.
            if self._stopping.is_set() or code in _STOPPED:
                return
            if time.monotonic() - started >= _STABLE_S:
                wait = _RESTART_S[0]
            log.warning(
                "the status page's process exited (code %s); starting it again in %g s",
                code,
                wait,
            )
            if self._stopping.wait(wait):
                return
            wait = min(wait * 2, _RESTART_S[1])
            with self._lock:
                if self._stopping.is_set():
                    return
                self.proc = self._spawn()
                self.restarts += 1

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        host = f"[{self.host}]" if ":" in self.host else self.host
        probe = f"http://{host}:{self.port}/api/v1/openapi.json"
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise AdminServerError(f"the admin server on {self.url} exited at start")
            try:
                if httpx.get(probe, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AdminServerError(f"the admin server on {self.url} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()


def _exit_with(parent: int, server: uvicorn.Server) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    server.should_exit = True


def main(argv: list[str] | None = None) -> None:
    """The child: serve the admin app on the inherited socket until told to stop."""
    from lvm_gateway.admin.app import AdminApp

    p = argparse.ArgumentParser(prog=f"python -m {__name__}")
    p.add_argument("--fd", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--log-level", choices=LEVELS, default="info")
    p.add_argument("--log-format", choices=FORMATS, default="text")
    args = p.parse_args(argv)
    log_config = dict_config(args.log_level, args.log_format)
    logging.config.dictConfig(log_config)
    app = AdminApp(os.environ[_ENV_REDIS], args.prefix, os.environ.get(_ENV_TOKEN) or None)
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        log_config=log_config,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=2,
        loop="uvloop",
    )
    server = uvicorn.Server(config)
    watch = threading.Thread(target=_exit_with, args=(os.getppid(), server), daemon=True)
    watch.start()
    server.run(sockets=[socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()

"""Real model servers and real gateway processes on 127.0.0.1 for integration tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson

from lvm_gateway.procs import free_port, start, stop, wait_http

DIM = 768


def infer_body(n: int = 3, seed: int = 0, tmd: tuple[int, int, int] | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((n, DIM)).astype(np.float32)
    ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
    doc: dict[str, object] = {"context_vectors": ctx.tolist()}
    if tmd is not None:
        doc["tmd_codes"] = list(tmd)
    return orjson.dumps(doc)


@contextmanager
def model_server(profile: str, *extra: str, log_dir: Path | None = None) -> Iterator[str]:
    with model_servers({profile: [profile, *extra]}, log_dir) as urls:
        yield urls[profile]


@contextmanager
def model_servers(
    specs: dict[str, list[str]], log_dir: Path | None = None
) -> Iterator[dict[str, str]]:
    """Named `lvm-serve` processes (`--profile` first in each spec), started in parallel."""
    ports = {name: free_port() for name in specs}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (profile, *extra) in specs.items():
            procs[name] = start(
                ["lvm-serve", "--profile", profile, "--port", str(ports[name]), *extra],
                log=log_dir / f"lvm-serve-{name}-{ports[name]}.log" if log_dir else None,
            )
        for name, proc in procs.items():
            wait_http(f"http://127.0.0.1:{ports[name]}/health", 20, proc)
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    finally:
        for proc in procs.values():
            stop(proc)


class Gateway:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, config: Path, log: Path) -> None:
        self.proc, self.url, self.config, self.log = proc, url, config, log
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def infer(
        self, headers: dict[str, str] | None = None, body: bytes | None = None, path: str = "/infer"
    ) -> httpx.Response:
        return self.http.post(
            path,
            content=infer_body() if body is None else body,
            headers={"content-type": "application/json", **(headers or {})},
        )

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.http.get("/metrics").text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_until(self, check: Callable[[], bool], timeout_s: float = 5.0) -> float:
        """Seconds until `check()` held; raises when it never did."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if check():
                return time.monotonic() - t0
            time.sleep(0.02)
        raise AssertionError(
            f"condition not met within {timeout_s}s; log: {self.log.read_text()[-2000:]}"
        )


@contextmanager
def gateway(config_text: str, redis_url: str, tmp: Path, *extra: str) -> Iterator[Gateway]:
    port = free_port()
    config = tmp / f"gateway-{port}.yaml"
    config.write_text(config_text)
    log = tmp / f"gateway-{port}.log"
    # The gateway's home (its saved rollout snapshot) is per test, shared by its replicas.
    proc = start(
        ["lvm-gateway", "serve", "--config", str(config), "--port", str(port),
         "--redis", redis_url, *extra],
        health_url=f"http://127.0.0.1:{port}/readyz",
        env={"LVM_GATEWAY_HOME": str(tmp / "gateway-home")},
        log=log,
    )  # fmt: skip
    gw = Gateway(proc, f"http://127.0.0.1:{port}", config, log)
    try:
        yield gw
    finally:
        gw.http.close()
        stop(proc)

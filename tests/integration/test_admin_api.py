"""The admin JSON API on a real `lvm-gateway serve --admin-port` over a real Redis: documents,
errors, the token, the wiring flags, and a schemathesis run against its OpenAPI document."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from lvm_gateway.contract.windows import BUCKET_SECONDS
from lvm_gateway.procs import BIN, free_port, start, stop
from lvm_gateway.redisconn import open_client, start_redis_server
from lvm_gateway.rollout.agent.recorder import WindowRecorder
from tests.integration.admin_env import (
    TOKEN,
    TOKEN_ENV,
    AdminGateway,
    admin_gateway,
    traffic,
    write_policy,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def wait_redis(url: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdminGateway]:
    with admin_gateway(redis_url, tmp_path_factory.mktemp("admin")) as gw:
        yield gw


@pytest.fixture
def api(gateway: AdminGateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url + "api/v1/", timeout=10) as client:
        yield client


async def test_list_detail_and_history_documents(
    gateway: AdminGateway, api: httpx.Client, redis_url: str
) -> None:
    listed = api.get("rollouts")
    assert listed.status_code == 200
    names = [r["name"] for r in listed.json()["rollouts"]]
    assert names == ["phase2", "slow"]
    # Counts in two past buckets, written by the data plane's own recorder.
    client = open_client(redis_url)
    now = time.time()
    buckets = []
    for age in (60, 30):
        recorder = WindowRecorder(gateway.prefix, clock=lambda age=age: now - age)
        traffic(recorder, "phase2", 40, 3.0, errors=2, hits=15)
        traffic(recorder, "phase1", 20, 1.0, errors=0, hits=5)
        buckets.append(float(int(now - age) // BUCKET_SECONDS * BUCKET_SECONDS))
        await recorder.flush(client)
    await client.aclose()
    doc = api.get("rollouts/phase2").json()
    assert (doc["phase"], doc["stable"], doc["canary"]) == ("Pending", "phase1", "phase2")
    assert doc["steps"] == ["shadow", 10, 20, 50, 100]
    with_data = [p for p in doc["series"] if p["canary"]["requests"]]
    assert [p["t"] for p in with_data] == buckets
    point = with_data[0]
    assert point["canary"] == {
        "requests": 40, "feedback": 20, "p95_ms": pytest.approx(3.0, abs=0.5),
        "error_rate": 0.05, "hit5": 0.75,
    }  # fmt: skip
    assert point["stable"]["requests"] == 20 and point["stable"]["hit5"] == 0.5
    assert api.get("rollouts/phase2/history").json() == {"rollout": "phase2", "events": []}


def test_errors_are_documents_with_the_declared_status(api: httpx.Client) -> None:
    missing = api.get("rollouts/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_rollout" and "known: phase2, slow" in missing.text
    assert api.get("rollouts/nope/history").status_code == 404
    assert api.post("rollouts/nope/pause", headers=AUTH).status_code == 404
    action = api.post("rollouts/phase2/explode", headers=AUTH)
    assert action.status_code == 404 and action.json()["message"] == (
        "unknown action 'explode' (known: start, advance, pause, resume, rollback, abort)"
    )
    bad = api.post("rollouts/phase2/advance", headers=AUTH, json={"to": 250})
    assert bad.status_code == 400 and bad.json()["message"].startswith("to: ")
    extra = api.post("rollouts/phase2/pause", headers=AUTH, json={"reason": "x"})
    assert extra.status_code == 400 and extra.json()["message"] == "pause takes no body"
    junk = api.post("rollouts/phase2/rollback", headers=AUTH, content=b"{not json")
    assert junk.status_code == 400 and "must be JSON" in junk.json()["message"]


def test_actions_need_the_token_and_move_the_rollout(api: httpx.Client) -> None:
    none = api.post("rollouts/slow/start")
    assert none.status_code == 401 and none.headers["www-authenticate"] == "Bearer"
    wrong = api.post("rollouts/slow/start", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["message"] == "wrong token"
    assert api.get("rollouts/slow").json()["phase"] == "Pending"  # nothing moved

    started = api.post("rollouts/slow/start", headers=AUTH)
    assert started.status_code == 200, started.text
    assert started.json()["rollout"]["phase"] == "Progressing"
    moved = api.post("rollouts/slow/advance", headers=AUTH, json={"to": 50, "force": True})
    assert moved.json()["rollout"]["weight"] == 50
    again = api.post("rollouts/slow/resume", headers=AUTH)
    assert again.status_code == 409
    assert again.json() == {"error": "refused", "message": "cannot resume slow: it is Progressing"}
    back = api.post("rollouts/slow/rollback", headers=AUTH, json={"reason": "[lane 3] p95 spike"})
    assert back.json()["rollout"]["reason"] == "[lane 3] p95 spike"
    events = api.get("rollouts/slow/history").json()["events"]
    assert [(e["action"], e["weight"]) for e in events] == [
        ("start", 0), ("advance", 50), ("rollback", 0),
    ]  # fmt: skip
    assert {e["identity"] for e in events} == {"admin page (127.0.0.1)"}


def test_without_a_token_the_server_is_read_only(redis_url: str, tmp_path: Path) -> None:
    with admin_gateway(redis_url, tmp_path, token=None) as gw:
        page = httpx.get(gw.url)
        assert (
            page.status_code == 200 and "Read-only: this server has no actions token" in page.text
        )
        refused = httpx.post(f"{gw.url}api/v1/rollouts/phase2/start", headers=AUTH)
        assert refused.status_code == 403 and refused.json()["error"] == "read_only"
        assert httpx.get(f"{gw.url}api/v1/rollouts/phase2").json()["phase"] == "Pending"


def _serve(redis_url: str, policy: Path, *flags: str, env: dict[str, str]) -> str:
    """A serve that must fail at start-up: its stderr."""
    done = subprocess.run(
        [str(BIN / "lvm-gateway"), "serve", "--config", str(policy), "--redis", redis_url,
         "--port", str(free_port()), *flags],
        capture_output=True, text=True, timeout=30,
        env={**{k: v for k, v in os.environ.items() if k != TOKEN_ENV}, **env},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    return done.stderr.strip()


def test_a_weak_token_or_a_taken_port_fails_at_start_up(redis_url: str, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "p.yaml", "admweak")
    weak = _serve(redis_url, policy, "--admin-port", str(free_port()),
                  "--admin-token-env", TOKEN_ENV, env={TOKEN_ENV: "short"})  # fmt: skip
    assert weak == (
        f"lvm-gateway: ${TOKEN_ENV} holds 5 characters; an admin token needs at least 16 "
        "(e.g. `openssl rand -hex 24`)"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _serve(redis_url, policy, "--admin-port", str(port), env={})
    assert busy == f"lvm-gateway: admin port 127.0.0.1:{port}: Address already in use"


# -- schemathesis: every operation against its OpenAPI document --------------------------------


def test_the_api_conforms_to_its_openapi_document(gateway: AdminGateway) -> None:
    """Generated requests, valid and invalid, on made-up and on the real rollouts' names; every
    answer is checked against the document (status, content type, schema) and is never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{gateway.url}api/v1/openapi.json")
    cases = st.one_of(
        schema.as_strategy(),
        schema.as_strategy(GenerationMode.NEGATIVE),
        *(schema.as_strategy(path_parameters={"name": n}) for n in ("phase2", "slow")),
    )
    seen: set[tuple[str, int]] = set()

    @given(case=cases)
    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(headers=AUTH)
        seen.add((case.operation.label, response.status_code))

    check()
    statuses = {status for _, status in seen}
    assert {200, 400, 404, 409} <= statuses, sorted(seen)


def test_redis_lost_is_a_503_document_and_the_page_recovers(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis_server("--port", str(port), "--bind", "127.0.0.1", cwd=tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_redis(url)
        with admin_gateway(url, tmp_path) as gw:
            server.kill()
            server.wait(5)
            lost = httpx.get(f"{gw.url}api/v1/rollouts", timeout=10)
            assert lost.status_code == 503 and lost.json()["error"] == "redis_unavailable"
            partial = httpx.get(f"{gw.url}partials/rollouts", timeout=10)
            assert partial.status_code == 503 and partial.text.startswith("Redis is unreachable")
            server = start_redis_server("--port", str(port), "--bind", "127.0.0.1", cwd=tmp_path)
            wait_redis(url)
            # An empty Redis: the gateway re-registers its rollouts on its next reload only,
            # so the page answers with what is there (nothing) instead of an error.
            back = httpx.get(f"{gw.url}api/v1/rollouts", timeout=10)
            assert back.status_code == 200 and back.json() == {"rollouts": []}
    finally:
        server.kill()
        server.wait(5)


def test_with_workers_one_admin_server_runs_beside_them(redis_url: str, tmp_path: Path) -> None:
    """The admin server lives in the supervising process: N workers, one status page, and a
    clean stop of all of it."""
    policy = write_policy(tmp_path / "p.yaml", "admworkers")
    port, admin_port = free_port(), free_port()
    proc = start(
        ["lvm-gateway", "serve", "--config", str(policy), "--port", str(port),
         "--redis", redis_url, "--workers", "2", "--admin-port", str(admin_port)],
        health_url=f"http://127.0.0.1:{port}/readyz", log=tmp_path / "serve.log",
    )  # fmt: skip
    try:
        listed = httpx.get(f"http://127.0.0.1:{admin_port}/api/v1/rollouts", timeout=10)
        assert [r["name"] for r in listed.json()["rollouts"]] == ["phase2", "slow"]
    finally:
        stop(proc)
    assert proc.returncode == 0
    log = (tmp_path / "serve.log").read_text()
    assert log.count("status page on http://127.0.0.1:") == 1
    assert log.count("Started server process") == 3  # two workers and the admin server


def serve_with_page(
    redis_url: str, tmp_path: Path, rollout: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A single-worker `lvm-gateway serve --admin-port`; the process and the page's port."""
    policy = write_policy(tmp_path / "p.yaml", rollout)
    port, admin_port = free_port(), free_port()
    proc = start(
        ["lvm-gateway", "serve", "--config", str(policy), "--port", str(port),
         "--redis", redis_url, "--admin-port", str(admin_port)],
        health_url=f"http://127.0.0.1:{port}/readyz", log=tmp_path / "serve.log",
    )  # fmt: skip
    return proc, admin_port


def page_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children()
    return [c for c in children if "lvm_gateway.admin.server" in " ".join(c.cmdline())]


def test_the_page_runs_in_its_own_process_and_dies_with_the_gateway(
    redis_url: str, tmp_path: Path
) -> None:
    """Rendering the page must not hold the data plane's GIL; a SIGKILLed gateway must not leave
    the page running without it."""
    proc, admin_port = serve_with_page(redis_url, tmp_path, "admproc")
    try:
        page = page_processes(proc)
        assert len(page) == 1, page
        assert redis_url not in " ".join(page[0].cmdline())  # a password never in `ps`
        listed = httpx.get(f"http://127.0.0.1:{admin_port}/api/v1/rollouts", timeout=10)
        assert listed.status_code == 200
        proc.kill()
        proc.wait(5)
        page[0].wait(5)  # psutil.TimeoutExpired if it outlived its gateway
    finally:
        stop(proc)


def test_a_page_process_that_dies_is_started_again_on_the_same_port(
    redis_url: str, tmp_path: Path
) -> None:
    proc, admin_port = serve_with_page(redis_url, tmp_path, "admrestart")
    url = f"http://127.0.0.1:{admin_port}/api/v1/rollouts"
    try:
        (first,) = page_processes(proc)
        first.kill()
        first.wait(5)
        # Asked while no process serves it: the connection waits in the socket's backlog.
        assert httpx.get(url, timeout=20).status_code == 200
        (second,) = page_processes(proc)
        assert second.pid != first.pid
        log = (tmp_path / "serve.log").read_text()
        assert "the status page's process exited (code -9); starting it again in 1 s" in log
        # A page asked to stop (as a stop of the whole process group asks it) stays stopped.
        second.terminate()
        second.wait(5)
        time.sleep(1.5)  # past the first restart's wait
        assert page_processes(proc) == []
    finally:
        stop(proc)

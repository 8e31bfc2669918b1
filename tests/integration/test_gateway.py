"""The gateway as a real process in front of real lvm-serve processes, with a real Redis."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from lvm_gateway.procs import free_port
from tests.integration.gateway_env import Gateway, gateway, infer_body, model_server, model_servers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    specs = {
        "phase1": ["phase1", "--latency-ms", "0"],
        "phase2": ["phase2", "--latency-ms", "0"],
        "slow": ["stub", "--latency-ms", "300"],
        "broken": ["stub", "--error-rate", "1"],
        "mirror": ["stub"],
    }
    with model_servers(specs, tmp_path_factory.mktemp("servers")) as urls:
        yield urls


def config(
    servers: dict[str, str],
    policy: str,
    routes_extra: str = "",
    timeouts: dict[str, int] | None = None,
) -> str:
    variants = "\n".join(
        f'  {name}: {{url: "{url}", timeout_ms: {(timeouts or {}).get(name, 150)}}}'
        for name, url in servers.items()
    )
    return f"variants:\n{variants}\nroutes:\n  - path: /infer\n    policy: {policy}\n{routes_extra}"


MIRROR_TO_SLOW = (
    "{canary: {stable: phase1, canary: phase2, weight: 0, mirror: {variant: slow, percent: 100}}}"
)
CANARY = "{canary: {stable: phase1, canary: phase2, weight: WEIGHT, sticky: {header: X-User-Id}}}"


@pytest.fixture
def canary_gw(servers: dict[str, str], redis_url: str, tmp_path: Path) -> Iterator[Gateway]:
    with gateway(config(servers, CANARY.replace("WEIGHT", "30")), redis_url, tmp_path) as gw:
        yield gw


def test_split_stickiness_and_headers(canary_gw: Gateway) -> None:
    served: dict[str, str] = {}
    for i in range(300):
        r = canary_gw.infer({"X-User-Id": f"user-{i}"})
        assert r.status_code == 200, r.text
        assert r.headers["x-variant"] in ("phase1", "phase2")
        assert r.json()["model_type"] == r.headers["x-variant"]  # really served by that variant
        assert len(r.headers["x-request-id"]) >= 16
        served[f"user-{i}"] = r.headers["x-variant"]
    share = sum(v == "phase2" for v in served.values()) / len(served)
    assert 0.2 < share < 0.4, share  # 30% +- 5 sigma for 300 users
    for user in list(served)[:50]:
        assert canary_gw.infer({"X-User-Id": user}).headers["x-variant"] == served[user]
    r = canary_gw.infer({"X-Request-Id": "client-chosen-id-123"})
    assert r.headers["x-request-id"] == "client-chosen-id-123"


def test_bad_requests_are_4xx_with_a_message(canary_gw: Gateway) -> None:
    r = canary_gw.http.get("/infer")
    assert r.status_code == 405 and "use POST" in r.json()["message"]
    r = canary_gw.http.post("/nope", content=b"{}")
    assert r.status_code == 404 and r.json()["routes"] == ["/infer"]
    # The model server's own 400 for a malformed body passes through unchanged.
    r = canary_gw.infer({"X-User-Id": "u"}, body=b'{"context_vectors": [[1, 2]]}')
    assert r.status_code == 400 and "768" in r.text


def test_metrics_pass_promtool(canary_gw: Gateway) -> None:
    for i in range(20):
        canary_gw.infer({"X-User-Id": f"m{i}"})
    text = canary_gw.http.get("/metrics").text
    assert canary_gw.metric("lvmgw_requests_total", route="/infer", status="200") == 20
    assert "lvmgw_request_duration_seconds_bucket" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus)")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_header_override_only_where_configured(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = "{header: {header: X-Variant, default: " + CANARY.replace("WEIGHT", "0") + "}}"
    with gateway(config(servers, policy), redis_url, tmp_path) as gw:
        assert gw.infer({"X-Variant": "phase2"}).headers["x-variant"] == "phase2"
        r = gw.infer({"X-Variant": "phase9"})
        assert r.status_code == 400
        assert r.json()["message"] == (
            "X-Variant: 'phase9' is not a variant of this route; allowed: phase1, phase2"
        )


def test_timeout_is_504_and_connection_refused_is_502(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    routes = "  - path: /dead\n    policy: nobody\n"
    text = config({**servers, "nobody": dead}, "slow", routes)
    with gateway(text, redis_url, tmp_path) as gw:
        t0 = time.monotonic()
        r = gw.infer()
        assert r.status_code == 504, r.text
        assert time.monotonic() - t0 < 0.29  # the 150 ms deadline, not the 300 ms upstream
        assert r.json()["error"] == "timeout" and r.json()["variant"] == "slow"
        r = gw.infer(path="/dead")
        assert r.status_code == 502 and r.json()["error"] == "connect"
        assert r.headers["x-variant"] == "nobody"


def test_several_endpoints_survive_a_dead_one(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    text = (
        f'variants:\n  pool: {{urls: ["{dead}", "{servers["phase1"]}"], timeout_ms: 500}}\n'
        "routes:\n  - path: /infer\n    policy: pool\n"
    )
    with gateway(text, redis_url, tmp_path) as gw:
        for _ in range(10):
            r = gw.infer()
            assert r.status_code == 200 and r.json()["model_type"] == "phase1"


def test_broken_canary_falls_back_and_its_circuit_opens(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = "{canary: {stable: phase1, canary: broken, weight: 100}}"
    with gateway(config(servers, policy), redis_url, tmp_path) as gw:
        for _ in range(30):
            r = gw.infer()
            assert r.status_code == 200  # every client still gets an answer, from stable
            assert r.headers["x-variant"] == "phase1"
        assert gw.metric("lvmgw_circuit_state", variant="broken") == 1
        # 10 errors opened the circuit; the other requests never reached the broken canary.
        assert gw.metric("lvmgw_upstream_errors_total", variant="broken", kind="status") == 10
        assert gw.metric("lvmgw_fallbacks_total", from_variant="broken", to_variant="phase1") == 10


def test_mirror_never_delays_the_client(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = MIRROR_TO_SLOW
    with gateway(config(servers, policy), redis_url, tmp_path) as gw:
        for _ in range(5):
            t0 = time.monotonic()
            r = gw.infer()
            assert r.status_code == 200 and r.headers["x-variant"] == "phase1"
            assert time.monotonic() - t0 < 0.25  # the mirror target takes 300 ms
        # The slow mirror times out (150 ms) rather than answering: counted as failed, not sent.
        gw.wait_until(lambda: gw.metric("lvmgw_mirror_requests_total", variant="slow") == 5)
        assert gw.metric("lvmgw_mirror_requests_total", variant="slow", outcome="failed") == 5


def test_mirror_drops_when_saturated(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    policy = MIRROR_TO_SLOW
    text = config(servers, policy) + "mirror_max_inflight: 2\n"
    with gateway(text, redis_url, tmp_path) as gw:
        for _ in range(6):
            assert gw.infer().status_code == 200
        assert gw.metric("lvmgw_mirror_requests_total", variant="slow", outcome="dropped") >= 3


def test_hot_reload_good_and_bad_edits(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with gateway(config(servers, CANARY.replace("WEIGHT", "0")), redis_url, tmp_path) as gw:
        assert gw.infer({"X-User-Id": "u1"}).headers["x-variant"] == "phase1"
        gw.config.write_text(config(servers, CANARY.replace("WEIGHT", "100")))
        took = gw.wait_until(lambda: gw.infer({"X-User-Id": "u1"}).headers["x-variant"] == "phase2")
        assert took < 1.0
        assert gw.metric("lvmgw_config_reloads_total", result="success") == 2
        gw.config.write_text(config(servers, CANARY.replace("WEIGHT", "250")))
        gw.wait_until(lambda: gw.metric("lvmgw_config_reloads_total", result="failure") == 1)
        assert gw.infer({"X-User-Id": "u1"}).headers["x-variant"] == "phase2"
        assert "routes[0].policy.canary.weight" in gw.log.read_text()


def test_hot_reload_keeps_in_flight_requests(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    text = config(servers, "slow", timeouts={"slow": 2000})
    with gateway(text, redis_url, tmp_path) as gw, httpx.Client(base_url=gw.url) as other:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(
                    other.post("/infer", content=infer_body(), timeout=5).status_code
                )
            )
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(0.1)
        gw.config.write_text(config(servers, "phase2"))
        for t in threads:
            t.join()
        assert results == [200] * 4
        gw.wait_until(lambda: gw.infer().headers["x-variant"] == "phase2")


def test_hot_reload_survives_any_bad_edit_and_says_the_config_is_stale(
    servers: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    with gateway(config(servers, CANARY.replace("WEIGHT", "0")), redis_url, tmp_path) as gw:
        assert gw.http.get("/readyz").json()["config_stale"] is False
        # A byte that is not UTF-8 used to end the watcher task: every later edit was ignored.
        gw.config.write_bytes(b'variants:\n  phase1: {url: "http://127.0.0.1:1"}\n# \xff\xfe\n')
        gw.wait_until(lambda: gw.metric("lvmgw_config_reloads_total", result="failure") == 1)
        ready = gw.http.get("/readyz").json()
        assert ready["status"] == "degraded" and ready["config_stale"] is True
        assert any("config stale" in r for r in ready["reasons"])
        assert gw.metric("lvmgw_config_stale") == 1
        assert gw.infer({"X-User-Id": "u1"}).headers["x-variant"] == "phase1"
        # The watcher is still alive: the next good edit applies.
        gw.config.write_text(config(servers, CANARY.replace("WEIGHT", "100")))
        gw.wait_until(lambda: gw.infer({"X-User-Id": "u1"}).headers["x-variant"] == "phase2")
        assert gw.metric("lvmgw_config_stale") == 0
        assert gw.http.get("/readyz").json()["config_stale"] is False


def test_parallel_large_bodies_stay_within_the_buffer_budget(
    redis_url: str, tmp_path: Path
) -> None:

    mib = 2**20
    with model_server("stub") as stub:
        text = (
            f'variants:\n  stub: {{url: "{stub}", timeout_ms: 20000}}\n'
            "routes:\n  - path: /infer\n    inspect: false\n    policy: stub\n"
            f"limits: {{buffered_body_bytes: {128 * mib}, feedback_body_bytes: 1024}}\n"
        )
        with gateway(text, redis_url, tmp_path) as gw:
            proc = psutil.Process(gw.proc.pid)
            baseline = proc.memory_info().rss
            peak = [baseline]
            done = threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak.append(proc.memory_info().rss)
                    time.sleep(0.01)

            body = b"x" * (60 * mib)
            statuses: list[int] = []

            def post() -> None:
                with httpx.Client(base_url=gw.url, timeout=60) as c:
                    statuses.append(c.post("/infer", content=body).status_code)

            sampler = threading.Thread(target=sample)
            sampler.start()
            workers = [threading.Thread(target=post) for _ in range(6)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            done.set()
            sampler.join()
            grew = (max(peak) - baseline) / mib
            print(f"6 x 60 MiB bodies: {sorted(statuses)}, RSS +{grew:.0f} MiB")
            assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses
            assert grew < 400, grew  # unbounded: ~1 GiB
            # A feedback post is small: a large one is refused before it is parsed.
            r = gw.http.post("/v1/feedback", content=b"{" + b" " * 4096 + b"}")
            assert r.status_code == 413

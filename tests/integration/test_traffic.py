"""`lvm-traffic` against real `lvm-serve` processes (and through the real gateway)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

from lvm_gateway.errors import TrafficError
from lvm_gateway.lvm import traffic
from lvm_gateway.lvm.traffic import TrafficConfig, TrafficReport, run_traffic
from lvm_gateway.procs import BIN, free_port
from tests.integration.gateway_env import gateway, model_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def phase2() -> Iterator[str]:
    with model_server("phase2") as url:
        yield url


def drive(url: str, **kw: object) -> tuple[TrafficReport, list[float]]:
    ticks: list[float] = []
    cfg = TrafficConfig(gateway=url, **{"rps": 100, "duration": 3.0, "users": 20, **kw})
    report = asyncio.run(run_traffic(cfg, lambda r: ticks.append(r.elapsed_s)))
    return report, ticks


def test_replays_users_at_the_target_rate_and_scores_answers_locally(phase2):
    report, ticks = drive(phase2)
    # No X-Variant from a bare model server: everything is counted as "unknown".
    assert set(report.variants) == {"unknown"}
    stats = report.variants["unknown"]
    assert report.issued + report.dropped == 300
    assert stats.requests == report.issued and stats.ok == stats.requests
    assert stats.scored == stats.ok
    assert 0.45 <= stats.hit_rate(5) <= 0.85
    assert stats.hit_rate(1) <= stats.hit_rate(5) <= stats.hit_rate(10)
    assert stats.percentile(50) <= stats.percentile(95) <= stats.percentile(99)
    assert len(ticks) >= 3 and ticks == sorted(ticks)
    assert report.achieved_rps > 50


def test_id_mode_scores_against_the_returned_neighbours(phase2):
    report, _ = drive(phase2, feedback_mode="id", duration=2.0, lane=4)
    stats = report.variants["unknown"]
    assert stats.scored == stats.ok > 0
    assert 0.4 <= stats.hit_rate(5) <= 0.85


def test_errors_are_counted_by_status_and_nan_answers_as_bad():
    with model_server("phase1", "--error-rate", "0.4", "--nan-rate", "0.3") as url:
        report, _ = drive(url, duration=2.0)
    stats = report.variants["unknown"]
    assert stats.errors["500"] > 0 and stats.errors["bad answer"] > 0 and stats.ok > 0
    assert stats.ok + stats.errors.total() == stats.requests
    assert stats.scored == stats.ok


def test_a_gateway_that_is_down_is_a_clear_error():
    cfg = TrafficConfig(gateway=f"http://127.0.0.1:{free_port()}", duration=1)
    with pytest.raises(TrafficError, match="cannot reach the gateway"):
        asyncio.run(run_traffic(cfg))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"duration": 0}, "duration must be > 0"),
        ({"rps": 0}, "rps must be > 0"),
        ({"users": 0}, "users must be >= 1"),
        ({"context": 0}, "context must be >= 1"),
        ({"feedback_rate": 1.5}, "feedback rate"),
        ({"feedback_delay_s": -1}, "feedback delay"),
        ({"lane": 16}, "lane must be in 0..15"),
        ({"gateway": "localhost:8080"}, "http(s) URL"),
        ({"path": "infer"}, "path must start with '/'"),
    ],
)
def test_bad_settings_are_rejected(kw, message):
    with pytest.raises(TrafficError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrafficConfig(**{"gateway": "http://127.0.0.1:1", **kw})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lvm-traffic"), *args], capture_output=True, text=True, timeout=60
    )


def test_cli_prints_a_summary(phase2):
    ok = run_cli("--gateway", phase2, "--rps", "50", "--duration", "1", "--users", "5")
    assert ok.returncode == 0, ok.stderr
    assert "variant" in ok.stdout and "unknown" in ok.stdout and "achieved" in ok.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--duration", "0"], 2, "duration must be > 0"),
        (["--feedback-rate", "2"], 2, "feedback rate must be in [0, 1]"),
        (["--duration", "1"], 1, "cannot reach the gateway"),
    ],
)
def test_cli_explains_failures_in_one_line(args, code, message, capsys):
    with pytest.raises(SystemExit) as exc:
        traffic.main(["--gateway", f"http://127.0.0.1:{free_port()}", *args])
    assert exc.value.code == code
    assert message in capsys.readouterr().err


def test_through_the_gateway_requests_are_counted_per_variant(redis_url, tmp_path):
    with model_server("phase1") as p1, model_server("phase2") as p2:
        config = f"""
variants:
  phase1: {{url: "{p1}", timeout_ms: 2000}}
  phase2: {{url: "{p2}", timeout_ms: 2000}}
routes:
  - path: /infer
    policy:
      canary: {{stable: phase1, canary: phase2, weight: 50, sticky: {{header: X-User-Id}}}}
feedback: {{sample_rate: 1.0}}
"""
        with gateway(config, redis_url, tmp_path) as gw:
            report, _ = drive(gw.url, users=40, feedback_rate=1.0)
    assert set(report.variants) == {"phase1", "phase2"}
    for stats in report.variants.values():
        assert stats.ok == stats.requests > 20
        # Every answer was recorded and carried a feedback token, so each got a feedback attempt.
        assert stats.feedback_sent + stats.feedback_failed.total() == stats.ok

"""`rolloutctl simulate`: the real reconcile on simulated traffic (demo-scale steps, few runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lvm_gateway.config.load import load_config
from lvm_gateway.rollout import cli
from lvm_gateway.rollout.simulate import Traffic, simulate, with_step_seconds

POLICY = Path(__file__).resolve().parents[2] / "deploy" / "policies" / "lvm.yaml"
SPEC = load_config(POLICY).rollouts["phase2"]  # [shadow, 10, 20, 50, 100], 30 s steps


def test_a_good_canary_is_promoted_through_every_step() -> None:
    result = simulate(SPEC, Traffic(), runs=60, seed=3)
    s = result.summary()
    assert s["runs"] == 60 and s["rolled_back"] == 0
    assert s["promoted"] >= 58
    # Five 30 s steps at least; users saw the canary from the 10% step on.
    assert s["median_decision_seconds"] >= 150
    assert s["median_exposed_requests"] > 0.1 * 100 * 30


def test_a_bad_canary_is_rolled_back_in_the_shadow_step_before_any_user_sees_it() -> None:
    result = simulate(SPEC, Traffic(canary_hit5=0.50), runs=40, seed=4)
    assert result.count("rolled_back") == 40
    assert result.by_step("rolled_back") == {0: 40}
    assert result.summary()["median_exposed_requests"] == 0


def test_thin_traffic_pauses_and_is_never_promoted() -> None:
    result = simulate(SPEC, Traffic(rps=0.2), runs=20, seed=5)
    assert result.count("promoted") == 0 and result.count("paused") >= 19
    assert all("insufficient traffic" in r.reason for r in result.runs if r.outcome == "paused")


def test_same_seed_same_result_and_feedback_delay_slows_the_decision() -> None:
    a = simulate(SPEC, Traffic(), runs=10, seed=9)
    assert a == simulate(SPEC, Traffic(), runs=10, seed=9)
    late = simulate(SPEC, Traffic(feedback_delay_s=60), runs=10, seed=9)
    slower = late.median("decision_seconds")
    assert slower is not None and slower > (a.median("decision_seconds") or 0)


def test_with_step_seconds_scales_the_hold_and_the_cadence() -> None:
    hourly = with_step_seconds(SPEC, 3600)
    assert (hourly.step_min_seconds, hourly.max_hold_seconds, hourly.interval_seconds) == (
        3600, 7200, 60,
    )  # fmt: skip
    assert with_step_seconds(SPEC, 30).interval_seconds == SPEC.interval_seconds


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lane_hit5": {"lane_99": 0.2}}, "unknown lane"),
        ({"lane_shares": (1.0,)}, "16 non-negative"),
        ({"canary_hit5": 1.5}, "canary Hit@5 must be in"),
        ({"rps": -1.0}, "rps must be in"),
    ],
)
def test_bad_traffic_is_refused_with_a_reason(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Traffic(**kwargs)  # type: ignore[arg-type]


def test_cli_json_prints_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--config", str(POLICY), "--rollout", "phase2", "--runs", "4",
            "--seed", "1", "--json", "--canary-error-rate", "0.05"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert list(doc) == [
        "runs", "promoted", "rolled_back", "paused", "median_decision_seconds",
        "median_exposed_requests",
    ]  # fmt: skip
    assert (doc["runs"], doc["rolled_back"]) == (4, 4)
    assert "runs decided" in out.err  # progress on stderr


def test_cli_table_and_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["simulate", "--config", str(POLICY), "--rollout", "phase2", "--runs", "3", "--quiet"]
    assert cli.main([*base, "--lane-hit5", "3=0.2", "--lane-shares", ",".join(["1"] * 16)]) == 0
    assert "promoted" in capsys.readouterr().out
    assert cli.main([*base, "--lane-hit5", "lane_3"]) == 2
    assert "expects LANE=VALUE" in capsys.readouterr().err
    assert cli.main(["simulate", "--config", str(POLICY), "--rollout", "nope"]) == 2
    assert "no rollout 'nope'" in capsys.readouterr().err

"""Rollout YAML: steps, generic bounds, and the error paths `lvm-gateway validate` prints."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lvm_gateway.config.load import parse_config
from lvm_gateway.contract.rollout import RolloutSpec
from lvm_gateway.errors import ConfigError

DOC = {
    "variants": {"a": {"url": "http://127.0.0.1:1"}, "b": {"url": "http://127.0.0.1:2"}},
    "routes": [{"path": "/infer", "policy": {"canary": {"stable": "a", "canary": "b"}}}],
}


def errors_for(rollout: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config({**DOC, "rollouts": {"lvm": {"route": "/infer", **rollout}}})
    return exc.value.errors


def test_step_errors_carry_their_path() -> None:
    assert errors_for({"steps": [10, 20, 20, 100]}) == ["rollouts.lvm.steps[2]: must be > 20"]
    assert "rollouts.lvm.steps[1]: 'shadow' may only be the first step" in errors_for(
        {"steps": [10, "shadow", 100]}
    )


def test_unknown_threshold_key_is_an_error() -> None:
    assert errors_for({"success": {"p99_ms_max": 3}}) == [
        "rollouts.lvm.success.p99_ms_max: unknown key (did you mean 'p95_ms_max'?)"
    ]


def test_rollback_must_be_looser_than_success() -> None:
    (msg,) = errors_for({"rollback": {"p95_ms_max": 4}})
    assert "rollback.p95_ms_max (4) must be >= success.p95_ms_max (5)" in msg
    (msg,) = errors_for({"success": {"hit5_min": 0.5}, "rollback": {"hit5_min": 0.55}})
    assert "rollback.hit5_min (0.55) must be <= success.hit5_min (0.5)" in msg


def test_bounds_and_tunables() -> None:
    spec = RolloutSpec.model_validate({"route": "/x", "steps": ["shadow", 50, 100]})
    assert [m for m, _, _ in spec.rollback.bounds()] == [
        "p95_ms", "error_rate", "hit5", "empty_rate", "lane_delta", "invalid_rate",
    ]  # fmt: skip
    assert [spec.step_weight(i) for i in range(3)] == [0.0, 50.0, 100.0]
    tunables = spec.tunables()
    assert "steps" not in tunables
    assert tunables["success"] == {  # the LVM plan's success criteria
        "p95_ms_max": 5.0, "error_rate_max": 0.001, "hit5_min": 0.6, "empty_rate_max": 0.1,
        "lane_delta_max": 0.15, "invalid_rate_max": 0.0,
    }  # fmt: skip
    # A mapping in the YAML replaces the defaults as a whole: only what it lists is judged.
    latency = RolloutSpec.model_validate({"route": "/x", "success": {"p95_ms_max": 9}})
    assert list(latency.success.bounds()) == [("p95_ms", "max", 9.0)]
    with pytest.raises(ValidationError):
        RolloutSpec.model_validate({"route": "/x", "shadow_percent": 101})

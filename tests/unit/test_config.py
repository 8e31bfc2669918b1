"""Config validation against tests/data/valid-*.yaml and invalid-*.yaml.

Each invalid file lists the errors it must produce in `# expect:` comments; every one must be
reported (with its path), which is what `lvm-gateway validate` prints.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lvm_gateway.config.load import json_schema, load_config
from lvm_gateway.errors import ConfigError
from lvm_gateway.policies.canary import Canary
from lvm_gateway.serve import main as gateway_main

DATA = Path(__file__).parent.parent / "data"
EXAMPLE = Path(__file__).parents[2] / "deploy" / "policies" / "lvm.yaml"


@pytest.mark.parametrize("path", sorted(DATA.glob("valid-*.yaml")), ids=lambda p: p.name)
def test_valid_files_load(path: Path) -> None:
    config = load_config(path)
    assert config.routes
    for route in config.routes.values():
        assert route.policy.leaves() <= set(config.variants)


@pytest.mark.parametrize("path", sorted(DATA.glob("invalid-*.yaml")), ids=lambda p: p.name)
def test_invalid_files_report_every_expected_error(path: Path) -> None:
    expected = [
        line.removeprefix("# expect:").strip()
        for line in path.read_text().splitlines()
        if line.startswith("# expect:")
    ]
    assert expected, f"{path.name} declares no expected error"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for want in expected:
        assert any(e.startswith(want) for e in info.value.errors), (want, info.value.errors)


def test_example_policy_is_valid() -> None:
    config = load_config(EXAMPLE)
    route = config.routes["/infer"]
    assert (route.rollout, route.stable, route.canary) == ("phase2", "phase1", "phase2")


def test_validate_cli_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["validate", str(DATA / "valid-minimal.yaml")]) == 0
    assert gateway_main(["validate", str(DATA / "invalid-steps.yaml")]) == 2
    assert "rollouts.lvm.steps[2]: must be > 20" in capsys.readouterr().err


def test_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(DATA / "does-not-exist.yaml")


def test_config_objects_are_immutable() -> None:
    config = load_config(DATA / "valid-minimal.yaml")
    policy = config.routes["/infer"].policy
    assert isinstance(policy, Canary)
    with pytest.raises(AttributeError):
        policy.weight = 50  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.routes["/x"] = config.routes["/infer"]  # type: ignore[index]


def test_json_schema_lists_every_policy() -> None:
    schema = json_schema()
    names = {next(iter(o["properties"])) for o in schema["$defs"]["PolicyNode"]["oneOf"][1:]}
    assert {"canary", "header", "context_length"} <= names
    assert schema["$defs"]["RouteSpec"]["properties"]["policy"] == {"$ref": "#/$defs/PolicyNode"}

"""The house rules, read from the imports: the planes meet only at the one wiring point.

gateway/   data plane             never imports rollout/ or lvm/
rollout/   control plane          never imports gateway/ or lvm/
policies/  routing policies       import neither plane nor lvm/
config/    the policy document    imports neither plane nor lvm/
contract/  the shared ground      imports nothing of the project but errors, and no I/O
lvm/       reference servers      import neither plane, policies nor config
admin/     the status page        reads the control plane; never imports gateway/ or lvm/
serve.py   the wiring point       the one module that imports both planes
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lvm_gateway"

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "gateway": ("lvm_gateway.rollout", "lvm_gateway.lvm", "lvm_gateway.admin"),
    "rollout": ("lvm_gateway.gateway", "lvm_gateway.lvm", "lvm_gateway.admin"),
    "policies": (
        "lvm_gateway.gateway",
        "lvm_gateway.rollout",
        "lvm_gateway.lvm",
        "lvm_gateway.admin",
    ),
    "config": (
        "lvm_gateway.gateway",
        "lvm_gateway.rollout",
        "lvm_gateway.lvm",
        "lvm_gateway.admin",
    ),
    "lvm": (
        "lvm_gateway.gateway",
        "lvm_gateway.rollout",
        "lvm_gateway.policies",
        "lvm_gateway.config",
        "lvm_gateway.admin",
    ),
    "admin": ("lvm_gateway.gateway", "lvm_gateway.lvm"),
}
# The contract is the ground floor: pure types and rules, no I/O libraries.
CONTRACT_ALLOWED_PROJECT = ("lvm_gateway.contract", "lvm_gateway.errors")
CONTRACT_FORBIDDEN_LIBS = ("redis", "aiohttp", "httpx", "httptools", "uvicorn", "torch", "socket")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-local imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def files_of(subpackage: str) -> list[Path]:
    return sorted((PACKAGE / subpackage).rglob("*.py"))


def offending(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imports_of(path) if m.startswith(prefixes))


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_a_part_never_imports_what_it_must_not(subpackage: str) -> None:
    assert files_of(subpackage), f"no files under {subpackage}/"
    bad = {
        str(p.relative_to(PACKAGE)): offending(p, FORBIDDEN[subpackage])
        for p in files_of(subpackage)
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_contract_is_the_ground_floor() -> None:
    for path in files_of("contract"):
        project = {m for m in imports_of(path) if m.startswith("lvm_gateway")}
        assert all(m.startswith(CONTRACT_ALLOWED_PROJECT) for m in project), (path, project)
        libs = {m.split(".")[0] for m in imports_of(path)}
        assert not libs & set(CONTRACT_FORBIDDEN_LIBS), (path, libs)


def test_only_the_serve_cli_wires_the_two_planes_together() -> None:
    both = []
    for path in PACKAGE.rglob("*.py"):
        mods = imports_of(path)
        if any(m.startswith("lvm_gateway.gateway") for m in mods) and any(
            m.startswith("lvm_gateway.rollout") for m in mods
        ):
            both.append(str(path.relative_to(PACKAGE)))
    assert both == ["serve.py"]


def test_the_rule_test_would_catch_a_violation(tmp_path: Path) -> None:
    """The checker itself: a data-plane file importing the control plane is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lvm_gateway.rollout.store import RolloutStore\n")
    assert offending(bad, FORBIDDEN["gateway"]) == [
        "lvm_gateway.rollout.store",
        "lvm_gateway.rollout.store.RolloutStore",
    ]

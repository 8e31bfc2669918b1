"""The compiled request path (lvm_gateway/native.py): used when current, bypassed whole when a
source changed after the build or LVM_GATEWAY_PURE=1, never half used."""

from __future__ import annotations

import importlib.machinery
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lvm_gateway import native

EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _origins(env: dict[str, str]) -> dict[str, str]:
    """Where each compiled module is loaded from in a fresh interpreter."""
    code = (
        "import importlib, json; from lvm_gateway import native; "
        "print(json.dumps({m: importlib.import_module(m).__file__ for m in native.MODULES}))"
    )
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.fixture
def compiled() -> None:
    if native.status() != "compiled (mypyc)":
        # `make test` builds first (make native), so there it must be compiled.
        assert "MAKELEVEL" not in os.environ, native.status()
        pytest.skip(f"request path not compiled here: {native.status()}")


def test_a_current_build_is_what_runs(compiled: None) -> None:
    origins = _origins({native.PURE_ENV: "0"})
    assert all(path.endswith(EXTENSIONS) for path in origins.values()), origins


def test_pure_runs_every_module_from_its_source() -> None:
    origins = _origins({native.PURE_ENV: "1"})
    assert sorted(origins) == sorted(native.MODULES)
    assert all(path.endswith(".py") for path in origins.values()), origins


def test_a_stale_build_is_bypassed_whole_and_says_which_file(
    compiled: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = json.loads(native._STAMP.read_text())
    built["lvm_gateway.gateway.dispatch"] = "0" * 64  # as if dispatch.py changed after the build
    stamp = tmp_path / "_native.json"
    stamp.write_text(json.dumps(built))
    monkeypatch.setattr(native, "_STAMP", stamp)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    assert "stale: lvm_gateway/gateway/dispatch.py changed since" in native.status()

    with pytest.warns(RuntimeWarning, match=r"stale \(lvm_gateway/gateway/dispatch.py"):
        native.guard()
    finder = sys.meta_path[0]
    for module in native.MODULES:  # all of them, the unchanged ones too
        spec = finder.find_spec(module, None)
        assert spec is not None and spec.origin is not None and spec.origin.endswith(".py")
    assert finder.find_spec("lvm_gateway.gateway.bodies", None) is None


def test_a_failed_build_leaves_no_record_so_nothing_compiled_is_used(
    compiled: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "_STAMP", tmp_path / "_native.json")  # build() unlinks it first
    assert native.status().startswith("pure Python (compiled build is stale: _native.json")

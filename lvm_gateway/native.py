"""The request path compiled to C with mypyc, and never a stale build.

`make` compiles the modules below (`make native`: `main(["build"])`, 1-3 min) before test, demo
and bench: the same source, its type hints turned into C types, runs the app's Python per request
in ~0.7 of the time in-process (bench/app_path.py) and a worker's request in ~0.8 of the CPU
(README, "The compiled request path"). The extensions sit beside their sources, and Python
imports an extension before a source of the same name, so a source edited after the build would
silently run its old compiled code. The build records each source's digest; at import, when one
differs, all the compiled modules load from source instead (all: compiled modules call each
other directly in C, so one module's source beside the others' old code would mix versions) and
a warning names the file. LVM_GATEWAY_PURE=1 loads them from source too (to compare, or debug).

This module itself is never compiled: the package's __init__ runs `guard()` before any of them.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# What a request runs through, from the HTTP bytes to the answer's inspection, its record and
# the rollout windows it counts in. Not here: bodies (its generator-based waits) and the
# policies with pydantic models in the module (a compiled pydantic class fails at import:
# `Field()` defaults; the canary's are in canary_spec for this reason). A compiled class's
# methods cannot be replaced: in-process stand-ins go through seams (transport.MockTransport).
MODULES = (
    "lvm_gateway.contract.lvm",
    "lvm_gateway.contract.windows",
    "lvm_gateway.gateway.app",
    "lvm_gateway.gateway.circuit",
    "lvm_gateway.gateway.deadline",
    "lvm_gateway.gateway.dispatch",
    "lvm_gateway.gateway.h1pool",
    "lvm_gateway.gateway.headers",
    "lvm_gateway.gateway.ids",
    "lvm_gateway.gateway.metrics",
    "lvm_gateway.gateway.records",
    "lvm_gateway.gateway.server",
    "lvm_gateway.gateway.signals",
    "lvm_gateway.gateway.translate",
    "lvm_gateway.gateway.transport",
    "lvm_gateway.gateway.upstream",
    "lvm_gateway.policies.base",
    "lvm_gateway.policies.canary",
    "lvm_gateway.rollout.agent.recorder",
)
# The shared library of the compiled group, named inside the package so that it is importable
# wherever the package is (mypyc names it "<group>__mypyc").
GROUP = "lvm_gateway._native"
PURE_ENV = "LVM_GATEWAY_PURE"

_ROOT = Path(__file__).resolve().parent.parent
_STAMP = Path(__file__).with_name("_native.json")


def _source(module: str) -> Path:
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _digests() -> dict[str, str]:
    return {m: hashlib.sha256(_source(m).read_bytes()).hexdigest() for m in MODULES}


def _compiled(module: str) -> bool:
    source = _source(module)
    return any(
        source.with_suffix(suffix).exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def status() -> str:
    """Whether the request path runs compiled, and if not, why (for logs and `--version`)."""
    if not any(_compiled(m) for m in MODULES):
        return "pure Python (not compiled: make native)"
    if os.environ.get(PURE_ENV) == "1":
        return f"pure Python ({PURE_ENV}=1)"
    stale = _stale()
    if stale:
        return f"pure Python (compiled build is stale: {stale}; make native rebuilds it)"
    return "compiled (mypyc)"


def _stale() -> str:
    """What makes the compiled build unusable, or '' when it is current."""
    try:
        built = json.loads(_STAMP.read_text())
    except (OSError, ValueError):
        return f"{_STAMP.name} is missing or unreadable"
    for module, digest in _digests().items():
        if built.get(module) != digest or not _compiled(module):
            return f"{_source(module).relative_to(_ROOT)} changed since"
    return ""


class _FromSource(importlib.abc.MetaPathFinder):
    """Loads the compiled modules from their .py files, ahead of the extensions beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, _source(fullname))


def guard() -> None:
    """Run at the package's import: a stale or disabled build is bypassed, never half used."""
    if not any(_compiled(m) for m in MODULES):
        return
    if os.environ.get(PURE_ENV) == "1":
        sys.meta_path.insert(0, _FromSource())
        return
    stale = _stale()
    if stale:
        warnings.warn(
            f"lvm_gateway: the compiled request path is stale ({stale}); running it as "
            "Python, slower per request. `make native` rebuilds it.",
            RuntimeWarning,
            stacklevel=2,
        )
        sys.meta_path.insert(0, _FromSource())


def build() -> None:
    """Compile MODULES in place with mypyc, then record their digests (a failed build leaves
    no record, so nothing stale is used). Needs the `native` extra (mypy) and a C compiler."""
    from mypyc.build import mypycify  # the build's own dependency, not the runtime's
    from setuptools import setup

    _STAMP.unlink(missing_ok=True)
    # Every extension in the package is this build's: all go, those of modules no longer listed
    # too. Unlinked, not overwritten: a running gateway keeps its mapped copy.
    for path in _STAMP.parent.rglob("*.so"):
        path.unlink()
    digests = _digests()
    here = Path.cwd()
    os.chdir(_ROOT)  # mypyc names modules by their paths from here
    try:
        setup(
            name="lvm-gateway-native",
            ext_modules=mypycify(
                [str(_source(m).relative_to(_ROOT)) for m in MODULES],
                group_name=GROUP,
                target_dir="build/native",
            ),
            script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/native"],
        )
    finally:
        os.chdir(here)
    _STAMP.write_text(json.dumps(digests, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["build"]:
        print(f"compiling {len(MODULES)} modules with mypyc (1-3 min on 2 cores)", flush=True)
        started = time.monotonic()
        build()
        print(f"compiled {len(MODULES)} modules in {time.monotonic() - started:.0f} s")
    elif args == ["status"] or not args:
        print(status())
    else:
        raise SystemExit('usage: main(["build"]) or main(["status"])')

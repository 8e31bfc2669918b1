"""Scenario 1: the policy file is broken and repaired over and over while requests flow."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from lvm_gateway.serve import validate
from tests.chaos.kit import SCALE, Load, Scenario
from tests.integration.gateway_env import Gateway, gateway

pytestmark = pytest.mark.integration


def policy(urls: dict[str, str], prefix: str, weight: int, canary: str = "phase2") -> bytes:
    return (
        f"redis_prefix: {prefix}\n"
        "variants:\n"
        f'  phase1: {{url: "{urls["phase1"]}", timeout_ms: 3000}}\n'
        f'  phase2: {{url: "{urls["phase2"]}", timeout_ms: 3000}}\n'
        "routes:\n"
        "  - path: /infer\n"
        "    policy:\n"
        "      canary:\n"
        "        stable: phase1\n"
        f"        canary: {canary}\n"
        f"        weight: {weight}\n"
        "        sticky: {header: X-User-Id}\n"
    ).encode()


# Each broken variant of a good file. Every one would route somewhere wrong or nowhere if it
# were applied: the duplicate key, were the first definition dropped, sends phase1's traffic to
# a dead port; the unknown variant has no URL at all.
BROKEN: dict[str, Callable[[bytes], bytes]] = {
    "syntax error": lambda good: good.replace(b"variants:\n", b"variants: {\n", 1),
    "duplicate key": lambda good: good.replace(
        b"variants:\n", b'variants:\n  phase1: {url: "http://127.0.0.1:9"}\n', 1
    ),
    "non-UTF-8 byte": lambda good: good + b"# caf\xe9\n",
    "unknown variant": lambda good: good.replace(b"canary: phase2", b"canary: phase3"),
    "truncated mid-write": lambda good: good[: len(good) // 2],
}


def replace(path: Path, data: bytes) -> None:
    """Write as editors and ConfigMaps do: a whole new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_in_place(path: Path, data: bytes, mode: str) -> None:
    with open(path, mode) as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


SUCCESS, FAILURE = 0, 1


def reloads(gw: Gateway) -> tuple[float, float]:
    return (
        gw.metric("lvmgw_config_reloads_total", result="success"),
        gw.metric("lvmgw_config_reloads_total", result="failure"),
    )


def test_broken_yaml_edits_under_load(
    scenario: Scenario, stubs: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """1. Broken YAML edits under load."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    good = policy(stubs, prefix, 0)
    for kind, breaks in BROKEN.items():  # the loader itself refuses every broken variant
        probe = tmp_path / "probe.yaml"
        probe.write_bytes(breaks(good))
        scenario.check(f"validate refuses the {kind}", bool(validate(str(probe))))

    with (
        gateway(good.decode(), redis_url, tmp_path) as gw,
        scenario.track(Load([gw.url])) as load,
    ):
        weight = 0
        expected = [1.0, 0.0]  # the start-up load counts as one successful reload

        def served_probe() -> str:
            return str(gw.infer({"X-User-Id": "probe"}).headers["x-variant"])

        def edit(write: Callable[[], None], outcome: int) -> None:
            """Apply one edit; wait until the watcher counted it, then check it counted right."""
            before = sum(reloads(gw))
            write()
            gw.wait_until(lambda: sum(reloads(gw)) > before, 15)
            expected[outcome] += 1
            got = reloads(gw)
            scenario.check("reload counters", list(got) == expected, f"{got} != {expected}")

        for i in range(SCALE.broken_edits):
            kind = list(BROKEN)[i % len(BROKEN)]
            was = served_probe()
            current = policy(stubs, prefix, weight)
            weight = 100 - weight
            repaired = policy(stubs, prefix, weight)
            if kind == "truncated mid-write":
                # Written in place in two halves, the watcher polling in between: it reads the
                # half-written file first, then the whole new one.
                half = len(repaired) // 2
                edit(partial(write_in_place, gw.config, repaired[:half], "wb"), FAILURE)
                finish = partial(write_in_place, gw.config, repaired[half:], "ab")
            else:
                edit(partial(replace, gw.config, BROKEN[kind](current)), FAILURE)
                finish = partial(replace, gw.config, repaired)
            scenario.check(f"{kind}: the last good config serves", served_probe() == was)
            scenario.check(f"{kind}: flagged stale", gw.metric("lvmgw_config_stale") == 1)
            edit(finish, SUCCESS)
            target = "phase2" if weight == 100 else "phase1"
            gw.wait_until(lambda t=target: served_probe() == t, 5)
            scenario.check("good edit applied, fresh again", gw.metric("lvmgw_config_stale") == 0)

    scenario.note(
        f"{SCALE.broken_edits} broken + {SCALE.broken_edits} good edits; reloads_total "
        f"success {expected[SUCCESS]:g} (1 at start) / failure {expected[FAILURE]:g}, as applied"
    )
    scenario.check("no failed request", load.failed == 0, load.errors)
    scenario.check("both variants served", set(load.variants) == {"phase1", "phase2"})

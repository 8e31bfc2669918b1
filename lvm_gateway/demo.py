"""`make demo`: the whole story, unattended, on the embedded default.

Embedded Redis, reference model servers, the gateway with its controller, and lvm-traffic as many
users with feedback. Act 1 shows a static 90/10 sticky split. Act 2 adds a rollout to the policy
file (hot-reloaded): phase2 is measured in a shadow step with zero user exposure, then walked
10 -> 20 -> 50 -> 100 -> Promoted on its latency, error and Hit@5-proxy gates. Act 3 names phase2
stable and rolls out a variant 150 ms slower: rolled back on latency. Act 4 rolls out a variant
whose lane 3 is degraded while its overall Hit@5 looks fine: rolled back on the lane gate. The
rollouts' histories are printed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table

from lvm_gateway.lvm.traffic import TrafficConfig, TrafficReport, render, run_traffic
from lvm_gateway.redisconn import ensure_embedded, home_dir
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.cli import status_table
from lvm_gateway.rollout.store import RolloutStore, open_client

console = Console()
BIN = Path(sys.executable).parent
PREFIX = "demo"
TERMINAL = ("Promoted", "RolledBack", "Paused")


@dataclass
class Stack:
    servers: dict[str, str]
    gateway: str
    config: Path
    procs: list[subprocess.Popen[bytes]]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{' '.join(map(str, proc.args))} exited:\n{log.read_text()[-2000:]}")  # type: ignore[arg-type]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout_s}s; see {log}")


def _spawn(args: list[str], health: str, log: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], stdout=out, stderr=subprocess.STDOUT
        )
    procs.append(proc)
    _wait(health, proc, log)


def policy(servers: dict[str, str], stable: str, canary: str, rollout: str | None) -> str:
    variants = "\n".join(
        f'  {name}: {{url: "{url}", timeout_ms: 500}}' for name, url in servers.items()
    )
    text = f"""# Written by `make demo` (lvm_gateway/demo.py); edited live between acts.
variants:
{variants}
routes:
  - path: /infer
    policy:
      canary: {{stable: {stable}, canary: {canary}, weight: 10, sticky: {{header: X-User-Id}}}}
feedback: {{ttl_seconds: 120, sample_rate: 1.0}}
redis_prefix: {PREFIX}
"""
    if rollout:
        # Demo scale: seconds per step instead of hours. Quality gates are the seed's; latency
        # bounds leave room for a 2-core machine running four model servers, the gateway and the
        # load generator at once (the seed's 5/10 ms are GPU-server numbers).
        text += f"""rollouts:
  {rollout}:
    route: /infer
    steps: [shadow, 10, 20, 50, 100]
    step_min_seconds: 6
    interval_seconds: 1
    min_requests: 40
    min_feedback: 60
    failure_limit: 2
    max_hold_seconds: 60
    success:  {{p95_ms_max: 50, error_rate_max: 0.01, hit5_min: 0.60, empty_rate_max: 0.10,
               lane_delta_max: 0.15, invalid_rate_max: 0}}
    rollback: {{p95_ms_max: 100, error_rate_max: 0.05, hit5_min: 0.55, empty_rate_max: 0.20,
               lane_delta_max: 0.20, invalid_rate_max: 0.01}}
"""
    return text


@contextlib.contextmanager
def stack(workdir: Path, redis_url: str) -> Iterator[Stack]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        servers: dict[str, str] = {}
        for name, args in {
            "phase1": ["--profile", "phase1"],
            "phase2": ["--profile", "phase2"],
            "slow": ["--profile", "phase2", "--latency-ms", "150"],
            "lane3bad": ["--profile", "phase2", "--degrade-lane", "3"],
        }.items():
            port = _free_port()
            servers[name] = f"http://127.0.0.1:{port}"
            _spawn(["lvm-serve", *args, "--port", str(port)], f"{servers[name]}/health",
                   workdir / f"{name}.log", procs)  # fmt: skip
            console.print(f"  model server [bold]{name}[/] on {servers[name]} ({' '.join(args)})")
        config = workdir / "policy.yaml"
        config.write_text(policy(servers, "phase1", "phase2", None))
        port = _free_port()
        gateway = f"http://127.0.0.1:{port}"
        _spawn(["lvm-gateway", "serve", "--config", str(config), "--port", str(port),
                "--redis", redis_url, "--log-level", "warning"],
               f"{gateway}/readyz", workdir / "gateway.log", procs)  # fmt: skip
        console.print(f"  gateway on {gateway}, policy {config}, Redis {redis_url}")
        yield Stack(servers, gateway, config, procs)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


def traffic(gateway: str, duration: float) -> TrafficConfig:
    # 32 context vectors, the length the profiles are calibrated at (~59% / ~66% Hit@5), and
    # feedback on every answer so the quality gates get their samples within seconds.
    return TrafficConfig(gateway=gateway, rps=40, duration=duration, users=400,
                         feedback_rate=1.0, concurrency=32)  # fmt: skip


async def act_split(st: Stack) -> None:
    console.print(Rule("Act 1: a static sticky canary split, 90% phase1 / 10% phase2"))
    cfg = traffic(st.gateway, 12)
    with Live(console=console, refresh_per_second=4) as live:
        report = await run_traffic(cfg, lambda r: live.update(render(r, cfg)))
        live.update(render(report, cfg))
    share = report.variant("phase2").requests / max(1, report.total().requests)
    console.print(
        f"  phase2 served {100 * share:.1f}% of requests (weight 10, sticky by X-User-Id)"
    )


async def act_rollout(
    st: Stack,
    store: RolloutStore,
    name: str,
    stable: str,
    canary: str,
    title: str,
    timeout_s: float,
) -> str:
    console.print(Rule(title))
    st.config.write_text(policy(st.servers, stable, canary, name))
    console.print(f"  edited {st.config.name}: rollout {name!r} ({stable} -> {canary}); "
                  "the gateway hot-reloads it")  # fmt: skip
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the gateway registers the rollout on reload
        with contextlib.suppress(Exception):
            await store.registered(name)
            break
        await asyncio.sleep(0.2)
    status = await ops.start(store, name, identity="make demo")
    console.print(f"  $ rolloutctl start {name}  -> {status.phase}, step {status.step}")
    cfg = traffic(st.gateway, timeout_s)
    latest: list[TrafficReport] = []
    task = asyncio.create_task(run_traffic(cfg, latest.append))
    phase = status.phase
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while not task.done():
                doc = await ops.describe(store, name)
                phase = doc["phase"]
                parts = [status_table(doc, lanes=True)]
                if latest:
                    parts.append(render(latest[-1], cfg))
                live.update(Panel(Group(*parts), title=title))
                if phase in TERMINAL:
                    break
                await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return str(phase)


def history_table(name: str, events: list[dict[str, object]]) -> Table:
    table = Table(title=f"rolloutctl history {name}")
    for col in ("at", "actor", "phase", "step", "weight", "reason"):
        table.add_column(col)
    for e in events:
        table.add_row(*(str(e.get(c, "")) for c in ("at", "actor", "phase", "step", "weight",
                                                      "reason")))  # fmt: skip
    return table


async def main_async() -> int:
    t0 = time.monotonic()
    home = home_dir()
    workdir = home / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(Rule("lvm-gateway demo"))
    redis_url = os.environ.get("REDIS_URL") or ensure_embedded(home)
    client = open_client(redis_url)
    async for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
        await client.delete(key)  # a fresh story every run
    store = RolloutStore(client, PREFIX)
    outcome = {}
    with stack(workdir, redis_url) as st:
        await act_split(st)
        outcome["phase2"] = await act_rollout(
            st, store, "phase2", "phase1", "phase2",
            "Act 2: roll phase2 out: shadow -> 10 -> 20 -> 50 -> 100, gated on its metrics", 120,
        )  # fmt: skip
        outcome["slow"] = await act_rollout(
            st, store, "slow", "phase2", "slow",
            "Act 3: phase2 is stable now; roll out a variant 150 ms slower", 60,
        )  # fmt: skip
        outcome["lane3bad"] = await act_rollout(
            st, store, "lane3bad", "phase2", "lane3bad",
            "Act 4: roll out a variant whose lane 3 is degraded (overall Hit@5 still fine)", 90,
        )  # fmt: skip
        console.print(Rule("What happened"))
        for name in outcome:
            console.print(history_table(name, await store.history(name)))
    await client.aclose()
    ok = outcome == {"phase2": "Promoted", "slow": "RolledBack", "lane3bad": "RolledBack"}
    summary = ", ".join(f"{name}: {phase}" for name, phase in outcome.items())
    console.print(
        f"[bold {'green' if ok else 'red'}]{summary}[/] in {time.monotonic() - t0:.0f}s. "
        f"Logs and the policy file: {workdir}"
    )
    return 0 if ok else 1


def main() -> None:
    sys.exit(asyncio.run(main_async()))


if __name__ == "__main__":
    main()

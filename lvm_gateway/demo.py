"""`make demo` and `make demo-tmd`: the whole story, unattended, on the embedded default.

Embedded Redis, reference model servers, the gateway with its controller, and lvm-traffic as many
users with feedback, speaking the Open Inference Protocol with binary tensors (KServe v2).

`make demo`: act 1 shows a static 90/10 sticky split. Act 2 adds a rollout to the policy file
(hot-reloaded): phase2 is measured in a shadow step with zero user exposure, then walked
10 -> 20 -> 50 -> 100 -> Promoted on its latency (the LVM plan's p95 5 ms), error and
Hit@5-proxy gates. Act 3 names phase2 stable and rolls out a variant 150 ms slower: rolled back on
latency. Act 4 rolls out a variant whose lane 15 is degraded while its overall Hit@5 looks fine:
rolled back on the lane gate.

`make demo-tmd` (`--tmd`): 16 lane experts (each phase2-grade on its own lane, degraded on the
others) behind the TMD mixture policy are rolled out against the phase2 champion and promoted;
then one expert is killed under full traffic and every request is still answered, by the
next-best expert.

The rollouts' histories are printed at the end. The gateway serves the status page on an admin
port (its address and actions token are printed first); `--keep` leaves it all running after.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.text import Text

from lvm_gateway import termout
from lvm_gateway.contract import oip
from lvm_gateway.lvm.traffic import TrafficConfig, TrafficReport, render, run_traffic
from lvm_gateway.procs import free_port, start, stop, wait_http
from lvm_gateway.redisconn import ensure_embedded, home_dir, open_client, pause, redact_url
from lvm_gateway.rollout import ops
from lvm_gateway.rollout.cli import history_lines, status_table, step_text, steps_of
from lvm_gateway.rollout.store import RolloutStore

console = termout.console()
PREFIX = "demo"
PROTOCOL = oip.PROTOCOL
ROUTE = oip.infer_path("lvm")
PLAN_P95_MS = (5.0, 10.0)  # the LVM plan's latency gates: success p95 <= 5 ms, rollback > 10 ms
# The mixture answers after the slower of its two experts, and its story runs 17 model servers on
# this machine's 2 cores: ~15% of its answers took over 5 ms where phase2's took ~2.5% (README).
MIXTURE_P95_MS = (50.0, 100.0)
TERMINAL = ("Promoted", "RolledBack", "Paused")
EXPERTS = [f"e{i}" for i in range(16)]
# The busiest lane of the demo's traffic (seeded: ~8% of requests), so the shadow step collects
# enough feedback on it to judge it before any user is exposed.
DEGRADED_LANE = 15
MIXTURE = "{tmd: {name: moe, experts: [" + ", ".join(EXPERTS) + "], top_k: 2}}"


@dataclass
class Stack:
    servers: dict[str, str]
    gateway: str
    config: Path
    admin: str  # the status page
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def policy(
    servers: dict[str, str],
    stable: str,
    canary: str,
    rollout: str | None,
    p95_ms: tuple[float, float] = PLAN_P95_MS,
) -> str:
    """The demo's policy file; `canary` is a variant name or a policy subtree in YAML flow style;
    `p95_ms` the rollout's (success, rollback) latency bounds."""
    variants = "\n".join(
        f'  {name}: {{url: "{url}", timeout_ms: 500, protocol: {PROTOCOL}}}'
        for name, url in servers.items()
    )
    text = f"""# Written by `make demo` (lvm_gateway/demo.py); edited live between acts.
variants:
{variants}
routes:
  - path: {ROUTE}
    protocol: {PROTOCOL}
    policy:
      canary: {{stable: {stable}, canary: {canary}, weight: 10, sticky: {{header: X-User-Id}}}}
feedback: {{ttl_seconds: 120, sample_rate: 1.0}}
redis_prefix: {PREFIX}
"""
    if rollout:
        # Demo scale: seconds per step instead of hours; the gates are the LVM plan's.
        text += f"""rollouts:
  {rollout}:
    route: {ROUTE}
    steps: [shadow, 10, 20, 50, 100]
    step_min_seconds: 14
    interval_seconds: 1
    min_requests: 40
    min_feedback: 60
    failure_limit: 2
    max_hold_seconds: 60
    success:  {{p95_ms_max: {p95_ms[0]:g}, error_rate_max: 0.01, hit5_min: 0.60,
               empty_rate_max: 0.10, lane_delta_max: 0.15, invalid_rate_max: 0}}
    rollback: {{p95_ms_max: {p95_ms[1]:g}, error_rate_max: 0.05, hit5_min: 0.55,
               empty_rate_max: 0.20, lane_delta_max: 0.20, invalid_rate_max: 0.01}}
"""
    return text


def classic_servers() -> dict[str, list[str]]:
    return {
        "phase1": ["--profile", "phase1"],
        "phase2": ["--profile", "phase2"],
        "slow": ["--profile", "phase2", "--latency-ms", "150"],
        "lane15bad": ["--profile", "phase2", "--degrade-lane", str(DEGRADED_LANE)],
    }


def expert_servers() -> dict[str, list[str]]:
    servers = {"phase2": ["--profile", "phase2"]}
    for lane, name in enumerate(EXPERTS):
        others = [str(x) for other in range(16) if other != lane for x in ("--degrade-lane", other)]
        servers[name] = ["--profile", "phase2", *others]
    return servers


@contextlib.contextmanager
def stack(workdir: Path, redis_url: str, servers_args: dict[str, list[str]],
          first_policy: Callable[[dict[str, str]], str]) -> Iterator[Stack]:  # fmt: skip
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        servers = {name: f"http://127.0.0.1:{free_port()}" for name in servers_args}
        for name, args in servers_args.items():  # all start at once, then each is awaited
            port = servers[name].rsplit(":", 1)[1]
            procs[name] = start(["lvm-serve", *args, "--port", port], log=workdir / f"{name}.log")
        for name, url in servers.items():
            wait_http(f"{url}/health", 60, procs[name])
            args = servers_args[name]
            shown = " ".join(args) if len(args) < 8 else f"{' '.join(args[:2])} (expert)"
            console.print(f"  model server [bold]{name}[/] on {url} ({shown})")
        config = workdir / "policy.yaml"
        config.write_text(first_policy(servers))
        port, admin_port = free_port(), free_port()
        gateway = f"http://127.0.0.1:{port}"
        token = secrets.token_urlsafe(18)  # the page's actions work for whoever ran the demo
        procs["gateway"] = start(
            ["lvm-gateway", "serve", "--config", str(config), "--port", str(port),
             "--redis", redis_url, "--log-level", "warning", "--admin-port", str(admin_port)],
            env={"LVMGW_ADMIN_TOKEN": token},
            health_url=f"{gateway}/readyz", log=workdir / "gateway.log",
        )  # fmt: skip
        admin = f"http://127.0.0.1:{admin_port}/"
        console.print(f"  gateway on {gateway}, policy {config}, Redis {redact_url(redis_url)}")
        console.print(f"  [bold]status page: {admin}[/]  (actions token: {token})", soft_wrap=True)
        yield Stack(servers, gateway, config, admin, procs)
    finally:
        for proc in procs.values():
            stop(proc)


def traffic(gateway: str, duration: float) -> TrafficConfig:
    # 32 context vectors, the length the profiles are calibrated at (~59% / ~66% Hit@5), and
    # feedback on every answer so the quality gates get their samples within seconds.
    return TrafficConfig(gateway=gateway, rps=40, duration=duration, users=400, path=ROUTE,
                         protocol=PROTOCOL, feedback_rate=1.0, concurrency=32)  # fmt: skip


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
    p95_ms: tuple[float, float] = PLAN_P95_MS,
) -> str:
    """Edit the policy to add rollout `name`, start it, and watch it until it settles."""
    console.print(Rule(title))
    st.config.write_text(policy(st.servers, stable, canary, name, p95_ms))
    console.print(f"  edited {st.config.name}: rollout {name!r}; the gateway hot-reloads it")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the gateway registers the rollout on reload
        with contextlib.suppress(Exception):
            await store.registered(name)
            break
        await pause(0.2)
    status = await ops.start(store, name, identity="make demo")
    steps = await steps_of(store, name)
    console.print(
        f"  $ rolloutctl start {name}  -> {status.phase}, step {step_text(status.step, steps)}"
    )
    cfg = traffic(st.gateway, timeout_s)
    latest: list[TrafficReport] = []
    task = asyncio.create_task(run_traffic(cfg, latest.append))
    phase = status.phase
    try:
        with Live(console=console, refresh_per_second=2) as live:
            while not task.done():
                doc = await ops.describe(store, name)
                phase = doc["phase"]
                # The 4 worst lanes, not 16: the panel must fit a terminal, or Live cuts it off.
                parts = [status_table(doc, lanes=True, lane_limit=4)]
                if latest:
                    parts.append(render(latest[-1], cfg))
                live.update(Panel(Group(*parts), title=title))
                if phase in TERMINAL:
                    break
                await pause(0.5)  # Ctrl-C cancels this task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if latest:
        total = latest[-1].total()
        console.print(f"  {total.requests} requests, {total.ok} answered 2xx while it ran")
    return str(phase)


async def classic_story(st: Stack, store: RolloutStore) -> dict[str, str]:
    await act_split(st)
    return {
        "phase2": await act_rollout(
            st, store, "phase2", "phase1", "phase2",
            "Act 2: roll phase2 out: shadow -> 10 -> 20 -> 50 -> 100, gated on its metrics", 120,
        ),
        "slow": await act_rollout(
            st, store, "slow", "phase2", "slow",
            "Act 3: phase2 is stable now; roll out a variant 150 ms slower", 60,
        ),
        "lane15bad": await act_rollout(
            st, store, "lane15bad", "phase2", "lane15bad",
            f"Act 4: roll out a variant whose lane {DEGRADED_LANE} is degraded "
            "(overall Hit@5 still fine)", 90,
        ),
    }  # fmt: skip


async def tmd_story(st: Stack, store: RolloutStore) -> dict[str, str]:
    outcome = {
        "moe": await act_rollout(
            st, store, "moe", "phase2", MIXTURE,
            "The TMD mixture of 16 lane experts vs the phase2 champion", 150, MIXTURE_P95_MS,
        ),
    }  # fmt: skip
    console.print(Rule("Kill expert e3 (lane 3's first choice) under full traffic"))
    st.procs["e3"].kill()
    cfg = traffic(st.gateway, 10)
    with Live(console=console, refresh_per_second=4) as live:
        report = await run_traffic(cfg, lambda r: live.update(render(r, cfg)))
        live.update(render(report, cfg))
    total = report.total()
    masked = _metric(st.gateway, "lvmgw_expert_masked_total", 'expert="e3"')
    errors = _metric(st.gateway, "lvmgw_expert_calls_total", 'expert="e3",outcome="error"')
    console.print(
        f"  {total.ok}/{total.requests} requests answered 2xx; e3 failed {errors:.0f} calls, then"
        f" its open circuit masked it {masked:.0f} times and lane 3 went to the next-best expert"
    )
    outcome["e3 killed"] = "all answered" if total.ok == total.requests else "errors"
    return outcome


def _metric(gateway: str, name: str, labels: str) -> float:
    text = httpx.get(f"{gateway}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and labels in line
    )


async def main_async(tmd: bool, keep: bool = False) -> int:
    t0 = time.monotonic()
    home = home_dir()
    workdir = home / ("demo-tmd" if tmd else "demo")
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(Rule("lvm-gateway demo" + (": the TMD mixture" if tmd else "")))
    redis_url = os.environ.get("REDIS_URL") or ensure_embedded(home)
    client = open_client(redis_url)
    async for key in client.scan_iter(match=f"{PREFIX}:*", count=1000):
        await client.delete(key)  # a fresh story every run
    store = RolloutStore(client, PREFIX)
    if tmd:
        servers, first = expert_servers(), lambda s: policy(s, "phase2", MIXTURE, None)
        expected = {"moe": "Promoted", "e3 killed": "all answered"}
    else:
        servers, first = classic_servers(), lambda s: policy(s, "phase1", "phase2", None)
        expected = {"phase2": "Promoted", "slow": "RolledBack", "lane15bad": "RolledBack"}
    with stack(workdir, redis_url, servers, first) as st:
        outcome = await (tmd_story(st, store) if tmd else classic_story(st, store))
        console.print(Rule("What happened"))
        for name in await store.names():
            steps = await steps_of(store, name)
            console.print(Text(f"rolloutctl history {name}", "bold"))
            console.print(
                history_lines(await store.history(name), steps, wide=console.width >= 160)
            )
        if keep:
            console.print(f"  [bold]status page still up: {st.admin}[/]  (Ctrl-C to stop)")
            with contextlib.suppress(asyncio.CancelledError):  # Ctrl-C cancels the main task
                await asyncio.Event().wait()
    await client.aclose()
    ok = outcome == expected
    summary = ", ".join(f"{name}: {phase}" for name, phase in outcome.items())
    console.print(
        f"[bold {'green' if ok else 'red'}]{summary}[/] in {time.monotonic() - t0:.0f}s. "
        f"Logs and the policy file: {workdir}"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> None:
    parser = termout.parser("python -m lvm_gateway.demo", __doc__)
    parser.add_argument("--tmd", action="store_true", help="the TMD mixture story")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after the story, keep everything running (the status page stays up) until Ctrl-C",
    )
    args = parser.parse_args(argv)
    sys.exit(asyncio.run(main_async(args.tmd, args.keep)))


if __name__ == "__main__":
    main()

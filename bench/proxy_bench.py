"""`make bench`: the gateway's proxy overhead against direct-to-upstream and nginx, with wrk.

Every target forwards to the same fast upstream on loopback, gets the same POSTs from many users
(`X-User-Id`) and is measured at 1 and 32 connections; the table ends with the issue's goals:
the gateway (1 worker) serves >= 10% of nginx's req/s at 32 connections and adds <= 0.3 ms to
p50 over direct at 1 connection. To add a row, write a function `(Bench) -> base URL` that
starts what it needs through `bench` and append a `Target` to `TARGETS`.

    python -m bench.proxy_bench [--duration S] [--rounds N] [--quick] [--upstream nginx|stub]
                                [--only NAME,NAME]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import redis
import yaml
from rich.console import Console
from rich.table import Table

from bench.harness import (
    REQUEST_BODY,
    Harness,
    Load,
    conditions,
    conditions_line,
    report_console,
    run_wrk,
    stop_on_signals,
)
from lvm_gateway import native
from lvm_gateway.config.load import parse_config
from lvm_gateway.policies.base import RequestInfo, RoutingView
from lvm_gateway.procs import free_port
from lvm_gateway.redisconn import start_redis_server

RESULTS = Path(__file__).parent / "results"
CONNECTIONS = (1, 32)
CANARY_WEIGHT = 10
MIN_RPS_VS_NGINX = 0.10  # at 32 connections, gateway with one worker
# Issue 12's small-body targets for "gateway 1w" (the default configuration) at 32 connections.
SMALL_MIN_RPS_VS_NGINX = 0.25
SMALL_MAX_CPU_US = 100.0
MAX_P50_ADDED_MS = 0.3  # at 1 connection, over direct-to-upstream
SPLIT_PROBES = 400  # distinct users sent once each before a run, to check the 90/10 split

Kind = Literal["direct", "reference", "candidate"]


@dataclass
class Bench:
    """What a target's start function may use: shared upstreams, Redis, and helpers."""

    harness: Harness
    upstream: str  # which fast upstream the proxies forward to: a key of `upstreams`
    upstreams: dict[str, str] = field(default_factory=dict)  # name -> base URL
    _redis_url: str | None = None

    @property
    def upstream_url(self) -> str:
        return self.upstreams[self.upstream]

    @property
    def redis_url(self) -> str:
        """A redis-server for the whole run, started on first use."""
        if self._redis_url is None:
            port = free_port()
            workdir = self.harness.workdir / "redis"
            proc = start_redis_server("--port", str(port), "--bind", "127.0.0.1", cwd=workdir)
            self.harness.keep(proc)
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while True:
                try:
                    with redis.Redis.from_url(url) as client:
                        client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            self._redis_url = url
        return self._redis_url

    def gateway(
        self,
        name: str,
        config: dict[str, Any],
        workers: int = 1,
        server: str = "uvicorn",
        env: dict[str, str] | None = None,
    ) -> str:
        """Start `lvm-gateway serve` (no rollout controller) with `config`; its base URL."""
        path = self.harness.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        args = ["lvm-gateway", "serve", "--config", str(path), "--host", "127.0.0.1"]
        args += ["--port", str(port), "--redis", self.redis_url, "--workers", str(workers)]
        args += ["--no-controller", "--log-level", "warning", "--server", server]
        self.harness.spawn(name, args, f"http://127.0.0.1:{port}/readyz", env)
        return f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Target:
    name: str
    kind: Kind  # direct: the baseline for p50; reference: nginx; candidate: judged by the goals
    start: Callable[[Bench], str]
    upstream: str | None = None  # for direct rows: which upstream this is


# -- upstreams ---------------------------------------------------------------------------------


def start_upstreams(bench: Bench) -> None:
    """Both fast upstream candidates, serving the same bytes: lvm-serve's stub and nginx."""
    h = bench.harness
    port = free_port()
    h.spawn("lvm-serve-stub", ["lvm-serve", "--profile", "stub", "--port", str(port)],
            f"http://127.0.0.1:{port}/health")  # fmt: skip
    bench.upstreams["stub"] = f"http://127.0.0.1:{port}"
    body = httpx.post(f"http://127.0.0.1:{port}/infer", content=REQUEST_BODY).content.decode()
    # The body goes into nginx.conf verbatim: one config token, at most 4 KB, no quote/variable.
    if len(body) > 4000 or any(c in body for c in "'\\$"):
        raise SystemExit("bench: the stub's response no longer fits an nginx `return` literal")
    port = free_port()
    h.nginx("nginx-200", port, f"""
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location = /infer {{ default_type application/json; return 200 '{body}'; }}
    }}""")  # fmt: skip
    bench.upstreams["nginx"] = f"http://127.0.0.1:{port}"


def direct(name: str) -> Callable[[Bench], str]:
    return lambda bench: bench.upstreams[name]


# -- reference proxy ---------------------------------------------------------------------------


def nginx_proxy(workers: int | str) -> Callable[[Bench], str]:
    """nginx with the gateway's policy: sticky 90/10 by X-User-Id (random without it)."""

    def start(bench: Bench) -> str:
        port = free_port()
        up = bench.upstream_url.removeprefix("http://")
        bench.harness.nginx(f"nginx-proxy-{workers}", port, f"""
    upstream stable {{ server {up}; keepalive 64; keepalive_requests 10000000; }}
    upstream canary {{ server {up}; keepalive 64; keepalive_requests 10000000; }}
    map $http_x_user_id $split_key {{ "" $request_id; default $http_x_user_id; }}
    split_clients "$split_key" $variant {{ {CANARY_WEIGHT}% canary; * stable; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        location = /healthz {{ return 200 "ok"; }}
        location = /infer {{
            proxy_pass http://$variant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id;
            add_header X-Variant $variant;
        }}
    }}""", workers=workers)  # fmt: skip
        return f"http://127.0.0.1:{port}"

    return start


# -- the gateway -------------------------------------------------------------------------------


def canary_config(bench: Bench) -> dict[str, Any]:
    """Two variants on the fast upstream, a sticky 10% canary on /infer, no rollouts."""
    variant = {"url": bench.upstream_url, "timeout_ms": 1000}
    policy = {
        "canary": {
            "stable": "stable",
            "canary": "canary",
            "weight": CANARY_WEIGHT,
            "sticky": {"header": "X-User-Id"},
        }
    }
    return {
        "variants": {"stable": variant, "canary": dict(variant)},
        "routes": [{"path": "/infer", "policy": policy}],
    }


def gateway_canary(workers: int, server: str = "uvicorn") -> Callable[[Bench], str]:
    return lambda bench: bench.gateway(
        f"gateway-{workers}w-{server}", canary_config(bench), workers, server
    )


def gateway_pure(bench: Bench) -> str:
    """The default configuration with the request path run as Python, not its mypyc build: what
    compiling it wins (lvm_gateway/native.py)."""
    return bench.gateway("gateway-1w-pure", canary_config(bench), env={native.PURE_ENV: "1"})


def records_config(bench: Bench, rate: float) -> dict[str, Any]:
    """`canary_config` with `rate` of the inspected answers kept for feedback (default 0.1)."""
    config = canary_config(bench)
    config["feedback"] = {"sample_rate": rate}
    return config


def no_inspect_config(bench: Bench) -> dict[str, Any]:
    """`canary_config` with `inspect: false`: routing, metrics and proxying only, no quality
    signals."""
    config = canary_config(bench)
    config["routes"][0]["inspect"] = False
    return config


def gateway_records(rate: float) -> Callable[[Bench], str]:
    """Answers inspected, `rate` of them kept for feedback: what records cost."""
    return lambda bench: bench.gateway(f"gateway-1w-records-{rate:g}", records_config(bench, rate))


def gateway_no_inspect(bench: Bench) -> str:
    return bench.gateway("gateway-1w-no-inspect", no_inspect_config(bench))


def gateway_mixture(bench: Bench) -> str:
    """The TMD mixture: 16 experts on the fast upstream, top-2 fan-out and fusion per request.
    Requests carry no TMD code, so the gate is uniform and picks e0 and e1."""
    variant = {"url": bench.upstream_url, "timeout_ms": 1000}
    experts = [f"e{i}" for i in range(16)]
    return bench.gateway("gateway-1w-tmd", {
        "variants": {e: dict(variant) for e in experts},
        "routes": [{"path": "/infer", "policy": {"tmd": {"name": "moe", "experts": experts}}}],
    })  # fmt: skip


def gate_cost(repeat: int = 20_000) -> str:
    """The `tmd` policy's decision per request, in-process: cached TMD codes and first sightings."""
    variants = {f"e{i}": {"url": "http://127.0.0.1:9"} for i in range(16)}
    policy = parse_config({
        "variants": variants,
        "routes": [{"path": "/infer", "policy": {"tmd": {"experts": list(variants)}}}],
    }).routes["/infer"].policy  # fmt: skip
    view = RoutingView()
    cached = RequestInfo({"x-tmd-domain": "3", "x-tmd-task": "7", "x-tmd-modifier": "9"}, b"")
    policy.decide(cached, view)
    t0 = time.perf_counter()
    for _ in range(repeat):
        policy.decide(cached, view)
    hot = (time.perf_counter() - t0) / repeat * 1e6
    codes = [(d, t, m) for d in range(16) for t in range(32) for m in range(2)]  # 1,024 new codes
    t0 = time.perf_counter()
    for d, t, m in codes:
        info = RequestInfo({"x-tmd-domain": str(d), "x-tmd-task": str(t),
                            "x-tmd-modifier": str(m)}, b"")  # fmt: skip
        policy.decide(info, view)
    cold = (time.perf_counter() - t0) / len(codes) * 1e6
    return (
        f"TMD gate decision (tmd policy decide(), in-process): {hot:.1f} us per request for a "
        f"cached TMD code, {cold:.1f} us the first time a code is seen (target < 50 us)"
    )


TARGETS = (
    Target("direct nginx-200", "direct", direct("nginx"), upstream="nginx"),
    Target("direct lvm-serve stub", "direct", direct("stub"), upstream="stub"),
    Target("nginx (2 workers)", "reference", nginx_proxy(2)),
    Target("nginx (1 worker)", "reference", nginx_proxy(1)),
    Target("gateway 1w", "candidate", gateway_canary(1)),
    Target("gateway 2w", "candidate", gateway_canary(2)),
    Target("gateway 1w granian", "candidate", gateway_canary(1, "granian")),
    Target("gateway 2w granian", "candidate", gateway_canary(2, "granian")),
    Target("gateway 1w, pure Python", "candidate", gateway_pure),
    Target("gateway 1w, no records", "candidate", gateway_records(0)),
    Target("gateway 1w, every answer recorded", "candidate", gateway_records(1.0)),
    Target("gateway 1w, no inspect", "candidate", gateway_no_inspect),
    Target("gateway 1w, TMD mixture top-2", "candidate", gateway_mixture),
)


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Row:
    target: Target
    url: str
    canary_share: float | None  # share of probe users the target sent to the canary
    pgid: int | None  # the process group serving `url`
    runs: dict[int, list[Load]] = field(default_factory=dict)  # connections -> one per round

    def best(self, connections: int) -> Load | None:
        """The least disturbed run: other work on a shared machine only ever slows a run down."""
        return max(self.runs.get(connections, []), key=lambda ld: ld.rps, default=None)


def probe_split(url: str) -> float | None:
    """Send each of SPLIT_PROBES users once; the canary's share (None: no X-Variant header)."""
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=5.0) as client:
        for i in range(SPLIT_PROBES):
            r = client.post(url, content=REQUEST_BODY, headers={"X-User-Id": f"probe-{i}"})
            if r.status_code != 200:
                raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")
            seen[r.headers.get("x-variant", "")] += 1
    return None if seen[""] else seen["canary"] / SPLIT_PROBES


def start_target(bench: Bench, target: Target) -> Row:
    url = target.start(bench) + "/infer"
    row = Row(target, url, probe_split(url), bench.harness.groups.get(urlsplit(url).netloc))
    # Fill keep-alive pools, caches and the upstream's connections before measuring.
    run_wrk(url, bench.harness.wrk_script, max(CONNECTIONS), 1)
    return row


def measure_round(bench: Bench, rows: list[Row], duration_s: float, progress: Console) -> None:
    """Every target at every connection count once: neighbours in time share the same noise."""
    for row in rows:
        for c in CONNECTIONS:
            progress.print(f"  {row.target.name:<24} c={c:<3} load {os.getloadavg()[0]:.2f}",
                           end="")  # fmt: skip
            load = run_wrk(row.url, bench.harness.wrk_script, c, duration_s, row.pgid)
            progress.print(f"  -> {load.rps:>9,.0f} req/s  p50 {load.p50_ms:.3f} ms  "
                           f"{load.cpu_us_per_req or 0:.0f} us CPU/req")  # fmt: skip
            row.runs.setdefault(c, []).append(load)


# -- report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdicts:
    """Each proxy row's distance from the goals: req/s vs nginx @32, added p50 vs direct @1."""

    reference: str  # the faster nginx configuration at 32 connections
    rps_ratio: dict[str, float]
    p50_added_ms: dict[str, float]


def judge(rows: list[Row], baseline: str) -> Verdicts:
    hi, lo = max(CONNECTIONS), min(CONNECTIONS)
    refs = [(r.best(hi), r.target.name) for r in rows if r.target.kind == "reference"]
    ref_load, ref_name = max(
        ((ld, n) for ld, n in refs if ld), key=lambda x: x[0].rps, default=(None, "")
    )
    base = next((r.best(lo) for r in rows if r.target.name == baseline), None)
    ratios, added = {}, {}
    for r in rows:
        if r.target.kind == "direct":
            continue
        if ref_load and (ld := r.best(hi)):
            ratios[r.target.name] = ld.rps / ref_load.rps
        if base and (ld := r.best(lo)):
            added[r.target.name] = ld.p50_ms - base.p50_ms
    return Verdicts(ref_name, ratios, added)


COLUMNS = (
    *("target", "conns", "req/s", "p50 ms", "p99 ms", "req/s range", "CPU us/req", "canary"),
    *("errors", f"vs nginx @{max(CONNECTIONS)}", f"+p50 @{min(CONNECTIONS)}", "goal"),
)


def cells(rows: list[Row], verdicts: Verdicts) -> list[list[str]]:
    """The table's text, one line per target and connection count."""
    hi, lo = max(CONNECTIONS), min(CONNECTIONS)
    out = []
    for r in rows:
        name = r.target.name
        for i, c in enumerate(CONNECTIONS):
            ld = r.best(c)
            if ld is None:
                continue
            rps = [x.rps for x in r.runs[c]]
            ratio = verdicts.rps_ratio.get(name) if c == hi else None
            added = verdicts.p50_added_ms.get(name) if c == lo else None
            errors = sum(x.errors for x in r.runs[c])
            goal = ""
            if r.target.kind == "candidate" and ratio is not None:
                goal = _verdict(ratio >= MIN_RPS_VS_NGINX, errors)
            elif r.target.kind == "candidate" and added is not None:
                goal = _verdict(added <= MAX_P50_ADDED_MS, errors)
            out.append([
                name if i == 0 else "",
                str(c),
                f"{ld.rps:,.0f}",
                f"{ld.p50_ms:.3f}",
                f"{ld.p99_ms:.3f}",
                f"{min(rps) / 1000:.1f}k-{max(rps) / 1000:.1f}k",
                _median_cpu(r.runs[c]),
                "-" if r.canary_share is None else f"{r.canary_share:.0%}",
                str(errors),
                # Rounded down, so a ratio just under the goal never prints as the goal.
                "" if ratio is None else f"{math.floor(ratio * 1000) / 10:.1f}%",
                "" if added is None else f"{added:+.3f} ms",
                goal,
            ])  # fmt: skip
    return out


def caption(verdicts: Verdicts, baseline: str) -> str:
    return (
        f"Proxies forward to {baseline!r}. Goals for the gateway: req/s >= "
        f"{MIN_RPS_VS_NGINX:.0%} of {verdicts.reference or 'nginx (not run)'} at "
        f"{max(CONNECTIONS)} connections (1 worker); +p50 <= {MAX_P50_ADDED_MS} ms over direct "
        f"at {min(CONNECTIONS)} connection. canary: share of {SPLIT_PROBES} probe users routed "
        f"to the canary (weight {CANARY_WEIGHT}%). CPU us/req: the target's own processes (not "
        "wrk, upstream or Redis), median over runs."
    )


def table(lines: list[list[str]], title: str, note: str) -> Table:
    t = Table(title=title, caption=note)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "target" else "right")
    for i, line in enumerate(lines):
        last = i + 1 == len(lines) or lines[i + 1][0] != ""
        goal = {"PASS": "[green]PASS[/green]", "MISS": "[red]MISS[/red]"}.get(line[-1], line[-1])
        t.add_row(*line[:-1], goal, end_section=last)
    return t


def markdown(lines: list[list[str]], title: str, setup: str, note: str) -> str:
    """The same table for the README."""
    head = f"| {' | '.join(COLUMNS)} |\n|{'---|' * len(COLUMNS)}\n"
    body = "".join(f"| {' | '.join(line)} |\n" for line in lines)
    return f"{title}\n\nConditions: {setup}.\n\n{head}{body}\n{note}\n"


def _cpu(loads: list[Load]) -> float | None:
    cpu = [ld.cpu_us_per_req for ld in loads if ld.cpu_us_per_req is not None]
    return statistics.median(cpu) if cpu else None


def _median_cpu(loads: list[Load]) -> str:
    cpu = _cpu(loads)
    return "-" if cpu is None else f"{cpu:.0f}"


def small_body_goal(rows: list[Row], verdicts: Verdicts) -> str:
    """Issue 12's small-body line: the default gateway's req/s share and CPU per request."""
    hi = max(CONNECTIONS)
    row = next((r for r in rows if r.target.name == "gateway 1w"), None)
    ratio = verdicts.rps_ratio.get("gateway 1w")
    cpu = _cpu(row.runs[hi]) if row else None
    if row is None or ratio is None or cpu is None:
        return "Small-body goal (issue 12): not measured (needs 'gateway 1w' and nginx)"
    errors = sum(x.errors for x in row.runs[hi])
    ok = ratio >= SMALL_MIN_RPS_VS_NGINX and cpu <= SMALL_MAX_CPU_US
    return (
        f"Small-body goal (issue 12): gateway 1w at {hi} connections "
        f"{math.floor(ratio * 1000) / 10:.1f}% of nginx's req/s (>= {SMALL_MIN_RPS_VS_NGINX:.0%}),"
        f" {cpu:.0f} us CPU per request (<= {SMALL_MAX_CPU_US:.0f}): {_verdict(ok, errors)}"
    )


def _verdict(ok: bool, errors: int) -> str:
    if errors:
        return "ERRORS"
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_bench", description=__doc__)
    p.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3, help="runs per cell; the best is reported")
    p.add_argument("--quick", action="store_true", help="one round of 2 s runs (a smoke run)")
    p.add_argument("--upstream", choices=("nginx", "stub"), default="nginx",
                   help="the fast upstream every proxy forwards to")  # fmt: skip
    p.add_argument("--only", help="comma-separated substrings of target names to run")
    args = p.parse_args(argv)
    duration, rounds = (2.0, 1) if args.quick else (args.duration, args.rounds)
    wanted = [s.strip() for s in (args.only or "").split(",") if s.strip()]
    targets = [t for t in TARGETS if not wanted or any(s in t.name for s in wanted)]
    baseline = next(t.name for t in TARGETS if t.kind == "direct" and t.upstream == args.upstream)

    console = report_console()
    cond = conditions()
    setup = f"{conditions_line(cond, rounds, duration)}; proxies forward to {baseline}"
    console.print(f"[bold]conditions[/bold]: {setup}")
    rows: list[Row] = []
    try:
        with (
            stop_on_signals(),
            tempfile.TemporaryDirectory(prefix="lvmgw-bench-") as tmp,
            Harness(Path(tmp)) as harness,
        ):
            bench = Bench(harness, args.upstream)
            start_upstreams(bench)
            # All targets stay up for all rounds: each round compares them under one load.
            rows = [start_target(bench, t) for t in targets]
            for i in range(rounds):
                console.print(f"[bold]round {i + 1}/{rounds}[/bold]")
                measure_round(bench, rows, duration, console)
    except KeyboardInterrupt:
        console.print("\ninterrupted; every server the benchmark started is stopped")
        return 130
    verdicts = judge(rows, baseline)
    lines = cells(rows, verdicts)
    title = f"lvm-gateway proxy benchmark: best of {rounds} wrk runs per cell"
    note = caption(verdicts, baseline)
    note += "\n" + small_body_goal(rows, verdicts)
    note += "\n" + gate_cost()
    console.print(table(lines, title, note))
    table_md = markdown(lines, f"{title} ({time.strftime('%Y-%m-%d %H:%M %Z')})", setup, note)
    save(console, cond, rows, verdicts, baseline, duration, table_md)
    return 0


def save(
    console: Console,
    cond: dict[str, object],
    rows: list[Row],
    verdicts: Verdicts,
    baseline: str,
    duration_s: float,
    table_md: str,
) -> None:
    """Write every run as JSON, the printed output as text and the table as Markdown."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "conditions": cond,
        "duration_s": duration_s,
        "upstream": baseline,
        "reference": verdicts.reference,
        "goals": {
            "min_rps_vs_nginx": MIN_RPS_VS_NGINX,
            "max_p50_added_ms": MAX_P50_ADDED_MS,
            "small_min_rps_vs_nginx": SMALL_MIN_RPS_VS_NGINX,
            "small_max_cpu_us": SMALL_MAX_CPU_US,
        },
        "rows": [
            {
                "target": r.target.name,
                "kind": r.target.kind,
                "canary_share": r.canary_share,
                "runs": {c: [asdict(ld) for ld in loads] for c, loads in r.runs.items()},
                "rps_vs_nginx": verdicts.rps_ratio.get(r.target.name),
                "p50_added_ms": verdicts.p50_added_ms.get(r.target.name),
            }
            for r in rows
        ],
    }
    out = RESULTS / f"proxy-{stamp}.json"
    out.write_text(json.dumps(doc, indent=2))
    (RESULTS / f"proxy-{stamp}.md").write_text(table_md)
    (RESULTS / f"proxy-{stamp}.txt").write_text(console.export_text())
    console.print(f"results: {out} (and .md, .txt)")


if __name__ == "__main__":
    raise SystemExit(main())

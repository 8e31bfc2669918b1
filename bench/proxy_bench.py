"""`make bench`: the gateway's proxy overhead against direct-to-upstream and nginx, with wrk.

Every target forwards to the same fast upstream on loopback, gets the same POSTs from many users
(`X-User-Id`) and is measured at 1 and 32 connections; the table ends with the issue's goals:
the gateway (1 worker) serves >= 10% of nginx's req/s at 32 connections and adds <= 0.3 ms to
p50 over direct at 1 connection. To add a row, write a function `(Bench) -> base URL` that
starts what it needs through `bench` and append a `Target` to `TARGETS`.

    python -m bench.proxy_bench [--duration S] [--quick] [--upstream nginx|stub] [--only a,b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import redis
import yaml
from rich.console import Console
from rich.table import Table

from bench.harness import REQUEST_BODY, Harness, Load, conditions, run_wrk, stop_on_sigterm
from lvm_gateway.redisconn import start_redis_server
from tests.procs import free_port

RESULTS = Path(__file__).parent / "results"
CONNECTIONS = (1, 32)
CANARY_WEIGHT = 10
MIN_RPS_VS_NGINX = 0.10  # at 32 connections, gateway with one worker
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
                    redis.Redis.from_url(url).ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("redis-server did not start") from None
                    time.sleep(0.05)
            self._redis_url = url
        return self._redis_url

    def gateway(self, name: str, config: dict[str, Any], workers: int = 1) -> str:
        """Start `lvm-gateway serve` (no rollout controller) with `config`; its base URL."""
        path = self.harness.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        args = ["lvm-gateway", "serve", "--config", str(path), "--host", "127.0.0.1"]
        args += ["--port", str(port), "--redis", self.redis_url, "--workers", str(workers)]
        args += ["--no-controller", "--log-level", "warning"]
        self.harness.spawn(name, args, f"http://127.0.0.1:{port}/readyz")
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


def gateway_canary(workers: int) -> Callable[[Bench], str]:
    return lambda bench: bench.gateway(f"gateway-{workers}w", canary_config(bench), workers)


TARGETS = (
    Target("direct nginx-200", "direct", direct("nginx"), upstream="nginx"),
    Target("direct lvm-serve stub", "direct", direct("stub"), upstream="stub"),
    Target("nginx (2 workers)", "reference", nginx_proxy(2)),
    Target("nginx (1 worker)", "reference", nginx_proxy(1)),
    Target("gateway 1w", "candidate", gateway_canary(1)),
    Target("gateway 2w", "candidate", gateway_canary(2)),
)
REFERENCE = "nginx (2 workers)"  # the goals compare against nginx as deployed: one worker a core


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Row:
    target: Target
    canary_share: float | None  # share of probe users the target sent to the canary
    loads: list[Load]

    def at(self, connections: int) -> Load | None:
        return next((ld for ld in self.loads if ld.connections == connections), None)


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


def measure(bench: Bench, target: Target, duration_s: float, progress: Console) -> Row:
    with bench.harness.scope():
        url = target.start(bench) + "/infer"
        share = probe_split(url)
        # Fill keep-alive pools, caches and the upstream's connections before measuring.
        run_wrk(url, bench.harness.wrk_script, max(CONNECTIONS), 1)
        loads = []
        for c in CONNECTIONS:
            progress.print(f"  {target.name:<24} c={c:<3} {duration_s:.0f}s  "
                           f"load {os.getloadavg()[0]:.2f}", end="")  # fmt: skip
            load = run_wrk(url, bench.harness.wrk_script, c, duration_s)
            progress.print(f"  -> {load.rps:>9,.0f} req/s  p50 {load.p50_ms:.3f} ms")
            loads.append(load)
    return Row(target, share, loads)


# -- report ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdicts:
    """Each proxy row's distance from the goals: req/s vs nginx @32, added p50 vs direct @1."""

    rps_ratio: dict[str, float]
    p50_added_ms: dict[str, float]


def judge(rows: list[Row], baseline: str) -> Verdicts:
    by_name = {r.target.name: r for r in rows}
    ref = by_name.get(REFERENCE)
    base = by_name.get(baseline)
    ref_load = ref.at(max(CONNECTIONS)) if ref else None
    base_load = base.at(min(CONNECTIONS)) if base else None
    ratios, added = {}, {}
    for r in rows:
        if r.target.kind == "direct":
            continue
        hi, lo = r.at(max(CONNECTIONS)), r.at(min(CONNECTIONS))
        if ref_load and hi:
            ratios[r.target.name] = hi.rps / ref_load.rps
        if base_load and lo:
            added[r.target.name] = lo.p50_ms - base_load.p50_ms
    return Verdicts(ratios, added)


def table(rows: list[Row], verdicts: Verdicts, baseline: str) -> Table:
    t = Table(title=f"lvm-gateway proxy benchmark (wrk; proxies forward to {baseline!r})")
    for col in ("target", "conns", "req/s", "p50 ms", "p99 ms", "canary", "errors", "load"):
        t.add_column(col, justify="left" if col == "target" else "right")
    t.add_column(f"req/s vs nginx @{max(CONNECTIONS)}", justify="right")
    t.add_column(f"+p50 vs direct @{min(CONNECTIONS)}", justify="right")
    t.add_column("goal", justify="center")
    for r in rows:
        name = r.target.name
        for i, ld in enumerate(r.loads):
            cells = [
                name if i == 0 else "",
                str(ld.connections),
                f"{ld.rps:,.0f}",
                f"{ld.p50_ms:.3f}",
                f"{ld.p99_ms:.3f}",
                "-" if r.canary_share is None else f"{r.canary_share:.0%}",
                str(ld.errors) if ld.errors else "0",
                f"{ld.load_before[0]:.2f}",
            ]
            ratio = verdicts.rps_ratio.get(name) if ld.connections == max(CONNECTIONS) else None
            added = verdicts.p50_added_ms.get(name) if ld.connections == min(CONNECTIONS) else None
            cells.append("" if ratio is None else f"{ratio:.1%}")
            cells.append("" if added is None else f"{added:+.3f} ms")
            goal = ""
            if r.target.kind == "candidate":
                if ratio is not None:
                    goal = _verdict(ratio >= MIN_RPS_VS_NGINX, ld.errors)
                elif added is not None:
                    goal = _verdict(added <= MAX_P50_ADDED_MS, ld.errors)
            cells.append(goal)
            t.add_row(*cells, end_section=i == len(r.loads) - 1)
    t.caption = (
        f"goals for the gateway: req/s >= {MIN_RPS_VS_NGINX:.0%} of {REFERENCE} at "
        f"{max(CONNECTIONS)} connections (1 worker), +p50 <= {MAX_P50_ADDED_MS} ms over "
        f"direct at {min(CONNECTIONS)} connection; canary = share of {SPLIT_PROBES} probe users "
        f"sent to the canary (weight {CANARY_WEIGHT}%)"
    )
    return t


def _verdict(ok: bool, errors: int) -> str:
    if errors:
        return "[red]ERRORS[/red]"
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.proxy_bench", description=__doc__)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--quick", action="store_true", help="2 s per measurement (a smoke run)")
    p.add_argument("--upstream", choices=("nginx", "stub"), default="nginx",
                   help="the fast upstream every proxy forwards to")  # fmt: skip
    p.add_argument("--only", help="comma-separated substrings of target names to run")
    args = p.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    targets = [
        t
        for t in TARGETS
        if not args.only or any(s.strip() in t.name for s in args.only.split(","))
    ]
    baseline = next(t.name for t in TARGETS if t.kind == "direct" and t.upstream == args.upstream)

    # Wide enough for the table even when piped (make, tee), where rich would assume 80.
    console = Console(record=True, width=max(shutil.get_terminal_size().columns, 150))
    cond = conditions()
    console.print(
        f"[bold]conditions[/bold]: nproc {cond['nproc']} ({cond['cpu']}), load average "
        f"{' '.join(f'{x:.2f}' for x in cond['loadavg_start'])}, {cond['wrk']} -t1, "
        f"nginx {cond['nginx']}, python {cond['python']}, commit {cond['commit']}; "
        f"{duration:.0f} s per run after a 1 s warm-up; upstream for proxies: {baseline}"
    )
    rows: list[Row] = []
    with (
        stop_on_sigterm(),
        tempfile.TemporaryDirectory(prefix="lvmgw-bench-") as tmp,
    ):
        harness = Harness(Path(tmp))
        with harness.scope():
            bench = Bench(harness, args.upstream)
            start_upstreams(bench)
            for target in targets:
                rows.append(measure(bench, target, duration, console))
    verdicts = judge(rows, baseline)
    console.print(table(rows, verdicts, baseline))

    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"proxy-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "conditions": cond,
                "duration_s": duration,
                "upstream": baseline,
                "goals": {
                    "min_rps_vs_nginx": MIN_RPS_VS_NGINX,
                    "max_p50_added_ms": MAX_P50_ADDED_MS,
                },
                "rows": [
                    {
                        "target": r.target.name,
                        "kind": r.target.kind,
                        "canary_share": r.canary_share,
                        "loads": [asdict(ld) for ld in r.loads],
                        "rps_vs_nginx": verdicts.rps_ratio.get(r.target.name),
                        "p50_added_ms": verdicts.p50_added_ms.get(r.target.name),
                    }
                    for r in rows
                ],
            },
            indent=2,
        )
    )
    (RESULTS / f"proxy-{stamp}.txt").write_text(console.export_text())
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

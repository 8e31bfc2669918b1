"""`make bench`, real LVM payloads: 5, 100 and 500 context vectors with a real 768-d answer.

Part 1, the proxies: direct / nginx (1 worker) / gateway (1 worker, the default configuration:
a sticky 10% canary, answers inspected, 10% recorded; under uvicorn and under granian), all in
front of one fast upstream (`lvm-serve --profile stub --dense`: a real ~9 KB prediction, the
body read and dropped). wrk posts LVM JSON bodies (768 float32 per vector, as orjson writes
them, and a `tmd_codes`) at 1 and 8 connections: req/s, p50/p99, the gateway's added p50 over
direct against nginx's, its req/s against nginx's, and its CPU per request and per MB of
request body. Issue 12's targets: at 500 vectors the gateway's added p50 <= 2x nginx's and
req/s at 8 connections >= 80% of nginx's; at 100 vectors added p50 <= 2x nginx's.

Part 2, end to end: 500 vectors through the gateway to `lvm-serve --profile phase2 --latency-ms
0`, once as LVM JSON and once as the Open Inference Protocol with binary tensors (both ways),
at 1 connection; the target is v2 binary >= 5x faster at p50.

    python -m bench.payload_bench [--duration S] [--rounds N] [--quick] [--sizes 5,100,500]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from bench.harness import (
    Harness,
    Load,
    conditions,
    conditions_line,
    report_console,
    run_wrk,
    stop_on_signals,
    wrk_script,
)
from bench.proxy_bench import RESULTS, Bench, canary_config
from lvm_gateway.contract import oip
from lvm_gateway.procs import free_port

SIZES = (5, 100, 500)
CONNECTIONS = (1, 8)
USERS = 16  # distinct X-User-Id values: wrk holds one formatted request per user in memory
MAX_ADDED_P50_VS_NGINX = 2.0  # 100 and 500 vectors
MIN_RPS_VS_NGINX_500 = 0.80  # 500 vectors, 8 connections
MIN_BINARY_SPEEDUP = 5.0  # end to end, 500 vectors, p50
GATEWAYS = ("gateway 1w", "gateway 1w granian")  # uvicorn and granian, one worker each


def lvm_body(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    ctx = rng.standard_normal((n, 768)).astype(np.float32)
    ctx /= np.linalg.norm(ctx, axis=1, keepdims=True)
    doc = {"context_vectors": ctx, "tmd_codes": [3, 1, 2]}
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def v2_body(n: int, seed: int = 0) -> tuple[bytes, dict[str, str]]:
    ctx = np.asarray(orjson.loads(lvm_body(n, seed))["context_vectors"], dtype=np.float32)
    return oip.encode_request(ctx, (3, 1, 2))


def script(workdir: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    return wrk_script(workdir, name, body, headers, USERS)


# Large bodies stay in memory (nginx would spill anything over 16 KB to a temp file).
_BODIES = "client_max_body_size 64m; client_body_buffer_size 8m;"


def static_upstream(h: Harness) -> str:
    """`lvm-serve --profile stub --dense`: reads each body whole and answers the bytes of a real
    prediction (768 non-zero float32, 10 neighbours: ~9 KB). nginx cannot be this upstream: it
    answers a POST with a static body before reading the request body, and wrk then stalled
    on 4.4 MB requests (0-4 req/s)."""
    port = free_port()
    args = ["lvm-serve", "--profile", "stub", "--dense", "--port", str(port)]
    h.spawn("lvm-serve-stub-dense", args, f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}"


def nginx_proxy(h: Harness, upstream: str) -> str:
    """One nginx worker, sticky 90/10 by X-User-Id to the same upstream, as in proxy_bench."""
    port = free_port()
    up = upstream.removeprefix("http://")
    h.nginx("nginx-proxy", port, f"""
    upstream stable {{ server {up}; keepalive 64; keepalive_requests 10000000; }}
    upstream canary {{ server {up}; keepalive 64; keepalive_requests 10000000; }}
    split_clients "$http_x_user_id" $variant {{ 10% canary; * stable; }}
    server {{
        listen 127.0.0.1:{port};
        {_BODIES}
        location = /healthz {{ return 200 "ok"; }}
        location = /infer {{
            proxy_pass http://$variant;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Variant $variant;
        }}
    }}""", workers=1)  # fmt: skip
    return f"http://127.0.0.1:{port}"


@dataclass
class Cell:
    target: str
    size: int  # context vectors
    body_bytes: int
    url: str
    script: Path
    pgid: int | None
    runs: dict[int, list[Load]] = field(default_factory=dict)

    def best(self, c: int) -> Load | None:
        return max(self.runs.get(c, []), key=lambda ld: ld.rps, default=None)


def check(url: str, body: bytes, headers: dict[str, str]) -> None:
    r = httpx.post(url, content=body, headers=headers, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:300]}")


def measure(cells: list[Cell], conns: tuple[int, ...], duration: float, out: Console) -> None:
    for cell in cells:
        for c in conns:
            out.print(f"  {cell.target:<22} {cell.size:>3} vec c={c:<2} "
                      f"load {os.getloadavg()[0]:.2f}", end="")  # fmt: skip
            ld = run_wrk(cell.url, cell.script, c, duration, cell.pgid)
            out.print(f"  -> {ld.rps:>8,.0f} req/s  p50 {ld.p50_ms:.3f} ms  "
                      f"{ld.cpu_us_per_req or 0:.0f} us CPU/req")  # fmt: skip
            cell.runs.setdefault(c, []).append(ld)


def proxy_rows(cells: list[Cell], sizes: tuple[int, ...]) -> tuple[list[list[str]], list[str]]:
    """The table's lines and the verdicts on the targets."""
    lo, hi = min(CONNECTIONS), max(CONNECTIONS)
    lines: list[list[str]] = []
    verdicts: list[str] = []
    for size in sizes:
        by = {c.target: c for c in cells if c.size == size}
        direct, nginx = by["direct"], by["nginx"]
        base = direct.best(lo)
        for cell in (direct, nginx, *(by[g] for g in GATEWAYS)):
            a, b = cell.best(lo), cell.best(hi)
            if a is None or b is None or base is None:
                continue
            cpu = b.cpu_us_per_req
            per_mb = f"{cpu / (cell.body_bytes / 1e6) / 1000:.2f}" if cpu else "-"
            lines.append([
                f"{size} ({cell.body_bytes / 1e3:,.0f} KB)" if cell is direct else "",
                cell.target,
                f"{b.rps:,.0f}",
                f"{b.p50_ms:.3f}",
                f"{b.p99_ms:.3f}",
                f"{a.p50_ms:.3f}",
                f"{a.p99_ms:.3f}",
                "" if cell is direct else f"{a.p50_ms - base.p50_ms:+.3f}",
                f"{cpu:.0f}" if cpu else "-",
                per_mb if cell.target in GATEWAYS else "",
                str(sum(x.errors for r in cell.runs.values() for x in r)),
            ])  # fmt: skip
        for name in GATEWAYS:
            ng1, gw1, ng8, gw8 = (
                nginx.best(lo),
                by[name].best(lo),
                nginx.best(hi),
                by[name].best(hi),
            )
            if not (base and ng1 and gw1 and ng8 and gw8):
                continue
            added_ratio = (gw1.p50_ms - base.p50_ms) / max(ng1.p50_ms - base.p50_ms, 1e-3)
            rps_ratio = gw8.rps / ng8.rps
            line = (
                f"{size} vectors, {name}: added p50 {gw1.p50_ms - base.p50_ms:+.3f} ms vs nginx "
                f"{ng1.p50_ms - base.p50_ms:+.3f} ms = {added_ratio:.1f}x; req/s @{hi} "
                f"{rps_ratio:.0%} of nginx"
            )
            if size >= 100:
                line += f"; added p50 <= {MAX_ADDED_P50_VS_NGINX:g}x: " + _pass(
                    added_ratio <= MAX_ADDED_P50_VS_NGINX
                )
            if size >= 500:
                line += f"; req/s >= {MIN_RPS_VS_NGINX_500:.0%}: " + _pass(
                    rps_ratio >= MIN_RPS_VS_NGINX_500
                )
            verdicts.append(line)
    return lines, verdicts


PROXY_COLUMNS = (
    "context", "target", f"req/s @{max(CONNECTIONS)}", f"p50 @{max(CONNECTIONS)}",
    f"p99 @{max(CONNECTIONS)}", f"p50 @{min(CONNECTIONS)}", f"p99 @{min(CONNECTIONS)}",
    f"+p50 @{min(CONNECTIONS)} vs direct", f"CPU us/req @{max(CONNECTIONS)}", "CPU ms/MB",
    "errors",
)  # fmt: skip


def _pass(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def markdown(columns: tuple[str, ...], lines: list[list[str]]) -> str:
    head = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    return head + "".join(f"| {' | '.join(line)} |\n" for line in lines)


def rich_table(title: str, columns: tuple[str, ...], lines: list[list[str]]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, justify="left" if col in ("context", "target") else "right")
    for line in lines:
        t.add_row(*line)
    return t


def end_to_end(bench: Bench, duration: float, rounds: int, out: Console) -> tuple[list[Cell], str]:
    """500 vectors through the gateway to lvm-serve, LVM JSON vs v2 binary, 1 connection."""
    h = bench.harness
    port = free_port()
    args = ["lvm-serve", "--profile", "phase2", "--latency-ms", "0", "--port", str(port)]
    h.spawn("lvm-serve-phase2", args, f"http://127.0.0.1:{port}/health")
    server = f"http://127.0.0.1:{port}"
    gw = bench.gateway("gateway-e2e", {
        "variants": {"json": {"url": server}, "v2": {"url": server, "protocol": "oip-v2"}},
        "routes": [
            {"path": "/infer", "policy": "json"},
            {"path": oip.infer_path("lvm"), "protocol": "oip-v2", "policy": "v2"},
        ],
    })  # fmt: skip
    pgid = h.groups.get(gw.removeprefix("http://"))
    json_body = lvm_body(500)
    v2, v2_headers = v2_body(500)
    json_headers = {"Content-Type": "application/json"}
    cells = [
        Cell("LVM JSON", 500, len(json_body), gw + "/infer",
             script(h.workdir, "e2e-json", json_body, json_headers), pgid),
        Cell("OIP v2 binary", 500, len(v2), gw + oip.infer_path("lvm"),
             script(h.workdir, "e2e-v2", v2, v2_headers), pgid),
    ]  # fmt: skip
    check(cells[0].url, json_body, json_headers)
    check(cells[1].url, v2, v2_headers)
    for _ in range(rounds):
        measure(cells, (1,), duration, out)
    js, bn = cells[0].best(1), cells[1].best(1)
    if js is None or bn is None:
        return cells, ""
    speedup = js.p50_ms / bn.p50_ms
    verdict = (
        f"end to end, 500 vectors: LVM JSON p50 {js.p50_ms:.2f} ms, OIP v2 binary "
        f"{bn.p50_ms:.2f} ms = {speedup:.1f}x faster (target >= {MIN_BINARY_SPEEDUP:g}x: "
        f"{_pass(speedup >= MIN_BINARY_SPEEDUP)})"
    )
    return cells, verdict


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.payload_bench", description=__doc__)
    p.add_argument("--duration", type=float, default=4.0, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=2, help="runs per cell; the best is reported")
    p.add_argument("--quick", action="store_true", help="one round of 2 s runs")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)), help="context vectors")
    p.add_argument("--no-e2e", action="store_true", help="skip the lvm-serve end-to-end rows")
    args = p.parse_args(argv)
    duration, rounds = (2.0, 1) if args.quick else (args.duration, args.rounds)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    console = report_console()
    cond = conditions()
    setup = conditions_line(cond, rounds, duration)
    console.print(f"[bold]conditions[/bold]: {setup}")
    try:
        with (
            stop_on_signals(),
            tempfile.TemporaryDirectory(prefix="lvmgw-payload-") as tmp,
            Harness(Path(tmp)) as h,
        ):
            upstream = static_upstream(h)
            bench = Bench(h, "static", {"static": upstream})
            urls = {
                "direct": upstream,
                "nginx": nginx_proxy(h, upstream),
                **{
                    name: bench.gateway(name.replace(" ", "-"), canary_config(bench), server=srv)
                    for name, srv in zip(GATEWAYS, ("uvicorn", "granian"), strict=True)
                },
            }
            cells = []
            for size in sizes:
                body = lvm_body(size)
                headers = {"Content-Type": "application/json"}
                path = script(h.workdir, f"lvm-{size}", body, headers)
                for name, base in urls.items():
                    check(base + "/infer", body, headers)
                    netloc = base.removeprefix("http://")
                    cells.append(
                        Cell(name, size, len(body), base + "/infer", path, h.groups.get(netloc))
                    )
            for i in range(rounds):
                console.print(f"[bold]round {i + 1}/{rounds}[/bold]")
                measure(cells, CONNECTIONS, duration, console)
            e2e, e2e_verdict = (
                ([], "") if args.no_e2e else end_to_end(bench, duration, rounds, console)
            )
    except KeyboardInterrupt:
        console.print("\ninterrupted; every server the benchmark started is stopped")
        return 130
    lines, verdicts = proxy_rows(cells, sizes)
    title = f"real payloads: best of {rounds} wrk runs per cell"
    console.print(rich_table(title, PROXY_COLUMNS, lines))
    for v in [*verdicts, e2e_verdict]:
        if v:
            console.print(v)
    e2e_lines = [
        [c.target, f"{ld.p50_ms:.3f}", f"{ld.p99_ms:.3f}", f"{ld.rps:,.0f}",
         f"{c.body_bytes / 1e6:.2f} MB", f"{ld.cpu_us_per_req or 0:.0f}"]
        for c in e2e if (ld := c.best(1))
    ]  # fmt: skip
    e2e_cols = ("500 vectors e2e @1", "p50 ms", "p99 ms", "req/s", "request", "gateway CPU us/req")
    if e2e_lines:
        console.print(rich_table("gateway -> lvm-serve", e2e_cols, e2e_lines))
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = (
        f"{title} ({time.strftime('%Y-%m-%d %H:%M %Z')})\n\nConditions: {setup}.\n\n"
        + markdown(PROXY_COLUMNS, lines)
        + "\n"
        + "\n".join(f"- {v}" for v in verdicts)
        + ("\n\n" + markdown(e2e_cols, e2e_lines) + f"\n- {e2e_verdict}\n" if e2e_lines else "\n")
    )
    (RESULTS / f"payload-{stamp}.md").write_text(md)
    doc = {
        "conditions": cond,
        "cells": [
            {"target": c.target, "size": c.size, "body_bytes": c.body_bytes,
             "runs": {k: [asdict(x) for x in v] for k, v in c.runs.items()}}
            for c in [*cells, *e2e]
        ],
        "verdicts": [*verdicts, e2e_verdict],
    }  # fmt: skip
    (RESULTS / f"payload-{stamp}.json").write_text(json.dumps(doc, indent=2))
    console.print(f"results: {RESULTS}/payload-{stamp}.md (and .json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Two builds of the gateway under one load at the same time: what a change wins, per request.

Single wrk runs on this VM move by +-15-40% from minute to minute, which hides a 5% change, and
alternating runs of A and B still see different minutes. Here both gateways (one worker each,
proxy_bench's default configuration, the same nginx upstream) are loaded at once by two wrk
processes, so each run's two figures share the machine's state; the ratio of CPU per request
(user + system, from /proc) is taken per run, then its median. A build compared with itself
gives ratios of 0.89-1.12, median ~0.99.

    python -m bench.side_by_side                      # pure Python (a) vs compiled (b), this tree
    python -m bench.side_by_side --a /tmp/base        # another checkout (a) vs this tree (b)

A checkout is imported through PYTHONPATH with this venv's packages. Build it without make
(make there would reinstall this venv's editable package pointing at the checkout):

    git worktree add /tmp/base <rev>
    (cd /tmp/base && PYTHONPATH=$PWD LVM_GATEWAY_PURE=1 <this>/.venv/bin/python \
        -c 'from lvm_gateway.native import main; main(["build"])')
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from bench.harness import Harness, Load, conditions, conditions_line, run_wrk, stop_on_signals
from bench.proxy_bench import Bench, canary_config, no_inspect_config, start_upstreams
from lvm_gateway.native import PURE_ENV

CONFIGS = {"default": canary_config, "no-inspect": no_inspect_config}
_HERE = Path(__file__).resolve().parent.parent


def _start(bench: Bench, name: str, tree: Path, pure: bool, config: str) -> tuple[str, int]:
    env = {"PYTHONPATH": str(tree), **({PURE_ENV: "1"} if pure else {})}
    base = bench.gateway(name, CONFIGS[config](bench), env=env)
    return base + "/infer", bench.harness.groups[urlsplit(base).netloc]


def compare(
    harness: Harness, builds: dict[str, tuple[Path, bool]], config: str, runs: int,
    connections: int, duration_s: float,
) -> dict[str, list[Load]]:  # fmt: skip
    """`runs` simultaneous wrk runs against each build; its loads per build."""
    bench = Bench(harness, "nginx")
    start_upstreams(bench)
    targets = {n: _start(bench, n, tree, pure, config) for n, (tree, pure) in builds.items()}
    for url, pgid in targets.values():  # warm pools and caches
        run_wrk(url, harness.wrk_script, connections, 2, pgid)
    loads: dict[str, list[Load]] = {n: [] for n in targets}
    with ThreadPoolExecutor(len(targets)) as pool:
        for i in range(runs):
            futures = {
                n: pool.submit(run_wrk, url, harness.wrk_script, connections, duration_s, pgid)
                for n, (url, pgid) in targets.items()
            }
            for n, f in futures.items():
                loads[n].append(f.result())
            line = "  ".join(f"{n} {_cpu(ld[-1]):6.1f} us" for n, ld in loads.items())
            print(f"run {i + 1}/{runs}: {line}", flush=True)
    return loads


def _cpu(load: Load) -> float:
    assert load.cpu_us_per_req is not None  # every run is given its gateway's process group
    return load.cpu_us_per_req


def report(loads: dict[str, list[Load]]) -> str:
    (a, la), (b, lb) = loads.items()
    lines = []
    for name, ls in loads.items():
        cpu = statistics.median(_cpu(ld) for ld in ls)
        rps = statistics.median(ld.rps for ld in ls)
        lines.append(f"{name}: median {cpu:.1f} us CPU per request, {rps:,.0f} req/s")
    ratios = [_cpu(y) / _cpu(x) for x, y in zip(la, lb, strict=True)]
    shown = ", ".join(f"{r:.3f}" for r in ratios)
    lines.append(f"{b} / {a}, CPU per request: median {statistics.median(ratios):.3f} ({shown})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.side_by_side",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--a", type=Path, help="checkout of build a (default: this tree, pure)")
    p.add_argument("--b", type=Path, default=_HERE, help="checkout of build b (this tree)")
    p.add_argument("--config", choices=sorted(CONFIGS), default="default")
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--connections", type=int, default=16, help="per wrk (two run at once)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    args = p.parse_args(argv)
    a = ("a", (args.a, False)) if args.a else ("a (pure)", (_HERE, True))
    builds = dict([a, ("b", (args.b.resolve(), False))])
    print(f"conditions: {conditions_line(conditions(), args.runs, args.duration)}")
    for name, (tree, pure) in builds.items():
        rev = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        print(f"  {name}: {tree} ({rev or 'no git'}){' with ' + PURE_ENV + '=1' if pure else ''}")
    try:
        with stop_on_signals(), tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
            loads = compare(h, builds, args.config, args.runs, args.connections, args.duration)
    except KeyboardInterrupt:
        print("\ninterrupted; every server the benchmark started is stopped")
        return 130
    print(report(loads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

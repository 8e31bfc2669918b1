"""Where the gateway's time goes on real payloads: one worker run in-process under cProfile
while wrk posts LVM JSON bodies of N context vectors through it (py-spy is not installed here).

    python -m bench.profile_gateway [--vectors 500] [--seconds 8] [--connections 1] [--top 25]

cProfile adds its own cost per Python call, so read the shares, not the absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import signal
import tempfile
import threading
from pathlib import Path

import yaml

from bench.harness import Harness, run_wrk, stop_on_signals
from bench.payload_bench import lvm_body, script, static_upstream
from bench.proxy_bench import Bench, canary_config
from lvm_gateway.procs import free_port, wait_http
from lvm_gateway.serve import serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_gateway", description=__doc__)
    p.add_argument("--vectors", type=int, default=500)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    with stop_on_signals(), tempfile.TemporaryDirectory() as tmp, Harness(Path(tmp)) as h:
        bench = Bench(h, "stub")
        bench.upstreams["stub"] = static_upstream(h)
        config = h.workdir / "gateway.yaml"
        config.write_text(yaml.safe_dump(canary_config(bench)))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        body = lvm_body(args.vectors)
        lua = script(h.workdir, "profile", body, {"Content-Type": "application/json"})

        def drive() -> None:
            wait_http(f"{url}/readyz", 30)
            run_wrk(f"{url}/infer", lua, args.connections, 1)  # warm up
            load = run_wrk(f"{url}/infer", lua, args.connections, args.seconds)
            print(f"{load.rps:,.0f} req/s, p50 {load.p50_ms:.3f} ms (under cProfile)", flush=True)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=drive, daemon=True).start()
        profile = cProfile.Profile()
        with contextlib.suppress(KeyboardInterrupt, SystemExit):
            profile.runcall(serve, str(config), "127.0.0.1", port, bench.redis_url, 1, False,
                            "warning")  # fmt: skip
        stats = pstats.Stats(profile).strip_dirs().sort_stats("tottime")
        stats.print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 11's judge targets, measured with the rollout simulator (the table in docs/judge.md).

    python -m bench.judge_targets [--runs 200] [--steps 30,300,3600,86400] [--seed 11]

Every scenario runs the example policy's rollout (deploy/policies/lvm.yaml) at 100 req/s with
10% feedback unless it says otherwise, for each step length; prints one markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lvm_gateway.config.load import load_config
from lvm_gateway.contract.rollout import RolloutSpec
from lvm_gateway.rollout.simulate import N_LANES, Result, Traffic, simulate, with_step_seconds

POLICY = Path(__file__).resolve().parent.parent / "deploy" / "policies" / "lvm.yaml"
FIVE_PERCENT_LANE = (0.05, *((0.95 / (N_LANES - 1),) * (N_LANES - 1)))

Scenario = tuple[Traffic | Callable[[RolloutSpec], Traffic], str]
# name -> (traffic, or traffic for a spec; the outcome the target is about)
SCENARIOS: dict[str, Scenario] = {
    "good (same as stable)": (Traffic(), "promoted"),
    "better (Hit@5 0.59 -> 0.66)": (Traffic(stable_hit5=0.59, canary_hit5=0.66), "promoted"),
    "latency x4": (Traffic(canary_p50_ms=8.0), "rolled_back"),
    "errors 2%": (Traffic(canary_error_rate=0.02), "rolled_back"),
    "NaN 1%": (Traffic(canary_nan_rate=0.01), "rolled_back"),
    "Hit@5 0.66 -> 0.50": (Traffic(canary_hit5=0.50), "rolled_back"),
    "5% lane to Hit@5 0.20": (
        Traffic(lane_hit5={"lane_0": 0.20}, lane_shares=FIVE_PERCENT_LANE),
        "rolled_back",
    ),
    # Thin for the step length: the 10% step sees a quarter of min_requests within max_hold.
    "thin traffic": (
        lambda spec: Traffic(rps=0.25 * spec.min_requests / (0.10 * spec.max_hold_seconds)),
        "paused",
    ),
}
ZIPF = tuple(1.0 / (i + 1) for i in range(N_LANES))
# Near the margins and off the happy path: what the defaults cost.
HARDER: dict[str, Scenario] = {
    "Hit@5 0.66 -> 0.62 (within margin)": (Traffic(canary_hit5=0.62), "promoted"),
    "Hit@5 0.66 -> 0.58 (past margin)": (Traffic(canary_hit5=0.58), "rolled_back"),
    "errors 0.5% (= margin)": (Traffic(canary_error_rate=0.005), "rolled_back"),
    "errors 1% (2x margin)": (Traffic(canary_error_rate=0.01), "rolled_back"),
    "good, Zipf lane shares": (Traffic(lane_shares=ZIPF), "promoted"),
    "good, feedback 60 s late": (Traffic(feedback_delay_s=60), "promoted"),
    "good, 10 req/s": (Traffic(rps=10), "promoted"),
}


def _pct(n: int, runs: int) -> str:
    return f"{100 * n / runs:.1f}%"


def cell(result: Result, expect: str) -> str:
    runs = len(result.runs)
    s = result.summary()
    main = _pct(result.count(expect), runs)
    extra = []
    if expect == "promoted":
        extra.append(f"rb {_pct(result.count('rolled_back'), runs)}")
        extra.append(f"paused {_pct(result.count('paused'), runs)}")
    if expect == "rolled_back":
        by_step = result.by_step("rolled_back")
        extra.append(f"shadow {_pct(by_step.get(0, 0), runs)}")
        extra.append(f"before 20% {_pct(by_step.get(0, 0) + by_step.get(1, 0), runs)}")
        extra.append(f"paused {_pct(result.count('paused'), runs)}")
    if expect != "promoted":
        extra.append(f"promoted {_pct(result.count('promoted'), runs)}")
    when = s["median_decision_seconds"]
    if when >= 7200:
        extra.append(f"t {when / 3600:.0f} h")
    else:
        extra.append(f"t {when / 60:.0f} min" if when >= 600 else f"t {when:.0f} s")
    extra.append(f"exposed {s['median_exposed_requests']:.0f}")
    return f"{main} ({', '.join(extra)})"


def _label(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h steps"
    return f"{seconds / 60:g} min steps" if seconds >= 60 else f"{seconds:g} s steps"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--steps", default="30,300,3600,86400", help="step lengths in seconds")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--only", default=None, help="run the scenarios whose name contains this")
    p.add_argument("--harder", action="store_true", help="the near-margin scenarios instead")
    args = p.parse_args()
    base = load_config(POLICY).rollouts["phase2"]
    lengths = [float(s) for s in args.steps.split(",")]
    specs = [with_step_seconds(base, s) for s in lengths]
    print("| scenario | target | " + " | ".join(_label(s) for s in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for name, (traffic, expect) in (HARDER if args.harder else SCENARIOS).items():
        if args.only and args.only not in name:
            continue
        cells = []
        for spec in specs:
            t0 = time.perf_counter()
            traffic_for = traffic if isinstance(traffic, Traffic) else traffic(spec)
            result = simulate(spec, traffic_for, args.runs, args.seed)
            cells.append(cell(result, expect))
            took = time.perf_counter() - t0
            print(f"  {name} @ {_label(spec.step_min_seconds)}: {took:.1f}s", file=sys.stderr)
        print(f"| {name} | {expect} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

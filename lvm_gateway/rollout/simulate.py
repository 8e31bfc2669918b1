"""Rollouts on simulated time: the real analyse/reconcile/transitions fed synthetic traffic.

Many runs advance in lockstep, one analysis interval per tick. Each tick draws every active run's
traffic for the interval at once with numpy (Poisson arrivals, the canary's share as the real
policy splits it, lanes, errors, NaN answers, empty hits, a lognormal latency histogram, user
feedback with Hit@1/5/10 after an optional delay), adds it to the run's cumulative counters for
the step and for the rollout, and hands each run's counters to the real `reconcile`. A run ends
Promoted, RolledBack or Paused (a pause is an outcome here: the operator would have to act).

Users run it to choose step lengths and margins before a real rollout (`rolloutctl simulate`);
the project uses it to measure the judge (docs/judge.md).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvm_gateway.contract.rollout import Phase, RolloutSpec, RolloutStatus
from lvm_gateway.contract.windows import LATENCY_BOUNDS_MS, LATENCY_FIELDS, lane_field
from lvm_gateway.rollout.analysis import LANES
from lvm_gateway.rollout.observations import Observations, VariantWindow
from lvm_gateway.rollout.reconcile import reconcile
from lvm_gateway.rollout.transitions import start

N_LANES = len(LANES)
HITS = (1, 5, 10)
# Totals, then per lane; the latency histogram follows.
_TOTALS = ("n", "err", "invalid", "empty", "feedback", "hit1", "hit5", "hit10")
_PER_LANE = ("n", "feedback", "hit1", "hit5", "hit10")
_FIELDS: tuple[str, ...] = (
    *_TOTALS,
    *(lane_field(c, lane) for c in _PER_LANE for lane in LANES),
    *LATENCY_FIELDS,
)
_COL = {name: i for i, name in enumerate(_FIELDS)}
_LANE_COL = {c: _COL[lane_field(c, LANES[0])] for c in _PER_LANE}
_LAT_COL = _COL[LATENCY_FIELDS[0]]


@dataclass(frozen=True)
class Traffic:
    """What the simulated users send and how each variant answers. None: same as stable."""

    rps: float = 100.0
    feedback_rate: float = 0.1  # share of answers the user gives feedback on
    feedback_delay_s: float = 0.0
    stable_hit5: float = 0.66
    canary_hit5: float | None = None
    stable_p50_ms: float = 2.0
    canary_p50_ms: float | None = None
    latency_sigma: float = 0.4  # lognormal shape: p95 = p50 x 1.93
    stable_error_rate: float = 0.0
    canary_error_rate: float | None = None
    stable_nan_rate: float = 0.0
    canary_nan_rate: float | None = None
    empty_rate: float = 0.02  # both variants
    lane_hit5: dict[str, float] = field(default_factory=dict)  # canary per-lane overrides
    lane_shares: tuple[float, ...] = (1.0 / N_LANES,) * N_LANES

    def __post_init__(self) -> None:
        if len(self.lane_shares) != N_LANES or min(self.lane_shares) < 0:
            raise ValueError(f"lane shares: need {N_LANES} non-negative numbers")
        if not math.isclose(sum(self.lane_shares), 1.0, rel_tol=1e-6):
            total = sum(self.lane_shares)
            object.__setattr__(self, "lane_shares", tuple(s / total for s in self.lane_shares))
        unknown = set(self.lane_hit5) - set(LANES)
        if unknown:
            raise ValueError(f"unknown lane(s) {sorted(unknown)}: lanes are lane_0..lane_15")
        rates = {
            "rps": (self.rps, 0.0, math.inf),
            "feedback rate": (self.feedback_rate, 0.0, 1.0),
            "feedback delay": (self.feedback_delay_s, 0.0, math.inf),
            "stable Hit@5": (self.stable_hit5, 0.0, 1.0),
            "canary Hit@5": (self.canary_hit5 or 0.0, 0.0, 1.0),
            "error rate": (self.canary_error_rate or 0.0, 0.0, 1.0),
            "NaN rate": (self.canary_nan_rate or 0.0, 0.0, 1.0),
            **{f"{k} Hit@5": (v, 0.0, 1.0) for k, v in self.lane_hit5.items()},
        }
        for what, (value, lo, hi) in rates.items():
            if not lo <= value <= hi:
                raise ValueError(f"{what} must be in [{lo:g}, {hi:g}], got {value:g}")
        for what, p50 in (("stable", self.stable_p50_ms), ("canary", self.canary_p50_ms)):
            if p50 is not None and p50 <= 0:
                raise ValueError(f"{what} p50 must be > 0 ms, got {p50:g}")


@dataclass(frozen=True)
class _Variant:
    error_rate: float
    nan_rate: float
    latency: np.ndarray  # probability of each latency bucket
    hits: np.ndarray  # (lanes, 3): P(hit@1), P(hit@5), P(hit@10) per lane


def _latency_probs(p50_ms: float, sigma: float) -> np.ndarray:
    edges = np.log(np.asarray(LATENCY_BOUNDS_MS) / p50_ms) / sigma
    cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2)) for e in edges])
    probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
    return np.clip(probs, 0.0, None) / probs.clip(0.0, None).sum()


def _hit_probs(hit5: np.ndarray) -> np.ndarray:
    # Nested like real rankings: Hit@1 <= Hit@5 <= Hit@10.
    return np.stack([0.6 * hit5, hit5, hit5 + 0.5 * (1.0 - hit5)], axis=1)


def _variants(t: Traffic) -> tuple[_Variant, _Variant]:
    stable_lanes = np.full(N_LANES, t.stable_hit5)
    canary_lanes = np.full(N_LANES, t.stable_hit5 if t.canary_hit5 is None else t.canary_hit5)
    for lane, value in t.lane_hit5.items():
        canary_lanes[LANES.index(lane)] = value
    stable = _Variant(
        t.stable_error_rate,
        t.stable_nan_rate,
        _latency_probs(t.stable_p50_ms, t.latency_sigma),
        _hit_probs(stable_lanes),
    )
    canary = _Variant(
        t.stable_error_rate if t.canary_error_rate is None else t.canary_error_rate,
        t.stable_nan_rate if t.canary_nan_rate is None else t.canary_nan_rate,
        _latency_probs(t.canary_p50_ms or t.stable_p50_ms, t.latency_sigma),
        _hit_probs(canary_lanes),
    )
    return stable, canary


@dataclass(frozen=True)
class Run:
    outcome: str  # "promoted" | "rolled_back" | "paused" | "undecided"
    decision_seconds: float
    analyses: int
    exposed_requests: int  # canary requests users saw (not the shadow step's mirrored copies)
    step: int  # the step the decision was taken in
    reason: str


@dataclass(frozen=True)
class Result:
    runs: tuple[Run, ...]

    def count(self, outcome: str) -> int:
        return sum(r.outcome == outcome for r in self.runs)

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs]
        return float(statistics.median(values)) if values else None

    def summary(self) -> dict[str, Any]:
        """Exactly the documented `--json` shape."""
        return {
            "runs": len(self.runs),
            "promoted": self.count("promoted"),
            "rolled_back": self.count("rolled_back"),
            "paused": self.count("paused"),
            "median_decision_seconds": self.median("decision_seconds"),
            "median_exposed_requests": self.median("exposed_requests"),
        }

    def by_step(self, outcome: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self.runs:
            if r.outcome == outcome:
                out[r.step] = out.get(r.step, 0) + 1
        return dict(sorted(out.items()))


def _draw(rng: np.random.Generator, served: np.ndarray, v: _Variant, t: Traffic) -> np.ndarray:
    """Counts for `served` requests per run (one row per run), in _FIELDS order."""
    runs = len(served)
    out = np.zeros((runs, len(_FIELDS)), dtype=np.int64)
    lanes = rng.multinomial(served, t.lane_shares)
    out[:, _COL["n"]] = served
    nan = rng.binomial(served, v.nan_rate)
    out[:, _COL["invalid"]] = nan
    out[:, _COL["err"]] = nan + rng.binomial(served - nan, v.error_rate)
    out[:, _COL["empty"]] = rng.binomial(served, t.empty_rate)
    out[:, _LANE_COL["n"] : _LANE_COL["n"] + N_LANES] = lanes
    out[:, _LAT_COL : _LAT_COL + len(LATENCY_FIELDS)] = rng.multinomial(served, v.latency)
    ok = 1.0 - v.error_rate - v.nan_rate  # only answers get feedback
    fb = rng.binomial(lanes, max(0.0, t.feedback_rate * ok))
    # Nested hits: Hit@10, then Hit@5 among those, then Hit@1 among those.
    h10 = rng.binomial(fb, v.hits[:, 2])
    h5 = rng.binomial(h10, v.hits[:, 1] / np.maximum(v.hits[:, 2], 1e-12))
    h1 = rng.binomial(h5, v.hits[:, 0] / np.maximum(v.hits[:, 1], 1e-12))
    for name, per_lane in (("feedback", fb), ("hit1", h1), ("hit5", h5), ("hit10", h10)):
        out[:, _LANE_COL[name] : _LANE_COL[name] + N_LANES] = per_lane
        out[:, _COL[name]] = per_lane.sum(axis=1)
    return out


def _window(row: np.ndarray) -> VariantWindow:
    return VariantWindow(dict(zip(_FIELDS, row.tolist(), strict=True)))


def _feedback_only(counts: np.ndarray) -> np.ndarray:
    out = np.zeros_like(counts)
    for name in ("feedback", "hit1", "hit5", "hit10"):
        out[..., _COL[name]] = counts[..., _COL[name]]
        col = _LANE_COL[name]
        out[..., col : col + N_LANES] = counts[..., col : col + N_LANES]
    return out


def simulate(
    spec: RolloutSpec,
    traffic: Traffic,
    runs: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> Result:
    """`runs` rollouts of `spec` under `traffic`; the same seed gives the same result."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    rng = np.random.default_rng(seed)
    stable_v, canary_v = _variants(traffic)
    dt = spec.interval_seconds
    # Every step ends within max(step_min, max_hold) plus an interval: beyond that, undecided.
    horizon = sum(max(spec.step_min_seconds, spec.max_hold_seconds) + 2 * dt for _ in spec.steps)
    delay = max(0, math.ceil(traffic.feedback_delay_s / dt))
    width = len(_FIELDS)
    # cumulative [run, variant (0 canary, 1 stable), field] for the step and for the rollout
    step_counts = np.zeros((runs, 2, width), dtype=np.int64)
    rollout_counts = np.zeros((runs, 2, width), dtype=np.int64)
    pending = np.zeros((delay + 1, runs, 2, width), dtype=np.int64)  # feedback in flight
    status = [start(RolloutStatus(f"sim{i}"), spec, "stable", "canary", 0.0) for i in range(runs)]
    analyses = [0] * runs
    exposed = np.zeros(runs, dtype=np.int64)
    done: dict[int, Run] = {}
    active = list(range(runs))
    tick = 0
    while active and tick * dt <= horizon:
        tick += 1
        now = tick * dt
        idx = np.asarray(active)
        weight = np.array([status[i].weight for i in active]) / 100.0
        mirror = np.array([status[i].mirror for i in active]) / 100.0
        arrivals = rng.poisson(traffic.rps * dt, len(active))
        to_canary = rng.binomial(arrivals, weight)
        to_stable = arrivals - to_canary
        mirrored = rng.binomial(to_stable, mirror)  # copies: measured, never shown to users
        exposed[idx] += to_canary
        drawn = np.zeros((len(active), 2, width), dtype=np.int64)
        drawn[:, 0] = _draw(rng, to_canary + mirrored, canary_v, traffic)
        drawn[:, 1] = _draw(rng, to_stable, stable_v, traffic)
        # Feedback (a mirrored copy is scored on the user's click too) lands `delay` ticks on.
        feedback = _feedback_only(drawn)
        pending[(tick + delay) % (delay + 1), idx] += feedback
        arrived = pending[tick % (delay + 1), idx]
        pending[tick % (delay + 1), idx] = 0
        fresh = drawn - feedback + arrived
        step_counts[idx] += fresh
        rollout_counts[idx] += fresh
        still = []
        for i in active:
            s = status[i]
            obs = Observations(
                canary=_window(step_counts[i, 0]),
                stable=_window(step_counts[i, 1]),
                since=s.step_started_at or 0.0,
                until=now,
                canary_rollout=_window(rollout_counts[i, 0]),
                stable_rollout=_window(rollout_counts[i, 1]),
            )
            new, action = reconcile(s, obs, spec, now)
            analyses[i] += 1
            if new.phase != Phase.PROGRESSING:
                outcome = {
                    Phase.PROMOTED: "promoted",
                    Phase.ROLLED_BACK: "rolled_back",
                    Phase.PAUSED: "paused",
                }[new.phase]
                done[i] = Run(outcome, now, analyses[i], int(exposed[i]), s.step, action.reason)
                continue
            if new.step != s.step:
                step_counts[i] = 0
            status[i] = new
            still.append(i)
        active = still
        if progress is not None:
            progress(runs - len(active), runs)
    for i in active:
        done[i] = Run("undecided", tick * dt, analyses[i], int(exposed[i]), status[i].step, "")
    return Result(tuple(done[i] for i in range(runs)))


def with_step_seconds(spec: RolloutSpec, seconds: float) -> RolloutSpec:
    """The spec with every step lasting `seconds`: the hold limit grows to at least two steps
    and the analysis cadence to at least a 60th of a step (the judge is anytime-valid, so the
    cadence sets the reaction time, not the error rates)."""
    return spec.model_copy(
        update={
            "step_min_seconds": seconds,
            "max_hold_seconds": max(spec.max_hold_seconds, 2 * seconds),
            "interval_seconds": max(spec.interval_seconds, seconds / 60),
        }
    )


def run_cli(args: Any) -> int:
    """`rolloutctl simulate`: args from rollout.cli's subparser; prints the outcome counts."""
    from lvm_gateway.config.load import load_config

    path = args.sim_config or args.config
    if path is None:
        raise ValueError("--config FILE is required: the policy whose rollout to simulate")
    config = load_config(path)
    if args.rollout not in config.rollouts:
        known = ", ".join(sorted(config.rollouts)) or "none"
        raise ValueError(f"no rollout {args.rollout!r} in {path} (rollouts: {known})")
    spec = config.rollouts[args.rollout]
    if args.step_seconds is not None:
        spec = with_step_seconds(spec, args.step_seconds)
    if args.interval_seconds is not None:
        spec = spec.model_copy(update={"interval_seconds": args.interval_seconds})
    traffic = Traffic(
        rps=args.rps,
        feedback_rate=args.feedback_rate,
        feedback_delay_s=args.feedback_delay_s,
        stable_hit5=args.stable_hit5,
        canary_hit5=args.canary_hit5,
        stable_p50_ms=args.stable_p50_ms,
        canary_p50_ms=args.canary_p50_ms,
        canary_error_rate=args.canary_error_rate,
        canary_nan_rate=args.canary_nan_rate,
        lane_hit5=parse_lane_hit5(args.lane_hit5),
        lane_shares=parse_lane_shares(args.lane_shares)
        if args.lane_shares
        else ((1.0 / N_LANES,) * N_LANES),
    )
    progress = None if args.quiet else stderr_progress(f"simulating {args.rollout}")
    result = simulate(spec, traffic, args.runs, args.seed, progress)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    runs = summary["runs"]
    print(
        f"{args.rollout}: {runs} runs, steps {list(spec.model_dump(mode='json')['steps'])}, "
        f"{spec.step_min_seconds:g}s per step, analysis every {spec.interval_seconds:g}s"
    )
    for outcome in ("promoted", "rolled_back", "paused", "undecided"):
        n = result.count(outcome)
        if n or outcome != "undecided":
            where = result.by_step(outcome)
            steps = ", ".join(f"step {k}: {v}" for k, v in where.items())
            print(f"  {outcome:<12}{n:>6}  {100 * n / runs:6.1f}%  {steps}")
    print(f"  median decision time    {summary['median_decision_seconds']:.0f}s")
    print(f"  median analyses         {result.median('analyses'):.0f}")
    print(f"  median exposed requests {summary['median_exposed_requests']:.0f}")
    return 0


def parse_lane_hit5(items: Sequence[str]) -> dict[str, float]:
    """`LANE=VALUE` pairs; LANE is `lane_3` or just `3`."""
    out = {}
    for item in items:
        lane, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--lane-hit5 expects LANE=VALUE, got {item!r}")
        name = lane.strip() if lane.strip().startswith("lane_") else f"lane_{lane.strip()}"
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--lane-hit5 {item!r}: {value!r} is not a number") from None
    return out


def parse_lane_shares(text: str) -> tuple[float, ...]:
    try:
        shares = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ValueError(f"--lane-shares expects {N_LANES} comma-separated numbers") from None
    if len(shares) != N_LANES:
        raise ValueError(f"--lane-shares expects {N_LANES} numbers, got {len(shares)}")
    return shares


def stderr_progress(label: str) -> Callable[[int, int], None]:
    """A one-line counter on stderr, redrawn at most every 5% of the runs."""
    last = [-1]

    def show(finished: int, total: int) -> None:
        step = max(1, total // 20)
        if finished // step != last[0] // step or finished == total:
            last[0] = finished
            sys.stderr.write(f"\r{label}: {finished}/{total} runs decided")
            if finished == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return show

"""Judge a canary's observations against a rollout's thresholds, metric by metric. Pure.

A metric is a named function of the observations plus the count of samples that back it and the
spec field that says how many samples it needs (`min_requests` for traffic metrics,
`min_feedback` for the ones computed from user feedback). Thresholds name metrics
(`<metric>_max`/`<metric>_min`), so a new signal is one `register_metric` call and one
Thresholds field.

Verdicts, per metric:
    pass          within the success bound
    fail          outside the success bound, inside the rollback bound: hold
    breach        outside the rollback bound: counts toward failure_limit
    insufficient  fewer samples than needed, unless a breach is already certain (the value
                  still breaches when every missing sample is the best possible one)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from lvm_gateway.contract.rollout import Bound, RolloutSpec
from lvm_gateway.contract.windows import DIVERTED, EMPTY, FEEDBACK, HITS, INVALID, REQUESTS
from lvm_gateway.rollout.observations import Observations, quantile_ms

HIT5 = HITS[5]


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    BREACH = "breach"
    INSUFFICIENT = "insufficient"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    # value(observations, pad): the metric with `pad` extra best-case samples; None when no data.
    value: Callable[[Observations, int], float | None]
    samples: Callable[[Observations], int]
    guard: str = "min_requests"  # the RolloutSpec field giving the samples needed
    # where(observations): what the value is about, when not the whole variant (e.g. "lane_3")
    where: Callable[[Observations], str | None] | None = None


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def _error_rate(obs: Observations, pad: int) -> float | None:
    # Requests diverted from the canary (its circuit open) are failures it did not count.
    diverted = obs.canary.get(DIVERTED)
    n = obs.canary.requests + diverted + pad
    return (obs.canary.errors + diverted) / n if n else None


def _p95_ms(obs: Observations, pad: int) -> float | None:
    return quantile_ms(obs.canary.histogram(), 0.95, extra_fast=pad)


def _canary_requests(obs: Observations) -> int:
    return obs.canary.requests + obs.canary.get(DIVERTED)


def _canary_feedback(obs: Observations) -> int:
    return obs.canary_quality.get(FEEDBACK)


def _share(counter: str, of: str) -> Callable[[Observations, int], float | None]:
    """counter/of on the canary; padding adds best-case samples (no `counter` for a bad count)."""

    def value(obs: Observations, pad: int) -> float | None:
        total = obs.canary.get(of) + pad
        return obs.canary.get(counter) / total if total else None

    return value


def _hit5(obs: Observations, pad: int) -> float | None:
    canary = obs.canary_quality
    total = canary.get(FEEDBACK) + pad
    return (canary.get(HIT5) + pad) / total if total else None


# A lane is compared only once both variants have this much feedback on it.
LANE_MIN_FEEDBACK = 20
# One-sided 95%: a lane's shortfall counts only beyond what sampling noise explains. With 16
# lanes judged every interval on a few dozen feedbacks each, raw per-lane rates differ by 20%
# by chance alone (seen in the demo: a healthy lane "breached" before the degraded one had data).
LANE_Z = 1.645


def _lane_deltas(obs: Observations) -> dict[str, float]:
    """Each compared lane's relative Hit@5 shortfall of the canary against stable, net of noise:
    (p_stable - p_canary - z * standard error of the difference) / p_stable, at least 0."""
    out = {}
    canary, stable = obs.canary_quality, obs.stable_quality
    for lane in sorted(canary.lanes() & stable.lanes()):
        fb_c, fb_s = canary.get(FEEDBACK, lane), stable.get(FEEDBACK, lane)
        if min(fb_c, fb_s) < LANE_MIN_FEEDBACK:
            continue
        base = stable.get(HIT5, lane) / fb_s
        if base <= 0:
            continue
        rate = canary.get(HIT5, lane) / fb_c
        se = math.sqrt(base * (1 - base) / fb_s + rate * (1 - rate) / fb_c)
        out[lane] = max(0.0, (base - rate - LANE_Z * se) / base)
    return out


def _lane_delta(obs: Observations, pad: int) -> float | None:
    """The worst relative Hit@5 shortfall of the canary against stable on any one lane."""
    if pad:
        return None  # no best case to claim across lanes: thin data stays insufficient
    return max(_lane_deltas(obs).values(), default=None)


def _worst_lane(obs: Observations) -> str | None:
    deltas = _lane_deltas(obs)
    return max(deltas, key=deltas.__getitem__) if deltas else None


register_metric(Metric("error_rate", "", _error_rate, _canary_requests))
register_metric(Metric("p95_ms", "ms", _p95_ms, _canary_requests))
register_metric(Metric("empty_rate", "", _share(EMPTY, REQUESTS), _canary_requests))
register_metric(Metric("invalid_rate", "", _share(INVALID, REQUESTS), _canary_requests))
register_metric(Metric("hit5", "", _hit5, _canary_feedback, guard="min_feedback"))
register_metric(
    Metric("lane_delta", "", _lane_delta, _canary_feedback, guard="min_feedback", where=_worst_lane)
)


def violates(value: float, kind: Bound, limit: float) -> bool:
    return value > limit if kind == "max" else value < limit


@dataclass(frozen=True)
class MetricResult:
    metric: str
    kind: Bound
    value: float | None
    samples: int
    needed: int
    success: float | None
    rollback: float | None
    verdict: Verdict
    where: str | None = None  # e.g. the lane a lane_delta value comes from

    def describe(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        if self.where is not None:
            shown += f" ({self.where})"
        if self.verdict == Verdict.BREACH:
            op = ">" if self.kind == "max" else "<"
            return f"{self.metric} {shown} {op} {self.rollback:g}"
        if self.verdict == Verdict.FAIL:
            op = ">" if self.kind == "max" else "<"
            return f"{self.metric} {shown} {op} {self.success:g}"
        if self.verdict == Verdict.INSUFFICIENT:
            return f"{self.metric}: {self.samples}/{self.needed} samples"
        return f"{self.metric} {shown} ok"


@dataclass(frozen=True)
class Analysis:
    results: tuple[MetricResult, ...]
    requests: int
    min_requests: int

    @property
    def breached(self) -> tuple[MetricResult, ...]:
        return tuple(r for r in self.results if r.verdict == Verdict.BREACH)

    @property
    def insufficient(self) -> bool:
        return self.requests < self.min_requests or any(
            r.verdict == Verdict.INSUFFICIENT for r in self.results
        )

    @property
    def passed(self) -> bool:
        return not self.insufficient and all(r.verdict == Verdict.PASS for r in self.results)

    def values(self) -> dict[str, float | None]:
        return {r.metric: r.value for r in self.results}


def analyse(obs: Observations, spec: RolloutSpec) -> Analysis:
    bounds: dict[tuple[str, Bound], dict[str, float]] = {}
    for side, thresholds in (("success", spec.success), ("rollback", spec.rollback)):
        for metric, kind, limit in thresholds.bounds():
            bounds.setdefault((metric, kind), {})[side] = limit
    results = []
    for (name, kind), limits in bounds.items():
        metric = METRICS[name]
        samples = metric.samples(obs)
        needed = int(getattr(spec, metric.guard))
        value = metric.value(obs, 0)
        ok, bad = limits.get("success"), limits.get("rollback")
        if samples < needed:
            best = metric.value(obs, needed - samples)
            certain = best is not None and bad is not None and violates(best, kind, bad)
            verdict = Verdict.BREACH if certain else Verdict.INSUFFICIENT
        elif value is None:
            verdict = Verdict.INSUFFICIENT
        elif bad is not None and violates(value, kind, bad):
            verdict = Verdict.BREACH
        elif ok is not None and violates(value, kind, ok):
            verdict = Verdict.FAIL
        else:
            verdict = Verdict.PASS
        where = metric.where(obs) if metric.where is not None and value is not None else None
        results.append(MetricResult(name, kind, value, samples, needed, ok, bad, verdict, where))
    return Analysis(tuple(results), obs.canary.requests, spec.min_requests)

"""Judge a canary's observations: SLO guards on its own values, and the canary-vs-baseline judge.

Guards. A metric is a named function of the observations plus the count of samples that back it
and the spec field that says how many samples it needs (`min_requests` for traffic metrics,
`min_feedback` for the ones computed from user feedback). Thresholds name metrics
(`<metric>_max`/`<metric>_min`), so a new signal is one `register_metric` call and one
Thresholds field. Verdicts, per metric:
    pass          within the success bound
    fail          outside the success bound, inside the rollback bound: hold
    breach        outside the rollback bound: counts toward failure_limit
    insufficient  fewer samples than needed, unless a breach is already certain (the value
                  still breaches when every missing sample is the best possible one)

Judge (docs/judge.md). For each metric family the thresholds bound, an anytime-valid test
(rollout.stats) of "the canary is worse than its baseline by more than the margin", on the
step's counts for traffic signals and the rollout's for feedback and lanes. Each test stands:
    harm          the confidence sequence lies above the margin: roll back
    clear         non-inferiority shown, or the exposure budget met (the samples it needs) with
                  the estimate within the margin
    suspect       budget met, harm not shown, but the estimate is beyond the margin: hold
    insufficient  fewer samples than needed on either side: hold
    waived        a lane the spec waives: never holds (its harm still counts)

A dead canary: requests it should have served and did not (`DIVERTED`: its circuit open, so the
policy sent its users to stable, or a fallback or shadow copy found it open; a mixture with no
expert left) count as requests and errors, and any of them rolls back: an open circuit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from lvm_gateway.contract.lvm import N_LANES, lane_name
from lvm_gateway.contract.rollout import Bound, RolloutSpec
from lvm_gateway.contract.windows import (
    DIVERTED,
    EMPTY,
    FEEDBACK,
    HITS,
    INVALID,
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    REQUESTS,
    lane_field,
)
from lvm_gateway.rollout.observations import Observations, VariantWindow, quantile_ms
from lvm_gateway.rollout.stats import Evidence, Outcome, compare, rate_interval

HIT5 = HITS[5]
# Requests diverted from the canary (its circuit open: the policy sent its users to stable, a
# fallback or shadow copy found it open) are failures it never counted; any of them is also the
# open-circuit rollback signal.
CIRCUIT_OPEN = DIVERTED
LANES: tuple[str, ...] = tuple(lane_name(i) for i in range(N_LANES))


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
    # (only asked when the value is beyond 0: where a shortfall is, not where none is)
    where: Callable[[Observations], str | None] | None = None
    # rate(observations, limit) -> (count, out of, level): the proportion whose anytime-valid
    # interval must lie beyond `level` before a value past the rollback limit is a breach
    # (noise is not evidence). None: the value is already net of noise.
    rate: Callable[[Observations, float], tuple[int, int, float]] | None = None


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def requests(window: VariantWindow) -> int:
    """Requests the variant served or should have served (diverted ones included)."""
    return window.requests + window.get(DIVERTED)


def failures(window: VariantWindow) -> int:
    return window.errors + window.get(DIVERTED)


def _error_rate(obs: Observations, pad: int) -> float | None:
    n = requests(obs.canary) + pad
    return failures(obs.canary) / n if n else None


def _p95_ms(obs: Observations, pad: int) -> float | None:
    return quantile_ms(obs.canary.histogram(), 0.95, extra_fast=pad)


def _canary_requests(obs: Observations) -> int:
    return requests(obs.canary)


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


# The lane_delta guard's own noise allowance: an anytime-valid interval per lane at 5% shared
# by the 16 lanes (Bonferroni), so no lane "breaches" on sampling noise however long it runs.
LANE_GUARD_ALPHA = 0.05 / N_LANES
LANE_GUARD_TAU = 0.10
# The SLO guards' mixing scale: most sensitive to rates a few points past their limit.
GUARD_TAU = 0.05
# A lane is compared by the lane_delta guard only once both variants have this much feedback.
LANE_MIN_FEEDBACK = 20


_LANE_KEYS = {lane: (lane_field(HIT5, lane), lane_field(FEEDBACK, lane)) for lane in LANES}


def lane_hit5(obs: Observations, lane: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """(hits, feedback) of the canary and of stable on one lane, over the whole rollout."""
    hits, feedback = _LANE_KEYS[lane]
    canary, stable = obs.canary_quality.counts, obs.stable_quality.counts
    return (
        (int(canary.get(hits, 0)), int(canary.get(feedback, 0))),
        (int(stable.get(hits, 0)), int(stable.get(feedback, 0))),
    )


def _lane_deltas(obs: Observations) -> dict[str, float]:
    """Each lane's relative Hit@5 shortfall of the canary against stable, net of noise: the
    anytime-valid lower bound of (p_stable - p_canary), over p_stable, at least 0. Lanes with
    too little feedback on either side to trust the interval are left out."""
    out = {}
    for lane in LANES:
        canary, stable = lane_hit5(obs, lane)
        if min(canary[1], stable[1]) < LANE_MIN_FEEDBACK or stable[0] <= 0:
            continue
        ev = compare(lane, canary, stable, 0.0, LANE_GUARD_ALPHA, LANE_GUARD_TAU, False)
        if ev.lower is not None and ev.baseline:
            out[lane] = max(0.0, ev.lower / ev.baseline)
    return out


def _lane_delta(obs: Observations, pad: int) -> float | None:
    """The worst relative Hit@5 shortfall of the canary against stable on any one lane."""
    if pad:
        return None  # no best case to claim across lanes: thin data stays insufficient
    return max(_lane_deltas(obs).values(), default=None)


def _worst_lane(obs: Observations) -> str | None:
    deltas = _lane_deltas(obs)
    worst = max(deltas, key=deltas.__getitem__) if deltas else None
    return worst if worst is not None and deltas[worst] > 0 else None


def _rate_of(counter: str, of: str) -> Callable[[Observations, float], tuple[int, int, float]]:
    def rate(obs: Observations, limit: float) -> tuple[int, int, float]:
        return obs.canary.get(counter), obs.canary.get(of), limit

    return rate


def _error_counts(obs: Observations, limit: float) -> tuple[int, int, float]:
    return failures(obs.canary), requests(obs.canary), limit


def _over_p95(obs: Observations, limit: float) -> tuple[int, int, float]:
    """p95 > limit exactly when more than 5% of requests are slower than limit."""
    hist = obs.canary.histogram()
    return sum(hist[slow_bucket(limit) :]), sum(hist), 0.05


def _hit5_counts(obs: Observations, limit: float) -> tuple[int, int, float]:
    return obs.canary_quality.get(HIT5), obs.canary_quality.get(FEEDBACK), limit


register_metric(Metric("error_rate", "", _error_rate, _canary_requests, rate=_error_counts))
register_metric(Metric("p95_ms", "ms", _p95_ms, _canary_requests, rate=_over_p95))
register_metric(
    Metric(
        "empty_rate", "", _share(EMPTY, REQUESTS), _canary_requests, rate=_rate_of(EMPTY, REQUESTS)
    )
)
register_metric(
    Metric(
        "invalid_rate",
        "",
        _share(INVALID, REQUESTS),
        _canary_requests,
        rate=_rate_of(INVALID, REQUESTS),
    )
)
register_metric(
    Metric("hit5", "", _hit5, _canary_feedback, guard="min_feedback", rate=_hit5_counts)
)
register_metric(
    Metric("lane_delta", "", _lane_delta, _canary_feedback, guard="min_feedback", where=_worst_lane)
)


def violates(value: float, kind: Bound, limit: float) -> bool:
    return value > limit if kind == "max" else value < limit


def evident(metric: Metric, obs: Observations, kind: Bound, limit: float, alpha: float) -> bool:
    """Is the canary past `limit` beyond sampling noise, at any time the question is asked?"""
    if metric.rate is None:
        return True
    count, total, level = metric.rate(obs, limit)
    lower, upper = rate_interval(count, total, alpha, GUARD_TAU)
    return lower > level if kind == "max" else upper < level


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


class Standing(StrEnum):
    HARM = "harm"
    CLEAR = "clear"
    SUSPECT = "suspect"
    INSUFFICIENT = "insufficient"
    WAIVED = "waived"


@dataclass(frozen=True)
class Judgement:
    """One judge test: its evidence and what it means for the step."""

    evidence: Evidence
    needed: int  # samples per side before the test may clear on its budget
    standing: Standing

    def describe(self) -> str:
        ev = self.evidence
        if self.standing == Standing.INSUFFICIENT:
            have = min(ev.samples, ev.baseline_samples)
            return f"{ev.test}: {have}/{self.needed} samples"
        return f"{ev.test} {self.standing}: {ev.describe()}"


# The judge's tests: (test, the threshold metric whose bound switches it on, scope).
# Traffic tests compare the step's counts, feedback tests the whole rollout's.
_TRAFFIC_TESTS = (
    ("error_rate", "error_rate"),
    ("invalid_rate", "invalid_rate"),
    ("empty_rate", "empty_rate"),
    ("slow_rate", "p95_ms"),
)
# (judge test = its window counter and its Margins field, the threshold metric that turns it on)
_FEEDBACK_TESTS = tuple((HITS[k], "hit5") for k in sorted(HITS))


def slow_bucket(slo_ms: float) -> int:
    """The first latency bucket wholly above the SLO: requests from it on are slow. The SLO is
    rounded up to a bucket edge, so a request is never called slow on a guess."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if bound >= slo_ms:
            return i + 1
    return len(LATENCY_BOUNDS_MS)


def _traffic_counts(test: str, window: VariantWindow, slow_from: int) -> tuple[int, int]:
    if test == "error_rate":
        return failures(window), requests(window)
    if test == "slow_rate":
        hist = [window.get(f) for f in LATENCY_FIELDS]
        return sum(hist[slow_from:]), sum(hist)
    counter = test.removesuffix("_rate")
    return window.get(counter), window.requests


def _bounded(spec: RolloutSpec) -> set[str]:
    return {m for t in (spec.success, spec.rollback) for m, _, _ in t.bounds()}


def _slo_ms(spec: RolloutSpec) -> float | None:
    if spec.judge.latency_slo_ms is not None:
        return spec.judge.latency_slo_ms
    return (
        spec.success.p95_ms_max
        if spec.success.p95_ms_max is not None
        else (spec.rollback.p95_ms_max)
    )


def planned_tests(spec: RolloutSpec) -> tuple[list[str], list[str], bool]:
    """The judge's traffic tests, feedback tests and whether lanes are judged, for this spec."""
    bounded, margins = _bounded(spec), spec.judge.margins
    traffic = [t for t, m in _TRAFFIC_TESTS if m in bounded and getattr(margins, t) is not None]
    if "slow_rate" in traffic and _slo_ms(spec) is None:
        traffic.remove("slow_rate")
    feedback = [t for t, m in _FEEDBACK_TESTS if m in bounded and getattr(margins, t) is not None]
    lanes = "lane_delta" in bounded and margins.lane_hit5 is not None
    return traffic, feedback, lanes


def alpha_per_test(
    spec: RolloutSpec, planned: tuple[list[str], list[str], bool], guards: int = 0
) -> float:
    """Each test's share of the rollout's alpha (Bonferroni): traffic tests and SLO guards
    restart every step, feedback and lane tests run once over the rollout."""
    traffic, feedback, lanes = planned
    count = (len(traffic) + guards) * len(spec.steps) + len(feedback)
    count += len(LANES) if lanes else 0
    return spec.judge.alpha / max(count, 1)


def _stand(ev: Evidence, needed: int, waived: bool) -> Standing:
    if ev.verdict == Outcome.HARM:
        return Standing.HARM
    if waived:
        return Standing.WAIVED
    if ev.verdict == Outcome.NON_INFERIOR:
        return Standing.CLEAR
    if min(ev.samples, ev.baseline_samples) < needed or ev.difference is None:
        return Standing.INSUFFICIENT
    return Standing.CLEAR if ev.difference <= ev.margin else Standing.SUSPECT


def judge(obs: Observations, spec: RolloutSpec) -> tuple[Judgement, ...]:
    """Every judge test the spec asks for, on these observations."""
    planned = planned_tests(spec)
    traffic, feedback, lanes = planned
    js = spec.judge
    alpha = alpha_per_test(spec, planned, len(_guard_bounds(spec)))
    margins = js.margins
    out = []
    # At 100% stable serves (next to) no one in the step: while its step window is short of the
    # budget, judge against what it did during the whole rollout.
    thin = requests(obs.stable) < spec.min_requests
    base = obs.stable_quality if thin else obs.stable
    slo = _slo_ms(spec)
    slow_from = slow_bucket(slo) if slo is not None else 0
    for test in traffic:
        margin = float(getattr(margins, test))
        ev = compare(
            test,
            _traffic_counts(test, obs.canary, slow_from),
            _traffic_counts(test, base, slow_from),
            margin, alpha, _tau(margin, js.mixing),
        )  # fmt: skip
        out.append(Judgement(ev, spec.min_requests, _stand(ev, spec.min_requests, False)))
    canary, stable = obs.canary_quality, obs.stable_quality
    for test in feedback:
        margin = float(getattr(margins, test))
        ev = compare(
            test,
            (canary.get(test), canary.get(FEEDBACK)),
            (stable.get(test), stable.get(FEEDBACK)),
            margin, alpha, _tau(margin, js.mixing), higher_is_worse=False,
        )  # fmt: skip
        out.append(Judgement(ev, spec.min_feedback, _stand(ev, spec.min_feedback, False)))
    if lanes:
        margin = float(margins.lane_hit5)  # type: ignore[arg-type]
        for lane in LANES:
            c, s = lane_hit5(obs, lane)
            if not c[1] and not s[1]:
                continue  # a lane no one asked about: nothing to judge, nothing to wait for
            ev = compare(
                f"lane_hit5@{lane}", c, s, margin, alpha, _tau(margin, js.mixing),
                higher_is_worse=False,
            )  # fmt: skip
            needed = js.lane_min_feedback
            out.append(Judgement(ev, needed, _stand(ev, needed, lane in js.waive_lanes)))
    return tuple(out)


def _tau(margin: float, mixing: float) -> float:
    # A zero margin ("any worsening") still needs a mixing scale: one percentage point.
    return mixing * (margin if margin > 0 else 0.01)


@dataclass(frozen=True)
class Analysis:
    results: tuple[MetricResult, ...]
    requests: int
    min_requests: int
    judgements: tuple[Judgement, ...] = ()
    circuit_open: int = 0  # times the canary's circuit was found open in the step

    @property
    def breached(self) -> tuple[MetricResult, ...]:
        return tuple(r for r in self.results if r.verdict == Verdict.BREACH)

    @property
    def harmed(self) -> tuple[Judgement, ...]:
        return tuple(j for j in self.judgements if j.standing == Standing.HARM)

    @property
    def holding(self) -> tuple[Judgement, ...]:
        """Judge tests that keep the step from advancing: suspect or short of samples."""
        return tuple(
            j for j in self.judgements if j.standing in (Standing.SUSPECT, Standing.INSUFFICIENT)
        )

    @property
    def insufficient(self) -> bool:
        return self.requests < self.min_requests or any(
            r.verdict == Verdict.INSUFFICIENT for r in self.results
        )

    @property
    def passed(self) -> bool:
        """Every guard passes and every judge test is clear (or waived)."""
        return (
            not self.insufficient
            and all(r.verdict == Verdict.PASS for r in self.results)
            and not self.harmed
            and not self.holding
        )

    def values(self) -> dict[str, float | None]:
        return {r.metric: r.value for r in self.results}

    def evidence(self) -> list[dict[str, object]]:
        """Per judge test: estimate, interval, statistic, threshold, verdict and standing."""
        return [
            {**j.evidence.as_dict(), "needed": j.needed, "standing": str(j.standing)}
            for j in self.judgements
        ]


def _guard_bounds(spec: RolloutSpec) -> dict[tuple[str, Bound], dict[str, float]]:
    """(metric, kind) -> {"success": limit, "rollback": limit}, for the bounds that are set."""
    bounds: dict[tuple[str, Bound], dict[str, float]] = {}
    for side, thresholds in (("success", spec.success), ("rollback", spec.rollback)):
        for metric, kind, limit in thresholds.bounds():
            bounds.setdefault((metric, kind), {})[side] = limit
    return bounds


def analyse(obs: Observations, spec: RolloutSpec) -> Analysis:
    bounds = _guard_bounds(spec)
    guard_alpha = alpha_per_test(spec, planned_tests(spec), len(bounds))
    results = []
    for (name, kind), limits in bounds.items():
        metric = METRICS[name]
        samples = metric.samples(obs)
        needed = int(getattr(spec, metric.guard))
        value = metric.value(obs, 0)
        ok, bad = limits.get("success"), limits.get("rollback")
        if samples < needed:
            best = metric.value(obs, needed - samples)
            # Certain for the value once the samples arrive; still a breach only on evidence.
            proven = (
                best is not None
                and bad is not None
                and violates(best, kind, bad)
                and evident(metric, obs, kind, bad, guard_alpha)
            )
            verdict = Verdict.BREACH if proven else Verdict.INSUFFICIENT
        elif value is None:
            verdict = Verdict.INSUFFICIENT
        elif bad is not None and violates(value, kind, bad):
            # Past the rollback limit: a breach once noise cannot explain it, else a hold.
            verdict = (
                Verdict.BREACH if evident(metric, obs, kind, bad, guard_alpha) else Verdict.FAIL
            )
        elif ok is not None and violates(value, kind, ok):
            verdict = Verdict.FAIL
        else:
            verdict = Verdict.PASS
        where = metric.where(obs) if metric.where is not None and value else None
        results.append(MetricResult(name, kind, value, samples, needed, ok, bad, verdict, where))
    return Analysis(
        tuple(results),
        requests(obs.canary),
        spec.min_requests,
        judge(obs, spec),
        obs.canary.get(CIRCUIT_OPEN),
    )

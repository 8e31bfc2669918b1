"""Anytime-valid comparison of a canary's proportion with its baseline's. Pure; no I/O.

The question each test answers: is the canary worse than the baseline by more than `margin`?
With theta = (canary - baseline) oriented so that positive is worse (for a hit rate, baseline -
canary), the test keeps a confidence sequence for theta: an interval that covers the true theta
at every instant at once with probability >= 1 - alpha, however often it is looked at and for
however long. It is the normal-mixture (Robbins) boundary used by the mSPRT of Johari et al.
("Always valid inference", 2017/2022) and Howard et al. ("Time-uniform, nonparametric,
nonasymptotic confidence sequences", 2021):

    theta_hat +- sqrt( V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V)) )

where V is the variance of theta_hat (p_c(1-p_c)/n_c + p_b(1-p_b)/n_b) and tau^2 the mixing
variance (the scale of the effects the test is most sensitive to). The statistic depends on the
cumulative counts only, so the counts may be read at any times, as often as wanted.

Verdicts: harm (the whole interval is above the margin), non-inferior (the whole interval is
below it), undecided otherwise. The interval is two-sided, so one alpha covers both claims.
docs/judge.md explains the choice, its parameters and its limits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

# Below this many samples on either side the normal approximation behind V is not trusted:
# the test stays undecided whatever the counts say.
MIN_SAMPLES = 10


class Outcome(StrEnum):
    HARM = "harm"
    NON_INFERIOR = "non-inferior"
    UNDECIDED = "undecided"


def smoothed_variance(successes: float, trials: float) -> float:
    """The Bernoulli variance at the add-one (Laplace) rate: never 0, so that 0 errors in 50
    requests is not read as proof of a 0% error rate."""
    p = (successes + 1.0) / (trials + 2.0)
    return p * (1.0 - p)


def radius(variance: float, tau2: float, alpha: float) -> float:
    """Half-width of the two-sided normal-mixture confidence sequence at estimate variance V."""
    if variance <= 0:
        return 0.0
    widening = (variance + tau2) / tau2
    cost = 2.0 * math.log(1.0 / alpha) + math.log((variance + tau2) / variance)
    return math.sqrt(variance * widening * cost)


def rate_interval(successes: int, trials: int, alpha: float, tau: float) -> tuple[float, float]:
    """The anytime-valid interval for one rate (the SLO guards' noise allowance)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    half = radius(smoothed_variance(successes, trials) / trials, tau * tau, alpha)
    return p - half, p + half


@dataclass(frozen=True)
class Evidence:
    """One test at one instant, everything needed to see why it says what it says."""

    test: str  # e.g. "error_rate", "hit5", "lane_hit5@lane_3"
    canary: float | None  # the canary's rate
    baseline: float | None  # the baseline's rate over the matching period
    difference: float | None  # theta_hat, oriented so that positive means the canary is worse
    lower: float | None  # the anytime-valid interval for theta
    upper: float | None
    statistic: float | None  # (theta_hat - margin) / sd(theta_hat)
    threshold: float | None  # the anytime-valid critical value for the statistic (vs 1.96)
    margin: float
    alpha: float
    samples: int  # the canary's
    baseline_samples: int
    verdict: Outcome

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = str(self.verdict)
        return data

    def describe(self) -> str:
        if self.difference is None or self.lower is None or self.upper is None:
            return f"{self.test}: {self.samples} canary / {self.baseline_samples} baseline samples"
        return (
            f"{self.test} {self.canary:.4g} vs {self.baseline:.4g}: worse by "
            f"{self.difference:+.4g} [{self.lower:+.4g}, {self.upper:+.4g}], margin {self.margin:g}"
        )


def compare(
    test: str,
    canary: tuple[int, int],
    baseline: tuple[int, int],
    margin: float,
    alpha: float,
    tau: float,
    higher_is_worse: bool = True,
) -> Evidence:
    """Is the canary's rate (successes, trials) worse than the baseline's by more than margin?"""
    (x_c, n_c), (x_b, n_b) = canary, baseline
    if n_c <= 0 or n_b <= 0:
        return Evidence(
            test, x_c / n_c if n_c > 0 else None, x_b / n_b if n_b > 0 else None, None, None, None,
            None, None, margin, alpha, max(n_c, 0), max(n_b, 0), Outcome.UNDECIDED,
        )  # fmt: skip
    p_c, p_b = x_c / n_c, x_b / n_b
    diff = p_c - p_b if higher_is_worse else p_b - p_c
    variance = smoothed_variance(x_c, n_c) / n_c + smoothed_variance(x_b, n_b) / n_b
    half = radius(variance, tau * tau, alpha)
    sd = math.sqrt(variance)
    lower, upper = diff - half, diff + half
    verdict = Outcome.UNDECIDED
    if min(n_c, n_b) >= MIN_SAMPLES:
        if lower > margin:
            verdict = Outcome.HARM
        elif upper < margin:
            verdict = Outcome.NON_INFERIOR
    return Evidence(
        test, p_c, p_b, diff, lower, upper, (diff - margin) / sd, half / sd, margin, alpha,
        n_c, n_b, verdict,
    )  # fmt: skip

"""The anytime-valid comparison: its formula, its verdicts and its false-alarm bound."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lvm_gateway.rollout.stats import (
    MIN_SAMPLES,
    Outcome,
    compare,
    radius,
    rate_interval,
    smoothed_variance,
)


def mixture_likelihood_ratio(theta_hat: float, theta0: float, v: float, tau2: float) -> float:
    """The mSPRT statistic of Johari et al. for a normal estimate with variance v."""
    return math.sqrt(v / (v + tau2)) * math.exp(
        tau2 * (theta_hat - theta0) ** 2 / (2 * v * (v + tau2))
    )


@pytest.mark.parametrize(("v", "tau2", "alpha"), [(1e-4, 1e-3, 0.05), (4e-3, 1e-4, 0.001)])
def test_radius_is_where_the_mixture_likelihood_ratio_reaches_one_over_alpha(
    v: float, tau2: float, alpha: float
) -> None:
    r = radius(v, tau2, alpha)
    assert mixture_likelihood_ratio(0.3 + r, 0.3, v, tau2) == pytest.approx(1 / alpha)
    assert mixture_likelihood_ratio(0.3 + 0.99 * r, 0.3, v, tau2) < 1 / alpha


def test_verdicts_and_the_evidence_record() -> None:
    # Canary errors 5% vs 1% over 4,000 requests each: worse by 4 points, margin 0.5 point.
    ev = compare("error_rate", (200, 4000), (40, 4000), 0.005, 0.001, 0.005)
    assert ev.verdict == Outcome.HARM
    assert (ev.canary, ev.baseline, ev.difference) == pytest.approx((0.05, 0.01, 0.04))
    assert ev.lower is not None and ev.upper is not None
    assert 0.005 < ev.lower < 0.04 < ev.upper
    assert ev.statistic is not None and ev.threshold is not None
    assert ev.statistic > ev.threshold  # harm: the z of (difference - margin) beats the bound
    assert ev.threshold > 1.96  # always stricter than a one-look test
    assert ev.as_dict()["verdict"] == "harm" and "error_rate" in ev.describe()
    same = compare("error_rate", (40, 4000), (40, 4000), 0.02, 0.001, 0.02)
    assert same.verdict == Outcome.NON_INFERIOR and same.upper is not None
    assert same.upper < 0.02
    close = compare("error_rate", (48, 4000), (40, 4000), 0.002, 0.001, 0.002)
    assert close.verdict == Outcome.UNDECIDED


def test_hit_rates_are_worse_when_lower() -> None:
    ev = compare("hit5", (500, 1000), (660, 1000), 0.03, 0.01, 0.03, higher_is_worse=False)
    assert ev.difference == pytest.approx(0.16) and ev.verdict == Outcome.HARM
    better = compare("hit5", (660, 1000), (590, 1000), 0.03, 0.01, 0.03, higher_is_worse=False)
    assert better.difference == pytest.approx(-0.07)
    assert better.verdict == Outcome.NON_INFERIOR


def test_no_verdict_on_too_few_samples_or_none_at_all() -> None:
    few = compare("error_rate", (MIN_SAMPLES - 1, MIN_SAMPLES - 1), (0, 1000), 0.0, 0.05, 0.01)
    assert few.verdict == Outcome.UNDECIDED and few.difference == pytest.approx(1.0)
    empty = compare("error_rate", (0, 0), (0, 1000), 0.0, 0.05, 0.01)
    assert empty.verdict == Outcome.UNDECIDED and empty.difference is None
    assert "0 canary" in empty.describe()


def test_zero_errors_in_a_few_requests_proves_nothing() -> None:
    # Add-one smoothing: 0/50 is not a 0% error rate with zero variance.
    assert smoothed_variance(0, 50) > 0
    ev = compare("error_rate", (0, 50), (0, 50), 0.005, 0.05, 0.005)
    assert ev.verdict == Outcome.UNDECIDED
    lower, upper = rate_interval(0, 50, 0.05, 0.05)
    assert lower < 0 < 0.01 < upper


def _first_harm(
    p_canary: float, p_base: float, per_look: tuple[int, int], looks: int, runs: int,
    margin: float, alpha: float, tau: float, seed: int,
) -> float:  # fmt: skip
    """Share of runs in which the test ever says harm, evaluated on cumulative counts at
    every look (the controller reads cumulative windows every interval)."""
    rng = np.random.default_rng(seed)
    (nc, nb) = per_look
    xc = rng.binomial(nc, p_canary, (runs, looks)).cumsum(axis=1)
    xb = rng.binomial(nb, p_base, (runs, looks)).cumsum(axis=1)
    alarms = 0
    for r in range(runs):
        for k in range(looks):
            ev = compare(
                "t", (int(xc[r, k]), nc * (k + 1)), (int(xb[r, k]), nb * (k + 1)),
                margin, alpha, tau,
            )  # fmt: skip
            if ev.verdict == Outcome.HARM:
                alarms += 1
                break
    return alarms / runs


def test_false_alarms_stay_below_alpha_however_often_it_looks() -> None:
    # 1,000 A/A runs, a 10% step (10 canary and 90 baseline samples per look), 200 looks each.
    runs, alpha = 1000, 0.05
    slack = 3 * math.sqrt(alpha * (1 - alpha) / runs)  # 3 binomial standard errors
    rate = _first_harm(0.3, 0.3, (10, 90), 200, runs, 0.0, alpha, 0.05, seed=1)
    assert rate <= alpha + slack
    # The worst case of "no harm": the canary exactly `margin` worse. Still within alpha.
    edge = _first_harm(0.35, 0.3, (10, 90), 200, runs, 0.05, alpha, 0.05, seed=2)
    assert edge <= alpha + slack
    # Rare events (error rates): the smoothing keeps early looks honest.
    rare = _first_harm(0.002, 0.002, (50, 450), 200, runs, 0.0, alpha, 0.01, seed=3)
    assert rare <= alpha + slack


def test_a_fixed_one_look_threshold_would_not_hold() -> None:
    # What the seed did per lane: z > 1.645 at every look. The same A/A data alarms far more
    # often than 5%: the reason for the anytime-valid boundary.
    rng = np.random.default_rng(4)
    runs, looks, nc, nb, p = 1000, 200, 10, 90, 0.3
    xc = rng.binomial(nc, p, (runs, looks)).cumsum(axis=1)
    xb = rng.binomial(nb, p, (runs, looks)).cumsum(axis=1)
    n = np.arange(1, looks + 1)
    pc, pb = xc / (nc * n), xb / (nb * n)
    se = np.sqrt(pc * (1 - pc) / (nc * n) + pb * (1 - pb) / (nb * n)).clip(1e-9)
    naive = ((pc - pb) / se > 1.645).any(axis=1).mean()
    assert naive > 0.2

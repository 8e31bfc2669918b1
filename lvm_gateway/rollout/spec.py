"""The `rollouts:` section of the policy YAML, parsed strictly.

Thresholds are a set of named bounds, each `<metric>_max` or `<metric>_min`, where `<metric>` is
a name in `rollout.analysis.METRICS`. A new signal is one more field here plus one more
registered metric; nothing else changes.

The defaults are the seed's success criteria and rollback triggers, quality included. A
`success:` or `rollback:` mapping in the YAML replaces its defaults as a whole, so a policy judges
exactly the bounds it lists (a rollout without user feedback lists no hit5/lane_delta bound;
otherwise it would wait for feedback and pause with "insufficient traffic").

`judge:` configures the canary-vs-stable judge beside those bounds (docs/judge.md); it comes
from the YAML only (`rolloutctl thresholds` does not change it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lvm_gateway.lvm.world import N_LANES
from lvm_gateway.policies.base import StrictModel

Step = float | Literal["shadow"]
LANE_NAMES = frozenset(f"lane_{i}" for i in range(N_LANES))
Bound = Literal["max", "min"]


class Thresholds(StrictModel):
    """Bounds on the canary's observed metrics. Absent keys are not judged."""

    p95_ms_max: float | None = Field(default=None, gt=0)
    error_rate_max: float | None = Field(default=None, ge=0, le=1)
    hit5_min: float | None = Field(default=None, ge=0, le=1)  # Hit@5 proxy from feedback
    empty_rate_max: float | None = Field(default=None, ge=0, le=1)  # best neighbour < 0.4
    lane_delta_max: float | None = Field(default=None, ge=0, le=1)  # worst lane vs stable
    invalid_rate_max: float | None = Field(default=None, ge=0, le=1)  # NaN/Inf, wrong dim

    def bounds(self) -> Iterator[tuple[str, Bound, float]]:
        """(metric, "max"|"min", limit) for every bound that is set."""
        for key, limit in self:
            if limit is not None:
                metric, kind = key.rsplit("_", 1)
                yield metric, kind, float(limit)  # type: ignore[misc]


class Margins(StrictModel):
    """How much worse than the baseline the canary may be, per judge test, as a difference of
    rates (0.005 = half a percentage point). None switches that test off."""

    error_rate: float | None = Field(default=None, ge=0, le=1)  # errors + diverted requests
    invalid_rate: float | None = Field(default=None, ge=0, le=1)
    empty_rate: float | None = Field(default=None, ge=0, le=1)
    slow_rate: float | None = Field(default=None, ge=0, le=1)  # share over the latency SLO
    hit1: float | None = Field(default=None, ge=0, le=1)
    hit5: float | None = Field(default=None, ge=0, le=1)
    hit10: float | None = Field(default=None, ge=0, le=1)
    lane_hit5: float | None = Field(default=None, ge=0, le=1)  # each lane's Hit@5


class JudgeSpec(StrictModel):
    """The canary-vs-baseline judge (docs/judge.md). A test runs for each metric family the
    thresholds bound: error_rate, invalid_rate, empty_rate; slow_rate for p95_ms; hit1/5/10 for
    hit5; lane_hit5 for lane_delta."""

    alpha: float = Field(default=0.05, gt=0, lt=1)  # false-alarm budget for the whole rollout
    # A `margins:` mapping in the YAML replaces these as a whole, like success/rollback.
    margins: Margins = Margins(
        error_rate=0.005,
        invalid_rate=0.005,
        empty_rate=0.03,
        slow_rate=0.05,
        hit1=0.05,
        hit5=0.05,
        hit10=0.05,
        lane_hit5=0.15,
    )
    mixing: float = Field(default=1.0, gt=0)  # mixing sd tau = mixing x margin (0-margin: 0.01)
    latency_slo_ms: float | None = Field(default=None, gt=0)  # default: success.p95_ms_max
    lane_min_feedback: int = Field(default=50, ge=0)  # per lane and side, before a lane clears
    waive_lanes: tuple[str, ...] = ()  # lanes that need not clear (their harm still counts)

    @field_validator("waive_lanes")
    @classmethod
    def _known_lanes(cls, lanes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lane for lane in lanes if lane not in LANE_NAMES]
        if unknown:
            raise ValueError(f"unknown lane(s) {unknown}: lanes are lane_0..lane_{N_LANES - 1}")
        return lanes


# What `rolloutctl thresholds` may change at run time; the route and steps come from the YAML.
TUNABLE_KEYS = (
    "step_min_seconds",
    "interval_seconds",
    "min_requests",
    "min_feedback",
    "failure_limit",
    "max_hold_seconds",
    "shadow_percent",
)


class RolloutSpec(StrictModel):
    route: str
    steps: tuple[Step, ...] = (10.0, 20.0, 50.0, 100.0)
    step_min_seconds: float = Field(default=30, ge=0)
    interval_seconds: float = Field(default=5, gt=0)
    min_requests: int = Field(default=200, ge=0)
    min_feedback: int = Field(default=100, ge=0)  # per step, before any quality verdict
    failure_limit: int = Field(default=2, ge=1)
    max_hold_seconds: float = Field(default=600, gt=0)
    shadow_percent: float = Field(default=100, ge=0, le=100)  # mirrored share in a shadow step
    success: Thresholds = Thresholds(
        p95_ms_max=5,
        error_rate_max=0.001,
        hit5_min=0.60,
        empty_rate_max=0.10,
        lane_delta_max=0.15,
        invalid_rate_max=0.0,
    )
    rollback: Thresholds = Thresholds(
        p95_ms_max=10,
        error_rate_max=0.01,
        hit5_min=0.55,
        empty_rate_max=0.20,
        lane_delta_max=0.20,
        invalid_rate_max=0.01,
    )

    judge: JudgeSpec = JudgeSpec()

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if not steps:
            raise ValueError("needs at least one step")
        previous = 0.0
        for i, step in enumerate(steps):
            if step == "shadow":
                if i != 0:
                    raise ValueError(f"[{i}]: 'shadow' may only be the first step")
                continue
            if not 0 < float(step) <= 100:
                raise ValueError(f"[{i}]: must be in (0, 100]")
            if float(step) <= previous:
                raise ValueError(f"[{i}]: must be > {previous:g}")
            previous = float(step)
        if previous != 100:
            raise ValueError("the last step must be 100")
        return steps

    @model_validator(mode="after")
    def _rollback_looser_than_success(self) -> RolloutSpec:
        ok_bounds = {(m, k): v for m, k, v in self.success.bounds()}
        for metric, kind, bad in self.rollback.bounds():
            ok = ok_bounds.get((metric, kind))
            if ok is None:
                continue
            key = f"{metric}_{kind}"
            if kind == "max" and bad < ok:
                raise ValueError(f"rollback.{key} ({bad:g}) must be >= success.{key} ({ok:g})")
            if kind == "min" and bad > ok:
                raise ValueError(f"rollback.{key} ({bad:g}) must be <= success.{key} ({ok:g})")
        return self

    def step_weight(self, index: int) -> float:
        """Traffic percent on the canary at step `index`; a shadow step serves no user."""
        step = self.steps[index]
        return 0.0 if step == "shadow" else float(step)

    def tunables(self) -> dict[str, object]:
        """The run-time adjustable part, as held in Redis (seeded from the YAML on start)."""
        data = self.model_dump(mode="json")
        return {k: data[k] for k in (*TUNABLE_KEYS, "success", "rollback")}

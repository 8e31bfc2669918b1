"""A rollout as every part sees it: its spec (the YAML's `rollouts:` entry) and its status.

## Spec

The `rollouts:` section of the policy YAML, parsed strictly.

Thresholds are a set of named bounds, each `<metric>_max` or `<metric>_min`, where `<metric>` is
a name in `rollout.analysis.METRICS`. A new signal is one more field here plus one more
registered metric; nothing else changes.

The defaults are the LVM plan's success criteria and rollback triggers, quality included. A
`success:` or `rollback:` mapping in the YAML replaces its defaults as a whole, so a policy judges
exactly the bounds it lists (a rollout without user feedback lists no hit5/lane_delta bound;
otherwise it would wait for feedback and pause with "insufficient traffic").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lvm_gateway.contract.strict import StrictModel

Step = float | Literal["shadow"]
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


class PrometheusQuery(StrictModel):
    """An instant PromQL query; `{{canary}}`, `{{stable}}` and `{{rollout}}` are replaced by the
    variant and rollout names (escaped for a PromQL string) before each evaluation."""

    address: str  # the Prometheus base URL, e.g. http://prometheus:9090
    query: str = Field(min_length=1)
    # Short: the controller queries between renewals of its 3 s lease, so a hung Prometheus
    # must not hold the loop long enough to lose it.
    timeout_seconds: float = Field(default=1, gt=0, le=2)

    @field_validator("address")
    @classmethod
    def _http_url(cls, address: str) -> str:
        if not address.startswith(("http://", "https://")) or address.count("/") < 2:
            raise ValueError(f"{address!r} is not an http(s) URL")
        return address.rstrip("/")


class MetricProvider(StrictModel):
    prometheus: PrometheusQuery


class ProviderMetric(StrictModel):
    """A metric measured outside the gateway (Argo's AnalysisTemplate, Flagger's
    MetricTemplate): one number per analysis, judged against its bounds like the built-in
    metrics. No number (an empty result) holds the rollout like thin data does."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    provider: MetricProvider
    success_max: float | None = None
    success_min: float | None = None
    rollback_max: float | None = None
    rollback_min: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> ProviderMetric:
        builtin = {key.rsplit("_", 1)[0] for key in Thresholds.model_fields}
        if self.name in builtin:
            raise ValueError(f"{self.name!r} is a built-in metric; name this one differently")
        kinds = {k for k in ("max", "min") if self.bound("success", k) is not None
                 or self.bound("rollback", k) is not None}  # fmt: skip
        if not kinds:
            raise ValueError("give at least one bound (success_max, rollback_max, ...)")
        if len(kinds) > 1:
            raise ValueError("bound one side: *_max or *_min, not both")
        ok, bad = self.bound("success", "max"), self.bound("rollback", "max")
        if ok is not None and bad is not None and bad < ok:
            raise ValueError(f"rollback_max ({bad:g}) must be >= success_max ({ok:g})")
        ok, bad = self.bound("success", "min"), self.bound("rollback", "min")
        if ok is not None and bad is not None and bad > ok:
            raise ValueError(f"rollback_min ({bad:g}) must be <= success_min ({ok:g})")
        return self

    def bound(self, side: str, kind: str) -> float | None:
        value: float | None = getattr(self, f"{side}_{kind}")
        return value

    @property
    def kind(self) -> Bound:
        return "max" if self.success_max is not None or self.rollback_max is not None else "min"


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
    metrics: tuple[ProviderMetric, ...] = ()  # measured by a provider (Prometheus), not counted
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

    @field_validator("metrics")
    @classmethod
    def _unique_names(cls, metrics: tuple[ProviderMetric, ...]) -> tuple[ProviderMetric, ...]:
        names = [m.name for m in metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"metric names must be unique: {names}")
        return metrics

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


# -- status ------------------------------------------------------------------------------
# A rollout's state: its phase, step and weight, as one immutable value with a version.
#
#     Pending --start--> Progressing --(last step passes)--> Promoted
#                         |   ^   \
#                   pause |   | resume  \--(failure_limit breaches | rollback)--> RolledBack
#                         v   |
#                         Paused
#
# `start` retries a RolledBack rollout from its first step. Every change produces a new value
# with the same version; the store bumps the version when its compare-and-set succeeds.


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class Actor(StrEnum):
    CONTROLLER = "controller"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    name: str
    phase: Phase = Phase.PENDING
    step: int = -1  # index into the spec's steps; -1 before the first start
    weight: float = 0.0  # percent of users on the canary
    mirror: float = 0.0  # percent of requests mirrored to the canary (shadow step)
    stable: str | None = None
    canary: str | None = None
    reason: str = ""
    started_at: float | None = None
    step_started_at: float | None = None
    updated_at: float | None = None
    failures: int = 0  # consecutive analyses that breached a rollback bound
    version: int = 0

    def evolve(self, **changes: Any) -> RolloutStatus:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = str(self.phase)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutStatus:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["phase"] = Phase(known.get("phase", Phase.PENDING))
        return cls(**known)

    def same_state(self, other: RolloutStatus) -> bool:
        """Equal apart from the version and the update time: nothing worth a write."""
        return replace(self, version=0, updated_at=None) == replace(
            other, version=0, updated_at=None
        )

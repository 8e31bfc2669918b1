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

`judge:` configures the canary-vs-stable judge beside those bounds (docs/judge.md); it comes
from the YAML only (`rolloutctl thresholds` does not change it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from lvm_gateway.contract.humanize import format_path
from lvm_gateway.contract.lvm import N_LANES, lane_name
from lvm_gateway.contract.strict import Seq, StrictModel

Bound = Literal["max", "min"]
LANE_NAMES = frozenset(lane_name(i) for i in range(N_LANES))

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds in a duration: a number (of seconds), or a string like 30s, 5m, 1.5h, 2d."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: a number of seconds or <number><s|m|h|d>, e.g. 30s, "
            "5m, 1h, 2d"
        )
    if seconds < 0:
        raise ValueError(f"invalid duration {value!r}: must be >= 0")
    return seconds


def format_duration(seconds: float) -> str:
    """The largest whole unit that states `seconds` exactly: 3600 -> 1h, 90 -> 90s."""
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\d+(\.\d+)?[smhd]?$"},
    ]}),
]  # fmt: skip


class Pause(StrictModel):
    """`{pause: {}}` waits for `rolloutctl resume`/`advance`; `{pause: {duration: 1h}}` waits."""

    duration: Duration | None = None


class PauseStep(StrictModel):
    pause: Pause


Step = float | Literal["shadow"] | PauseStep


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
    waive_lanes: Seq[str] = ()  # lanes that need not clear (their harm still counts)

    @field_validator("waive_lanes")
    @classmethod
    def _known_lanes(cls, lanes: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [lane for lane in lanes if lane not in LANE_NAMES]
        if unknown:
            raise ValueError(f"unknown lane(s) {unknown}: lanes are lane_0..lane_{N_LANES - 1}")
        return lanes


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
    steps: Seq[Step] = (10.0, 20.0, 50.0, 100.0)
    # Durations: seconds, or 30s, 5m, 1h, 2d.
    step_min_seconds: Duration = Field(default=30, ge=0)
    interval_seconds: Duration = Field(default=5, gt=0)
    min_requests: int = Field(default=200, ge=0)
    min_feedback: int = Field(default=100, ge=0)  # per step, before any quality verdict
    failure_limit: int = Field(default=2, ge=1)
    max_hold_seconds: Duration = Field(default=600, gt=0)
    shadow_percent: float = Field(default=100, ge=0, le=100)  # mirrored share in a shadow step
    # Start by itself, without `rolloutctl start`: on first registration, and whenever the
    # policy names a new canary.
    auto_start: bool = False
    metrics: Seq[ProviderMetric] = ()  # measured by a provider (Prometheus), not counted
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

    @field_validator("steps", mode="before")
    @classmethod
    def _step_shapes(cls, steps: object) -> object:
        # One message per bad step, rather than one per member of the Step union.
        if not isinstance(steps, list | tuple):
            return steps
        out: list[object] = []
        for i, step in enumerate(steps):
            if isinstance(step, dict):
                try:
                    out.append(PauseStep.model_validate(step))
                except ValidationError as exc:
                    err = exc.errors()[0]
                    msg = err["msg"].removeprefix("Value error, ")
                    if err["type"] == "extra_forbidden":
                        msg = "unknown key"
                    raise ValueError(f"[{i}].{format_path(err['loc'])}: {msg}") from None
            elif step == "shadow" or (isinstance(step, int | float) and not isinstance(step, bool)):
                out.append(step)
            else:
                raise ValueError(
                    f"[{i}]: {step!r} is not a step: give a percent, 'shadow', {{pause: {{}}}} "
                    "or {pause: {duration: 1h}}"
                )
        return out

    @field_validator("steps")
    @classmethod
    def _steps_increase(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if not steps:
            raise ValueError("needs at least one step")
        previous = 0.0
        for i, step in enumerate(steps):
            if isinstance(step, PauseStep):
                continue  # holds the previous step's weight
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
            raise ValueError("the last weight step must be 100")
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

    def _holding(self, index: int) -> float | str | None:
        """The weight step in force at `index`: a pause holds the one before it (None: none)."""
        for step in reversed(self.steps[: index + 1]):
            if not isinstance(step, PauseStep):
                return step
        return None

    def step_weight(self, index: int) -> float:
        """Traffic percent on the canary at step `index`; a shadow step serves no user, a pause
        step holds the previous step's weight."""
        step = self._holding(index)
        return 0.0 if step is None or step == "shadow" else float(step)

    def step_mirror(self, index: int) -> float:
        """Percent of requests mirrored to the canary at step `index` (a shadow step's)."""
        return self.shadow_percent if self._holding(index) == "shadow" else 0.0

    def pause_at(self, index: int) -> Pause | None:
        step = self.steps[index]
        return step.pause if isinstance(step, PauseStep) else None

    def min_seconds(self, index: int) -> float:
        """The least time in step `index` before it may advance: a timed pause's duration."""
        pause = self.pause_at(index)
        if pause is not None and pause.duration is not None:
            return max(self.step_min_seconds, pause.duration)
        return self.step_min_seconds

    def describe_step(self, index: int) -> str:
        pause = self.pause_at(index)
        weight = f"{self.step_weight(index):g}%"
        if pause is None:
            return "shadow" if self.steps[index] == "shadow" else weight
        held = "shadow" if self.step_mirror(index) else weight
        if pause.duration is None:
            return f"pause at {held} until resumed"
        return f"pause {format_duration(pause.duration)} at {held}"

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
#                         Paused          Progressing|Paused --abort--> Aborted
#
# `start` retries a RolledBack or Aborted rollout from its first step. A `{pause: {}}` step
# enters Paused; `resume` (or `advance`) moves past it. Every change produces a new value
# with the same version; the store bumps the version when its compare-and-set succeeds.


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"  # abandoned by an operator (or removed from the policy): weight 0


class Actor(StrEnum):
    CONTROLLER = "controller"
    OPERATOR = "operator"
    CONFIG = "config"  # the policy YAML's registration (a rollout removed from it)


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

"""The JSON API's documents as pydantic models: they shape every answer and the OpenAPI schema.

Answers are validated against these models before they are sent, so the OpenAPI document cannot
drift from what the API returns (schemathesis checks the same from the outside).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lvm_gateway.contract.rollout import Step

PhaseName = Literal["Pending", "Progressing", "Paused", "Promoted", "RolledBack"]
Action = Literal["start", "advance", "pause", "resume", "rollback", "abort"]
ACTIONS: tuple[Action, ...] = ("start", "advance", "pause", "resume", "rollback", "abort")


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Summary(Doc):
    """A rollout in one line: where it is and why."""

    name: str
    phase: PhaseName
    step: int = Field(description="index into steps; -1 before the first start")
    steps: list[Step]
    weight: float = Field(description="percent of users on the canary")
    mirror: float = Field(description="percent of requests mirrored to the canary")
    stable: str | None
    canary: str | None
    reason: str
    version: int
    updated_at: float | None = Field(description="Unix seconds")


class MetricRow(Doc):
    """One analysis metric of the canary against its bounds, as the controller would judge it."""

    metric: str
    kind: Literal["max", "min"]
    value: float | None
    samples: int
    needed: int
    success: float | None
    rollback: float | None
    verdict: Literal["pass", "fail", "breach", "insufficient"]
    where: str | None = Field(description="what the value is about, e.g. the worst lane")


class LaneRow(Doc):
    lane: str
    requests: int
    errors: int
    feedback: int
    hit5: float | None
    stable_feedback: int
    stable_hit5: float | None
    delta: float | None = Field(description="relative Hit@5 shortfall of the canary vs stable")


class VariantPoint(Doc):
    requests: int
    feedback: int
    p95_ms: float | None
    error_rate: float | None
    hit5: float | None


class SeriesPoint(Doc):
    """One window bucket (every replica's counts summed) of the canary and the stable variant."""

    t: float = Field(description="the bucket's start, Unix seconds")
    canary: VariantPoint
    stable: VariantPoint


class Detail(Summary):
    """Everything `rolloutctl status` shows, plus the metrics over time."""

    started_at: float | None
    step_started_at: float | None
    failures: int
    time_in_step: float | None
    thresholds: dict[str, Any]
    metrics: list[MetricRow]
    lanes: list[LaneRow]
    requests: int | None = None
    next: str = Field(description="what the controller would do next, and why")
    series: list[SeriesPoint]


class RolloutList(Doc):
    rollouts: list[Summary]


class Event(Doc):
    id: str
    at: str = Field(description="ISO 8601, UTC")
    ts: float
    version: int
    actor: str
    identity: str
    action: str
    phase: str
    step: int
    weight: float
    stable: str | None
    canary: str | None
    reason: str
    metrics: dict[str, Any] = Field(description="the analysis values behind this transition")


class History(Doc):
    rollout: str
    events: list[Event]


class AdvanceRequest(Doc):
    to: float | None = Field(default=None, gt=0, le=100, description="jump to this step's weight")
    full: bool = Field(default=False, description="jump to 100%")
    force: bool = Field(default=False, description="skip the analysis gate")


class RollbackRequest(Doc):
    reason: str | None = Field(default=None, min_length=1, max_length=500)


class ActionResult(Doc):
    action: Action
    rollout: Summary


class Error(Doc):
    error: str = Field(description="a stable code, e.g. unknown_rollout")
    message: str

"""The `rollouts:` section of the policy YAML, parsed strictly."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lvm_gateway.policies.base import StrictModel

Step = float | Literal["shadow"]


class Thresholds(StrictModel):
    """Bounds on the canary's observed metrics. Absent keys are not judged."""

    p95_ms_max: float | None = Field(default=None, gt=0)
    error_rate_max: float | None = Field(default=None, ge=0, le=1)


class RolloutSpec(StrictModel):
    route: str
    steps: tuple[Step, ...] = (10, 20, 50, 100)
    step_min_seconds: float = Field(default=30, ge=0)
    interval_seconds: float = Field(default=5, gt=0)
    min_requests: int = Field(default=200, ge=0)
    failure_limit: int = Field(default=2, ge=1)
    max_hold_seconds: float = Field(default=600, gt=0)
    success: Thresholds = Thresholds(p95_ms_max=5, error_rate_max=0.001)
    rollback: Thresholds = Thresholds(p95_ms_max=10, error_rate_max=0.01)

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
        for key in ("p95_ms_max", "error_rate_max"):
            ok, bad = getattr(self.success, key), getattr(self.rollback, key)
            if ok is not None and bad is not None and bad < ok:
                raise ValueError(f"rollback.{key} ({bad}) must be >= success.{key} ({ok})")
        return self

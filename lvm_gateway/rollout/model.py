"""A rollout's state: its phase, step and weight, as one immutable value with a version.

    Pending --start--> Progressing --(last step passes)--> Promoted
                        |   ^   \\
                  pause |   | resume  \\--(failure_limit breaches | rollback)--> RolledBack
                        v   |
                        Paused

`start` retries a RolledBack rollout from its first step. Every change produces a new value with
the same version; the store bumps the version when its compare-and-set succeeds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


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

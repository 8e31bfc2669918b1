"""What the controller saw of each variant over an analysis interval: merged counters.

A window is a flat mapping of counter name -> count (the names are contract/windows.py's),
additive across replicas and time buckets, so merging is summing.

Percentiles come from the merged histogram, never from averaging replicas' percentiles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lvm_gateway.contract.windows import (
    ERRORS,
    LATENCY_BOUNDS_MS,
    LATENCY_FIELDS,
    REQUESTS,
    lane_field,
)

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class VariantWindow:
    counts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    def get(self, counter: str, lane: str | None = None) -> int:
        return int(self.counts.get(counter if lane is None else lane_field(counter, lane), 0))

    @property
    def requests(self) -> int:
        return self.get(REQUESTS)

    @property
    def errors(self) -> int:
        return self.get(ERRORS)

    def histogram(self) -> list[int]:
        return [self.get(f) for f in LATENCY_FIELDS]

    def lanes(self) -> set[str]:
        return {k.split("@", 1)[1] for k in self.counts if "@" in k}

    def merged(self, other: Mapping[str, int]) -> VariantWindow:
        out = dict(self.counts)
        for k, v in other.items():
            out[k] = out.get(k, 0) + int(v)
        return VariantWindow(MappingProxyType(out))


def quantile_ms(histogram: list[int], q: float, extra_fast: int = 0) -> float | None:
    """The q-quantile of a bucketed histogram, interpolated linearly inside its bucket.

    `extra_fast` adds that many samples to the fastest bucket: the best case for samples not yet
    seen, which lets the analysis tell a certain breach from thin data.
    """
    counts = list(histogram)
    if counts:
        counts[0] += extra_fast
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(LATENCY_BOUNDS_MS):
                return LATENCY_BOUNDS_MS[-1]  # overflow bucket: report its lower edge
            lo = LATENCY_BOUNDS_MS[i - 1] if i else 0.0
            hi = LATENCY_BOUNDS_MS[i]
            return lo + (hi - lo) * (rank - seen) / c
        seen += c
    return LATENCY_BOUNDS_MS[-1]


@dataclass(frozen=True)
class Observations:
    """The canary's and the stable variant's windows over one analysis interval."""

    canary: VariantWindow = field(default_factory=VariantWindow)
    stable: VariantWindow = field(default_factory=VariantWindow)
    since: float = 0.0
    until: float = 0.0
    # The same since the rollout started. Quality judges the model, not the step: feedback
    # from the shadow and earlier steps still counts, and at 100% (when stable serves no one)
    # the per-lane baseline is the stable variant's from the earlier steps.
    canary_rollout: VariantWindow | None = None
    stable_rollout: VariantWindow | None = None

    @property
    def canary_quality(self) -> VariantWindow:
        return self.canary if self.canary_rollout is None else self.canary_rollout

    @property
    def stable_quality(self) -> VariantWindow:
        return self.stable if self.stable_rollout is None else self.stable_rollout

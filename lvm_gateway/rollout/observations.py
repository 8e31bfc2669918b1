"""What the controller saw of each variant over an analysis interval: merged counters.

A window is a flat mapping of counter name -> count, additive across replicas and time buckets,
so merging is summing. Names:

    n, err                 requests and errors
    lat:<i>                latency histogram, bucket i of LATENCY_BOUNDS_MS (last = overflow)
    <metric>               any further counter (issue 4: feedback, hit5, empty, invalid, ...)
    <counter>@<lane>       the same counter restricted to one lane

Percentiles come from the merged histogram, never from averaging replicas' percentiles.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Fixed bucket upper bounds (ms): fine around the seed's 5 ms / 10 ms thresholds, coarse beyond.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10, 12.5, 15, 17.5, 20,
    25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2500, 5000, 10000,
)  # fmt: skip
LATENCY_BOUNDS_S: tuple[float, ...] = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)
LATENCY_FIELDS: tuple[str, ...] = tuple(f"lat:{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1))


def latency_field(latency_s: float) -> str:
    return LATENCY_FIELDS[bisect_left(LATENCY_BOUNDS_S, latency_s)]


def lane_field(counter: str, lane: str) -> str:
    return f"{counter}@{lane}"


_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class VariantWindow:
    counts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)

    def get(self, counter: str, lane: str | None = None) -> int:
        return int(self.counts.get(counter if lane is None else lane_field(counter, lane), 0))

    @property
    def requests(self) -> int:
        return self.get("n")

    @property
    def errors(self) -> int:
        return self.get("err")

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

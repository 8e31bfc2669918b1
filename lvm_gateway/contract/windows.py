"""The rollout windows' vocabulary: what the data plane counts and the controller judges.

A window is a flat mapping of counter name -> count, additive across replicas and time buckets:

    n, err                 requests and errors
    lat:<i>                latency histogram, bucket i of LATENCY_BOUNDS_MS (last = overflow)
    feedback, hit<k>       feedbacks scored, and those that were a hit at k (the Hit@K proxy)
    empty, invalid         empty-hit answers, invalid (NaN/Inf, wrong dimension) answers
    diverted               requests meant for this variant that it never got: its circuit was
                           open (or a mixture had no expert left), so another variant served;
                           the analysis counts them as this variant's failures
    <counter>@<lane>       the same counter restricted to one lane

Every name is defined here once: the gateway writes them, the analysis reads them.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Final

from lvm_gateway.contract.lvm import HIT_THRESHOLDS

REQUESTS: Final = "n"
ERRORS: Final = "err"
FEEDBACK: Final = "feedback"
EMPTY: Final = "empty"
INVALID: Final = "invalid"
DIVERTED: Final = "diverted"


def hit(k: int) -> str:
    """The counter of feedbacks that were a hit at k."""
    return f"hit{k}"


HITS: dict[int, str] = {k: hit(k) for k in HIT_THRESHOLDS}

# Fixed bucket upper bounds (ms): fine around the LVM plan's 5 ms / 10 ms thresholds, coarse beyond.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9, 10, 12.5, 15, 17.5, 20,
    25, 30, 40, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2500, 5000, 10000,
)  # fmt: skip
LATENCY_BOUNDS_S: Final[tuple[float, ...]] = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)
LATENCY_FIELDS: Final[tuple[str, ...]] = tuple(
    f"lat:{i}" for i in range(len(LATENCY_BOUNDS_MS) + 1)
)

COUNTERS: frozenset[str] = frozenset(
    {REQUESTS, ERRORS, FEEDBACK, EMPTY, INVALID, DIVERTED, *HITS.values(), *LATENCY_FIELDS}
)

# Windows are time buckets of this many seconds, kept in Redis this long.
BUCKET_SECONDS: Final = 5
WINDOW_TTL_SECONDS: Final = 900


def latency_field(latency_s: float) -> str:
    return LATENCY_FIELDS[bisect_left(LATENCY_BOUNDS_S, latency_s)]


def lane_field(counter: str, lane: str) -> str:
    return f"{counter}@{lane}"

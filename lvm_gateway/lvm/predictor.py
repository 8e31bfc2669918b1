"""The Predictor protocol every model server uses, and the analytic predictors of the world.

The analytic predictors know the world's successor structure (the short-range component) and
estimate a sequence's hidden theme (the long-range component) from recency-weighted counts of the
clusters seen in the context. What separates the profiles is memory: `phase1` reads at most 100
vectors and forgets fast, `phase2` reads up to 500 and remembers longer, so it estimates the theme
better. The prediction is the centroid mix of the likely next clusters, sharpened, so a confident
right guess scores a high cosine and an unsure one a middling cosine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lvm_gateway.contract.lvm import N_LANES
from lvm_gateway.lvm.world import JUMP_PROB, World


class Predictor(Protocol):
    model_type: str

    def predict(self, context: np.ndarray, tmd: tuple[int, int, int] | None) -> np.ndarray:
        """context (n, 768) float32 -> (768,) float32 unit vector."""
        ...


@dataclass(frozen=True)
class Profile:
    name: str
    window: int  # most recent context vectors read
    half_life: float  # in context steps: how fast older vectors stop counting
    sharpness: float  # exponent on the next-cluster probabilities before mixing centroids
    latency_ms: float  # the LVM plan's GPU latency, simulated by lvm-serve


# The context length the profiles are calibrated at (lvm-traffic's default): longer contexts
# are realistic but cost ~8 KB of JSON per vector on every hop.
CALIBRATION_CONTEXT = 32
# Calibrated (tests/unit/test_predictor.py) to the LVM plan's Hit@5 proxy against the world's true
# next concept: ~59% (Phase 1) and ~66% (Phase 2).
PROFILES: dict[str, Profile] = {
    "phase1": Profile("phase1", window=100, half_life=2.0, sharpness=1.5, latency_ms=0.5),
    "phase2": Profile("phase2", window=500, half_life=64.0, sharpness=1.5, latency_ms=2.5),
}

_THEME_PRIOR = 0.5  # pseudo-count per cluster before any context is seen
_IN_LANE_COSINE = 0.5  # a context vector this close to a lane's cluster centroid belongs to it
DEFAULT_DEGRADE_FACTOR = 0.6


class AnalyticPredictor:
    def __init__(
        self, world: World, profile: Profile, degrade: Mapping[int, float] | None = None
    ) -> None:
        for lane, factor in (degrade or {}).items():
            if not 0 <= lane < N_LANES or not 0.0 < factor <= 1.0:
                raise ValueError(
                    f"degrade lane must be 0..15 and factor in (0, 1]: {lane}={factor}"
                )
        self.world = world
        self.profile = profile
        self.model_type = profile.name
        self.degrade = dict(degrade or {})

    def predict(self, context: np.ndarray, tmd: tuple[int, int, int] | None) -> np.ndarray:
        w, p = self.world, self.profile
        ctx = context[-p.window :]
        last = int(np.argmax(w.centroids @ ctx[-1]))
        lane = int(w.cluster_lane[last])
        lane_centroids = w.centroids[lane::N_LANES]  # local cluster order
        sims = ctx @ lane_centroids.T
        local = sims.argmax(axis=1)
        in_lane = sims[np.arange(len(ctx)), local] > _IN_LANE_COSINE
        age = np.arange(len(ctx) - 1, -1, -1)
        weight = 0.5 ** (age[in_lane] / p.half_life)
        theme = np.bincount(local[in_lane], weights=weight, minlength=len(lane_centroids))
        theme = theme + _THEME_PRIOR
        theme /= theme.sum()

        succ = w.successors[last] // N_LANES
        step = w.successor_weights[last] * theme[succ]
        nxt = JUMP_PROB * theme
        nxt[succ] += (1.0 - JUMP_PROB) * step / step.sum()
        q = nxt**p.sharpness
        out = (q / q.sum()) @ lane_centroids

        req_lane = tmd[0] if tmd is not None else lane
        factor = self.degrade.get(req_lane)
        if factor is not None:
            # Pull towards a cluster the model wrongly favours: deterministic, lane-local damage.
            wrong = lane_centroids[(int(np.argmax(q)) + len(q) // 2) % len(q)]
            out = (1.0 - factor) * out / np.linalg.norm(out) + factor * wrong
        return (out / np.linalg.norm(out)).astype(np.float32)


def analytic(name: str, world: World, degrade: Mapping[int, float] | None = None) -> Predictor:
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
    return AnalyticPredictor(world, profile, degrade)

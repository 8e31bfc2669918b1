"""A deterministic synthetic concept world for the reference LVM servers, traffic and tests.

Concepts are unit 768-d vectors in a three-level hierarchy: 16 lanes (the TMD domain), clusters
of `CLUSTER_SIZE` near-synonyms inside a lane, and the concepts themselves. Each vector is
`a*lane + b*cluster + c*own` (orthogonal-ish random parts), so cluster-mates have cosine ~0.7
(a hit@5 by the LVM plan's proxy), lane-mates ~0.2 and concepts of other lanes ~0.

A sequence stays in one lane. Its next cluster is drawn from the current cluster's few successors
(the short-range component, a fixed property of the world) weighted by the sequence's theme, a
hidden preference over the lane's clusters drawn once per sequence (the long-range component).
The theme shows only in how often clusters recur in the context, so a longer context genuinely
predicts better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvm_gateway.contract.lvm import DIM, N_LANES, N_MODIFIERS, N_TASKS

CLUSTER_SIZE = 5
N_SUCCESSORS = 4
DEFAULT_CONCEPTS = 4000

# Squared weights of the lane, cluster and own parts of a concept vector (they sum to 1).
_LANE_W2, _CLUSTER_W2 = 0.2, 0.5
# Dirichlet concentrations: of a sequence's theme (small = a few favourite clusters) and of a
# cluster's successor weights; and the chance a step ignores the successors and jumps by theme.
THEME_ALPHA = 0.3
SUCCESSOR_ALPHA = 0.3
JUMP_PROB = 0.05


@dataclass(frozen=True)
class Sequence:
    """One user's walk through a lane: concept indexes into the world's bank."""

    lane: int
    concepts: np.ndarray  # (length,) int32
    theme: np.ndarray  # (clusters_per_lane,) the hidden long-range preference


class World:
    """The concept bank and its sequence dynamics; everything derives from `seed`."""

    def __init__(self, seed: int, n_concepts: int) -> None:
        per_lane = N_LANES * CLUSTER_SIZE
        if n_concepts < 2 * per_lane * N_SUCCESSORS or n_concepts % per_lane:
            raise ValueError(
                f"n_concepts must be a multiple of {per_lane} and at least "
                f"{2 * per_lane * N_SUCCESSORS}, got {n_concepts}"
            )
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.n_concepts = n_concepts
        self.n_clusters = n_concepts // CLUSTER_SIZE
        self.clusters_per_lane = self.n_clusters // N_LANES
        # Layout: concept i is in cluster i // CLUSTER_SIZE; cluster c is in lane c % N_LANES at
        # local position c // N_LANES, so lane d's clusters are d, d + 16, d + 32, ...
        self.concept_cluster = np.arange(n_concepts) // CLUSTER_SIZE
        self.cluster_lane = np.arange(self.n_clusters) % N_LANES
        self.concept_lanes = self.cluster_lane[self.concept_cluster]

        lanes = _unit(rng.standard_normal((N_LANES, DIM)))
        clusters = _unit(rng.standard_normal((self.n_clusters, DIM)))
        own = _unit(rng.standard_normal((n_concepts, DIM)))
        own_w2 = 1.0 - _LANE_W2 - _CLUSTER_W2
        raw = (
            np.sqrt(_LANE_W2) * lanes[self.concept_lanes]
            + np.sqrt(_CLUSTER_W2) * clusters[self.concept_cluster]
            + np.sqrt(own_w2) * own
        )
        self.vectors = _unit(raw).astype(np.float32)
        self.vectors.setflags(write=False)
        centroids = self.vectors.reshape(self.n_clusters, CLUSTER_SIZE, DIM).mean(axis=1)
        self.centroids = _unit(centroids).astype(np.float32)

        self.ids = [f"c{i:05d}" for i in range(n_concepts)]
        self._index = {cid: i for i, cid in enumerate(self.ids)}
        cluster_task = rng.integers(0, N_TASKS, self.n_clusters)
        self.tmd = np.stack(
            [
                self.concept_lanes,
                cluster_task[self.concept_cluster],
                rng.integers(0, N_MODIFIERS, n_concepts),
            ],
            axis=1,
        ).astype(np.int16)

        # Each cluster's successors: distinct other clusters of its lane, with random weights.
        k = self.clusters_per_lane
        local = np.argsort(rng.random((self.n_clusters, k - 1)), axis=1)[:, :N_SUCCESSORS]
        own_local = np.arange(self.n_clusters)[:, None] // N_LANES
        local = local + (local >= own_local)  # skip the cluster itself
        self.successors = local * N_LANES + self.cluster_lane[:, None]
        self.successor_weights = rng.dirichlet(
            np.full(N_SUCCESSORS, SUCCESSOR_ALPHA), self.n_clusters
        )

    @classmethod
    def build(cls, seed: int = 0, n_concepts: int = DEFAULT_CONCEPTS) -> World:
        return cls(seed, n_concepts)

    def index(self, concept_id: str) -> int:
        try:
            return self._index[concept_id]
        except KeyError:
            raise KeyError(f"unknown concept id {concept_id!r}") from None

    def vector(self, concept_id: str) -> np.ndarray:
        return self.vectors[self.index(concept_id)]

    def concept_lane(self, concept_id: str) -> int:
        return int(self.concept_lanes[self.index(concept_id)])

    def tmd_code(self, concept_id: str) -> tuple[int, int, int]:
        d, t, m = self.tmd[self.index(concept_id)]
        return int(d), int(t), int(m)

    def neighbors(self, vec: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """The bank's k concepts most cosine-similar to `vec`, best first."""
        v = np.asarray(vec, dtype=np.float32)
        scores = self.vectors @ (v / max(float(np.linalg.norm(v)), 1e-12))
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        return [(self.ids[i], float(scores[i])) for i in top]

    def sequences(
        self,
        n: int,
        length: int,
        lane: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> list[Sequence]:
        """`n` independent walks of `length` concepts (all steps vectorised across walks)."""
        if lane is not None and not 0 <= lane < N_LANES:
            raise ValueError(f"lane must be in 0..{N_LANES - 1}, got {lane}")
        rng = rng if rng is not None else np.random.default_rng(self.seed)
        k = self.clusters_per_lane
        lanes = rng.integers(0, N_LANES, n) if lane is None else np.full(n, lane)
        themes = rng.dirichlet(np.full(k, THEME_ALPHA), n)
        theme_cdf = np.cumsum(themes, axis=1)
        rows = np.arange(n)
        cluster = _draw(theme_cdf, rng) * N_LANES + lanes
        out = np.empty((n, length), dtype=np.int32)
        for t in range(length):
            out[:, t] = cluster * CLUSTER_SIZE + rng.integers(0, CLUSTER_SIZE, n)
            succ = self.successors[cluster]
            w = self.successor_weights[cluster] * themes[rows[:, None], succ // N_LANES]
            step = succ[rows, _draw(np.cumsum(w, axis=1) / w.sum(axis=1, keepdims=True), rng)]
            jump = _draw(theme_cdf, rng) * N_LANES + lanes
            cluster = np.where(rng.random(n) < JUMP_PROB, jump, step)
        return [Sequence(int(lanes[i]), out[i], themes[i]) for i in range(n)]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _draw(cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row from rows of cumulative probabilities."""
    u = rng.random((cdf.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf < u).sum(axis=1), cdf.shape[1] - 1)

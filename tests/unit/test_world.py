"""The synthetic concept world: determinism, geometry, lanes, sequences, and the Hit@K scoring."""

from __future__ import annotations

import numpy as np
import pytest

from lvm_gateway.contract.lvm import DIM, N_LANES, cosine_hits, id_hits, is_empty_hit
from lvm_gateway.lvm.predictor import analytic
from lvm_gateway.lvm.world import CLUSTER_SIZE, World


@pytest.fixture(scope="module")
def world() -> World:
    return World.build(seed=0)


def test_same_seed_same_world_and_other_seed_differs(world):
    again = World.build(seed=0)
    assert np.array_equal(world.vectors, again.vectors)
    assert np.array_equal(world.tmd, again.tmd)
    assert np.array_equal(world.successors, again.successors)
    other = World.build(seed=1)
    assert not np.allclose(world.vectors, other.vectors)


def test_bank_is_unit_float32_with_stable_ids(world):
    assert world.vectors.shape == (4000, DIM)
    assert world.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(world.vectors, axis=1), 1.0, atol=1e-5)
    assert world.ids[42] == "c00042"
    assert np.array_equal(world.vector("c00042"), world.vectors[42])
    with pytest.raises(KeyError, match="c99999"):
        world.vector("c99999")


def test_concepts_are_spread_evenly_over_16_lanes_with_valid_tmd_codes(world):
    counts = np.bincount(world.concept_lanes, minlength=N_LANES)
    assert counts.tolist() == [4000 // N_LANES] * N_LANES
    for cid in ("c00000", "c01234", "c03999"):
        domain, task, modifier = world.tmd_code(cid)
        assert domain == world.concept_lane(cid)
        assert 0 <= task < 32 and 0 <= modifier < 64
    assert set(world.tmd[:, 1]) == set(range(32))


def test_neighbors_rank_the_concept_then_its_cluster(world):
    cid = "c01237"
    found = world.neighbors(world.vector(cid), k=10)
    assert found[0][0] == cid and found[0][1] == pytest.approx(1.0, abs=1e-5)
    scores = [s for _, s in found]
    assert scores == sorted(scores, reverse=True)
    cluster = {world.ids[i] for i in range(1235, 1240)}
    assert {c for c, _ in found[:CLUSTER_SIZE]} == cluster
    # Cluster-mates are near synonyms: a hit@5 by the cosine proxy, but not a hit@1.
    assert all(0.6 < s < 0.8 for _, s in found[1:CLUSTER_SIZE])
    assert all(s < 0.4 for _, s in found[CLUSTER_SIZE:])


def test_sequences_are_reproducible_by_rng_and_stay_in_their_lane(world):
    a = world.sequences(20, 50, rng=np.random.default_rng(7))
    b = world.sequences(20, 50, rng=np.random.default_rng(7))
    assert all(np.array_equal(x.concepts, y.concepts) for x, y in zip(a, b, strict=True))
    assert len({s.lane for s in a}) > 1
    for s in a:
        assert len(s.concepts) == 50
        assert set(world.concept_lanes[s.concepts]) == {s.lane}
    pinned = world.sequences(5, 10, lane=3, rng=np.random.default_rng(1))
    assert {s.lane for s in pinned} == {3}
    with pytest.raises(ValueError, match="lane"):
        world.sequences(1, 10, lane=16)


def test_bank_size_must_fit_the_lane_and_cluster_layout():
    with pytest.raises(ValueError, match="multiple of 80"):
        World.build(n_concepts=1001)


def test_longer_context_genuinely_predicts_better(world):
    # The long-range theme only shows in how often clusters recur: with one vector the best
    # estimator knows only the short-range successors; with 100 it also knows the theme.
    n = 500
    seqs = world.sequences(n, 101, rng=np.random.default_rng(11))
    predictor = analytic("phase2", world)

    def hit5(context_len: int) -> np.ndarray:
        return np.array(
            [
                cosine_hits(
                    predictor.predict(world.vectors[s.concepts[100 - context_len : 100]], None),
                    world.vectors[s.concepts[100]],
                )[5]
                for s in seqs
            ]
        )

    short, long_ = hit5(1), hit5(100)
    diff = long_.astype(float) - short
    se = diff.std(ddof=1) / np.sqrt(n)
    assert diff.mean() > 0.05
    assert diff.mean() > 4 * se


def _with_cosine(c: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([1.0, 0.0]), np.array([c, np.sqrt(1 - c * c)])


@pytest.mark.parametrize(
    ("cos", "expected"),
    [
        (0.95, {1: True, 5: True, 10: True}),
        (0.81, {1: True, 5: True, 10: True}),
        (0.79, {1: False, 5: True, 10: True}),
        (0.61, {1: False, 5: True, 10: True}),
        (0.59, {1: False, 5: False, 10: True}),
        (0.41, {1: False, 5: False, 10: True}),
        (0.39, {1: False, 5: False, 10: False}),
        (-0.9, {1: False, 5: False, 10: False}),
    ],
)
def test_cosine_hits_follow_the_seed_thresholds(cos, expected):
    assert cosine_hits(*_with_cosine(cos)) == expected


def test_cosine_hits_ignore_scale_and_never_hit_a_zero_vector():
    a, b = _with_cosine(0.7)
    assert cosine_hits(a * 5.0, b * 0.1) == {1: False, 5: True, 10: True}
    assert cosine_hits(np.zeros(2), b) == {1: False, 5: False, 10: False}


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        (0, {1: True, 5: True, 10: True}),
        (4, {1: False, 5: True, 10: True}),
        (5, {1: False, 5: False, 10: True}),
        (9, {1: False, 5: False, 10: True}),
        (None, {1: False, 5: False, 10: False}),
    ],
)
def test_id_hits_count_the_clicked_id_among_the_first_k(position, expected):
    ids = [f"c{i:05d}" for i in range(10)]
    clicked = "c77777" if position is None else ids[position]
    assert id_hits(clicked, ids) == expected


def test_empty_hit_is_no_neighbours_or_best_below_0_4():
    assert is_empty_hit([])
    assert is_empty_hit([0.39, 0.1])
    assert not is_empty_hit([0.1, 0.41])

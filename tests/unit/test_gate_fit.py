"""The fitted gate beats a uniform gate and the best single expert when experts differ by lane.

Training 16 GRUs would take minutes, so the experts here are the world's analytic predictor,
each served well on one lane (scrambled, so the default lane-i gate is no shortcut), half-damaged
on a second lane and badly damaged on the rest.
"""

from __future__ import annotations

import numpy as np
import pytest

from lvm_gateway.contract.gate import GateRuntime
from lvm_gateway.contract.lvm import N_LANES
from lvm_gateway.lvm.gate_fit import baselines, expert_quality, fit_gate, lane_eval
from lvm_gateway.lvm.predictor import PROFILES, AnalyticPredictor
from lvm_gateway.lvm.world import World


def home_lane(expert: int) -> int:
    return (5 * expert + 3) % N_LANES


def lane_experts(world: World) -> list[AnalyticPredictor]:
    experts = []
    for e in range(N_LANES):
        degrade = {lane: 0.8 for lane in range(N_LANES) if lane != home_lane(e)}
        degrade[home_lane(e + 1)] = 0.3
        experts.append(AnalyticPredictor(world, PROFILES["phase2"], degrade))
    return experts


@pytest.fixture(scope="module")
def world_and_experts():
    world = World.build(seed=5, n_concepts=1280)
    return world, lane_experts(world)


def test_fitted_gate_beats_uniform_and_best_single(world_and_experts):
    world, experts = world_and_experts
    fit_walks = lane_eval(experts, world, 24, 16, np.random.default_rng(1))
    fit = fit_gate(fit_walks, k=2)
    quality = expert_quality(fit_walks)
    assert quality.shape == (N_LANES, N_LANES)
    assert all(quality[home_lane(e), e] > 0.4 for e in range(N_LANES))

    held_out = lane_eval(experts, world, 24, 16, np.random.default_rng(2))
    scores = baselines(held_out, fit.gate, k=2)
    assert scores["fitted"] > scores["best_single"] + 0.2, scores
    assert scores["fitted"] > scores["uniform_top_k"] + 0.2, scores
    assert scores["fitted"] > scores["uniform_all"] + 0.2, scores

    runtime = GateRuntime(fit.gate.weights())
    for e in range(N_LANES):
        assert e in [chosen for chosen, _ in runtime.top_k((home_lane(e), 7, 11), 2)]

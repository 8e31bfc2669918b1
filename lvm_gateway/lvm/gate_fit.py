"""Fitting the TMD gate from the 16 experts' per-lane validation quality on the synthetic world.

Every expert predicts held-out walks of every lane; Q[lane, expert] is its Hit@5 there. The fitted
gate is the lane-detector gate (see gate.py) with logits Q / T: experts rank by their measured
quality on the request's lane, and the temperature T, picked from a grid by the top-k mixture's
Hit@5 on the same walks, decides how much the second expert counts. The fit is exact and
deterministic: no gradient descent can do better on a quantity that is a function of the lane.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lvm_gateway.contract.gate import N_EXPERTS, GateRuntime
from lvm_gateway.contract.lvm import HIT_THRESHOLDS, N_LANES
from lvm_gateway.lvm.evaluate import predict_many
from lvm_gateway.lvm.gate import TMDGate, default_gate, lane_detector_gate
from lvm_gateway.lvm.predictor import Predictor
from lvm_gateway.lvm.world import World

TEMPERATURES = (0.01, 0.03, 0.1, 0.3, 1.0)
_HIT5 = HIT_THRESHOLDS[5]


@dataclass(frozen=True)
class LaneEval:
    """Every expert's predictions on the same held-out walks of every lane."""

    predictions: np.ndarray  # (experts, lanes, walks, d) unit vectors
    targets: np.ndarray  # (lanes, walks, d) the concept that followed
    tmd: np.ndarray  # (lanes, walks, 3) the TMD code of each context's last concept


@dataclass(frozen=True)
class GateFit:
    gate: TMDGate
    temperature: float
    quality: np.ndarray  # (lanes, experts) Hit@5 of each expert alone
    hit5: float  # of the fitted gate's top-k mixture on the fitting walks


def lane_eval(
    experts: Sequence[Predictor],
    world: World,
    walks_per_lane: int,
    context: int,
    rng: np.random.Generator,
    on_expert: Callable[[int], None] | None = None,
) -> LaneEval:
    if len(experts) != N_EXPERTS:
        raise ValueError(f"the gate mixes exactly {N_EXPERTS} experts, got {len(experts)}")
    walks = np.stack(
        [
            np.stack([s.concepts for s in world.sequences(walks_per_lane, context + 1, lane, rng)])
            for lane in range(N_LANES)
        ]
    )  # (lanes, walks, context + 1)
    contexts = world.vectors[walks[:, :, :-1]]
    predictions = np.empty((len(experts), *contexts.shape[:2], contexts.shape[-1]), np.float32)
    for i, expert in enumerate(experts):
        for lane in range(N_LANES):
            predictions[i, lane] = predict_many(expert, contexts[lane])
        if on_expert:
            on_expert(i)
    return LaneEval(
        predictions=predictions,
        targets=world.vectors[walks[:, :, -1]],
        tmd=world.tmd[walks[:, :, -2]].astype(np.int64),
    )


def expert_quality(ev: LaneEval) -> np.ndarray:
    """(lanes, experts) Hit@5 of each expert on each lane's walks."""
    cos = np.einsum("elnd,lnd->eln", ev.predictions, ev.targets)
    return (cos > _HIT5).mean(axis=2).T


def mixture_hit5(runtime: GateRuntime, ev: LaneEval, k: int) -> float:
    """Hit@5 of the gate's top-k mixture, each walk routed by its own TMD code, lanes equal."""
    lanes, walks = ev.targets.shape[:2]
    hits = np.empty((lanes, walks), dtype=bool)
    for lane in range(lanes):
        for w in range(walks):
            chosen = runtime.top_k(tuple(int(v) for v in ev.tmd[lane, w]), k)
            fused = sum(weight * ev.predictions[e, lane, w] for e, weight in chosen)
            fused = fused / max(float(np.linalg.norm(fused)), 1e-12)
            hits[lane, w] = float(fused @ ev.targets[lane, w]) > _HIT5
    return float(hits.mean())


def fit_gate(ev: LaneEval, k: int = 2, temperatures: Sequence[float] = TEMPERATURES) -> GateFit:
    quality = expert_quality(ev)
    best: GateFit | None = None
    for t in temperatures:
        gate = lane_detector_gate(quality / t)
        score = mixture_hit5(GateRuntime(gate.weights()), ev, k)
        if best is None or score > best.hit5:
            best = GateFit(gate, t, quality, score)
    if best is None:
        raise ValueError("fit_gate needs at least one temperature")
    return best


def baselines(ev: LaneEval, fitted: TMDGate, k: int) -> dict[str, float]:
    """Hit@5 of the fitted gate next to what it must beat, all on the same walks."""
    uniform = GateRuntime(lane_detector_gate(np.zeros((N_EXPERTS, N_EXPERTS))).weights())
    return {
        "fitted": mixture_hit5(GateRuntime(fitted.weights()), ev, k),
        "uniform_top_k": mixture_hit5(uniform, ev, k),
        "uniform_all": mixture_hit5(uniform, ev, N_EXPERTS),
        "best_single": float(expert_quality(ev).mean(axis=0).max()),
        "default": mixture_hit5(GateRuntime(default_gate().weights()), ev, k),
    }

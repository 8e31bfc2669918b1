"""Held-out Hit@K of any predictor on world sequences, scored by the LVM plan's cosine proxy."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from lvm_gateway.contract.lvm import HIT_THRESHOLDS
from lvm_gateway.lvm.predictor import Predictor
from lvm_gateway.lvm.world import World

_CHUNK = 64  # contexts per batch: bounds memory for long contexts


def windows(world: World, concepts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(n, length) walks -> chunks of (contexts (b, length - 1, d), next vectors (b, d))."""
    for start in range(0, len(concepts), _CHUNK):
        chunk = concepts[start : start + _CHUNK]
        yield world.vectors[chunk[:, :-1]], world.vectors[chunk[:, -1]]


def predict_many(predictor: Predictor, contexts: np.ndarray) -> np.ndarray:
    """Batched where the predictor can batch (the GRU), one by one otherwise (analytic)."""
    batch = getattr(predictor, "predict_batch", None)
    if batch is not None:
        return batch(contexts)
    return np.stack([predictor.predict(c, None) for c in contexts])


def hits(predicted: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(n, d) unit predictions and targets -> (n, len(HIT_THRESHOLDS)) booleans, ordered by k."""
    cos = np.einsum("nd,nd->n", predicted, targets)
    return np.stack([cos > HIT_THRESHOLDS[k] for k in sorted(HIT_THRESHOLDS)], axis=1)


def hit_rates(predictor: Predictor, world: World, concepts: np.ndarray) -> dict[int, float]:
    """Hit@1/5/10 of predicting each walk's last concept from the ones before it."""
    scored = np.concatenate(
        [hits(predict_many(predictor, ctx), nxt) for ctx, nxt in windows(world, concepts)]
    )
    return {
        k: float(rate) for k, rate in zip(sorted(HIT_THRESHOLDS), scored.mean(axis=0), strict=True)
    }

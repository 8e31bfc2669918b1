"""Fusing experts' answers: the gate-weighted sum of their predictions, re-normalised.

Pure. Weights are renormalised over the experts that answered; neighbour lists are merged by
weighted score (an id returned by several experts sums its weighted scores), top 10 kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvm_gateway.gateway.signals import Prediction

TOP_NEIGHBORS = 10


def fuse(answered: list[tuple[str, float, Prediction]]) -> tuple[dict[str, Any], Prediction]:
    """(expert, gate weight, prediction) of each expert that answered -> (JSON doc, prediction)."""
    total = sum(w for _, w, _ in answered)
    n = len(answered)
    weights = [w / total for _, w, _ in answered] if total > 0 else [1 / n] * n
    vec = np.zeros(len(answered[0][2].values), dtype=np.float64)
    merged: dict[str, float] = {}
    for w, (_, _, pred) in zip(weights, answered, strict=True):
        vec += w * pred.values
        for nid, score in pred.neighbors:
            merged[nid] = merged.get(nid, 0.0) + w * score
    norm = float(np.linalg.norm(vec))
    if norm > 0:
        vec /= norm
    top = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_NEIGHBORS]
    values = vec.astype(np.float32)
    doc = {
        "predicted_vector": values.tolist(),
        "confidence": float(np.clip(norm, 0.0, 1.0)),  # agreement of the experts' directions
        "model_type": "tmd_mixture",
        "neighbors": [{"id": i, "score": round(s, 6)} for i, s in top],
        "experts": [
            {"expert": e, "weight": round(w, 6)}
            for w, (e, _, _) in zip(weights, answered, strict=True)
        ],
    }
    return doc, Prediction(values, [i for i, _ in top], [s for _, s in top])

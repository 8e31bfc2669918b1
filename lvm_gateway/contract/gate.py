"""The TMD gate over 16 lane experts: Linear(16,64) -> ReLU -> Linear(64,16) -> Softmax.

What the trainer (`lvm/gate.py`, torch) writes and the `tmd` policy (numpy) reads, so neither
imports the other. TMD vector encoding (16-d, "tmd-bits-v1"): the code's 15 bits and a presence
flag,
    x[0:4]   domain bits, most significant first  (domain 0-15)
    x[4:9]   task bits, most significant first    (task 0-31)
    x[9:15]  modifier bits, most significant first (modifier 0-63)
    x[15]    1.0 when the request has a TMD code; a request without one encodes as all zeros.
Every code keeps all of its information in 16 dims, and a ReLU unit can detect one exact domain.

The default gate sends lane i to expert i: hidden unit j fires (output exactly 1) only for domain
j, because its weights are +1 on the bits set in j and -1 on the others, and its presence weight
is 1 - popcount(j); every other unit is silent. Expert j's logit is DEFAULT_SCALE times unit j, so
lane i gives expert i a softmax weight of e^10 / (e^10 + 15) ~ 0.9993 and the rest share the
remainder equally; without a TMD code all logits are 0 and the gate is uniform.

Serving never runs torch: `GateRuntime` evaluates the same arithmetic in numpy and caches each
TMD code's weights and ranking, so a decision is a dict lookup after the first request.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from lvm_gateway.contract.lvm import N_LANES, TMD_FIELDS, Tmd, check_tmd
from lvm_gateway.errors import CheckpointError

N_EXPERTS = N_LANES
TMD_DIM = 16
HIDDEN = 64
ENCODING = "tmd-bits-v1"
GATE_TYPE = "tmd_gate"
DEFAULT_SCALE = 10.0

# Bits per field: 4 / 5 / 6 for 16 domains, 32 tasks, 64 modifiers.
_BITS = tuple((size - 1).bit_length() for _, size in TMD_FIELDS)
SHAPES: dict[str, tuple[int, ...]] = {
    "net.0.weight": (HIDDEN, TMD_DIM),
    "net.0.bias": (HIDDEN,),
    "net.2.weight": (N_EXPERTS, HIDDEN),
    "net.2.bias": (N_EXPERTS,),
}

GateState = dict[str, np.ndarray]


def encode_tmd(tmd: Tmd | None) -> np.ndarray:
    """(domain, task, modifier) -> the 16-d float32 TMD vector described above."""
    x = np.zeros(TMD_DIM, dtype=np.float32)
    if tmd is None:
        return x
    check_tmd(tmd)
    offset = 0
    for value, bits in zip(tmd, _BITS, strict=True):
        for b in range(bits):
            x[offset + b] = (int(value) >> (bits - 1 - b)) & 1
        offset += bits
    x[TMD_DIM - 1] = 1.0
    return x


def lane_detector_state(lane_logits: np.ndarray) -> GateState:
    """Gate weights whose expert logits for lane j are row j of `lane_logits` (16 x 16).

    Hidden units 0-15 are exact domain detectors (see the module docstring); the output layer
    maps detector j to row j. Zero logits everywhere are the uniform gate.
    """
    if lane_logits.shape != (N_EXPERTS, N_EXPERTS) or not np.isfinite(lane_logits).all():
        raise ValueError(f"lane_logits must be a finite (16, 16) array, got {lane_logits.shape}")
    domain_bits = _BITS[0]
    w1 = np.zeros((HIDDEN, TMD_DIM), dtype=np.float32)
    for j in range(N_EXPERTS):
        bits = [(j >> (domain_bits - 1 - b)) & 1 for b in range(domain_bits)]
        w1[j, :domain_bits] = [1.0 if bit else -1.0 for bit in bits]
        w1[j, TMD_DIM - 1] = 1.0 - sum(bits)
    w2 = np.zeros((N_EXPERTS, HIDDEN), dtype=np.float32)
    w2[:, :N_EXPERTS] = np.asarray(lane_logits, dtype=np.float32).T
    return {
        "net.0.weight": w1,
        "net.0.bias": np.zeros(HIDDEN, dtype=np.float32),
        "net.2.weight": w2,
        "net.2.bias": np.zeros(N_EXPERTS, dtype=np.float32),
    }


def default_gate_state() -> GateState:
    """Lane i -> expert i (weight ~0.9993), uniform without a TMD code."""
    return lane_detector_state(DEFAULT_SCALE * np.eye(N_EXPERTS))


def gate_state(raw: Any, where: str) -> GateState:
    """The weights of a gate file's content (save_gate's envelope, or a bare state_dict of
    array-likes); CheckpointError naming every problem otherwise."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: expected a dict, got {type(raw).__name__}")
    if set(raw) != set(SHAPES):
        if raw.get("model_type") != GATE_TYPE:
            raise CheckpointError(
                f"{where}: model_type is {raw.get('model_type')!r}, expected {GATE_TYPE!r}"
            )
        if raw.get("encoding", ENCODING) != ENCODING:
            raise CheckpointError(
                f"{where}: encoding is {raw['encoding']!r}, this gateway reads {ENCODING!r}"
            )
        raw = raw.get("state_dict")
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{where}: missing state_dict")
    problems = []
    if missing := sorted(set(SHAPES) - set(raw)):
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected := sorted(set(raw) - set(SHAPES)):
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    state: GateState = {}
    for key, shape in SHAPES.items():
        t = raw.get(key)
        if t is None:
            continue
        if not hasattr(t, "shape") or tuple(t.shape) != shape:
            got = tuple(t.shape) if hasattr(t, "shape") else type(t).__name__
            problems.append(f"{key} is {got}, expected {shape}")
            continue
        array = np.asarray(t, dtype=np.float64)
        if not np.isfinite(array).all():
            problems.append(f"non-finite values in {key}")
        state[key] = array
    if problems:
        raise CheckpointError(f"{where}: {' | '.join(problems)}")
    return state


class GateRuntime:
    """The gate's per-request decision in numpy, cached by TMD code (at most 32,768 codes)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        w = {k: np.asarray(state[k], dtype=np.float64) for k in SHAPES}
        self._w1, self._b1 = w["net.0.weight"], w["net.0.bias"]
        self._w2, self._b2 = w["net.2.weight"], w["net.2.bias"]
        self._weights: dict[Tmd | None, np.ndarray] = {}
        self._ranking: dict[Tmd | None, tuple[int, ...]] = {}

    def gate_weights(self, tmd: Tmd | None) -> np.ndarray:
        """(16,) expert weights summing to 1; read-only, shared between calls."""
        key = _key(tmd)
        weights = self._weights.get(key)
        if weights is None:
            weights = self._compute(key)
        return weights

    def top_k(
        self, tmd: Tmd | None, k: int, exclude: Collection[int] = ()
    ) -> list[tuple[int, float]]:
        """The k best experts not excluded, best first, weights renormalised to sum to 1.

        Ties rank by expert index. An excluded expert's share goes to the next-best one; with
        every expert excluded the answer is empty.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        key = _key(tmd)
        weights = self.gate_weights(key)
        ranking = self._ranking[key]
        chosen = [e for e in ranking if e not in exclude][:k] if exclude else ranking[:k]
        total = sum(float(weights[e]) for e in chosen)
        if total <= 0.0:  # every chosen weight underflowed: split evenly
            return [(e, 1.0 / len(chosen)) for e in chosen]
        return [(e, float(weights[e]) / total) for e in chosen]

    def _compute(self, key: Tmd | None) -> np.ndarray:
        x = encode_tmd(key).astype(np.float64)  # validates before anything is cached
        logits = self._w2 @ np.maximum(self._w1 @ x + self._b1, 0.0) + self._b2
        e = np.exp(logits - logits.max())
        weights = e / e.sum()
        weights.setflags(write=False)
        self._weights[key] = weights
        self._ranking[key] = tuple(int(i) for i in np.argsort(-weights, kind="stable"))
        return weights


def _key(tmd: Any) -> Tmd | None:
    """Tuples (also of numpy ints) hash alike; lists from JSON become tuples."""
    return tmd if tmd is None or type(tmd) is tuple else tuple(tmd)

"""The TMD gate over 16 lane experts: Linear(16,64) -> ReLU -> Linear(64,16) -> Softmax.

TMD vector encoding (16-d, "tmd-bits-v1"): the code's 15 bits and a presence flag,
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

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm.checkpoint import read_torch_file

N_EXPERTS = 16
TMD_DIM = 16
HIDDEN = 64
ENCODING = "tmd-bits-v1"
GATE_TYPE = "tmd_gate"
DEFAULT_SCALE = 10.0

_FIELDS = (("domain", 4), ("task", 5), ("modifier", 6))
_SHAPES = {
    "net.0.weight": (HIDDEN, TMD_DIM),
    "net.0.bias": (HIDDEN,),
    "net.2.weight": (N_EXPERTS, HIDDEN),
    "net.2.bias": (N_EXPERTS,),
}

Tmd = tuple[int, int, int]


def encode_tmd(tmd: Tmd | None) -> np.ndarray:
    """(domain, task, modifier) -> the 16-d float32 TMD vector described above."""
    x = np.zeros(TMD_DIM, dtype=np.float32)
    if tmd is None:
        return x
    if len(tmd) != len(_FIELDS):
        raise ValueError(f"a TMD code is (domain, task, modifier), got {tmd!r}")
    offset = 0
    for value, (name, bits) in zip(tmd, _FIELDS, strict=True):
        if not isinstance(value, int | np.integer) or not 0 <= value < 2**bits:
            raise ValueError(f"TMD {name} must be an integer in 0..{2**bits - 1}, got {value!r}")
        for b in range(bits):
            x[offset + b] = (int(value) >> (bits - 1 - b)) & 1
        offset += bits
    x[TMD_DIM - 1] = 1.0
    return x


class TMDGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(TMD_DIM, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, N_EXPERTS),
            nn.Softmax(dim=-1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 16) TMD vectors -> (..., 16) expert weights summing to 1."""
        return self.net(x)


def lane_detector_gate(lane_logits: np.ndarray) -> TMDGate:
    """A gate whose expert logits for lane j are row j of `lane_logits` (16 x 16), for any code.

    Hidden units 0-15 are exact domain detectors (see the module docstring); the output layer
    maps detector j to row j. Zero logits everywhere are the uniform gate.
    """
    if lane_logits.shape != (N_EXPERTS, N_EXPERTS) or not np.isfinite(lane_logits).all():
        raise ValueError(f"lane_logits must be a finite (16, 16) array, got {lane_logits.shape}")
    w1 = np.zeros((HIDDEN, TMD_DIM), dtype=np.float32)
    for j in range(N_EXPERTS):
        bits = [(j >> (3 - b)) & 1 for b in range(4)]
        w1[j, :4] = [1.0 if bit else -1.0 for bit in bits]
        w1[j, TMD_DIM - 1] = 1.0 - sum(bits)
    w2 = np.zeros((N_EXPERTS, HIDDEN), dtype=np.float32)
    w2[:, :N_EXPERTS] = np.asarray(lane_logits, dtype=np.float32).T
    gate = TMDGate()
    with torch.no_grad():
        gate.net[0].weight.copy_(torch.from_numpy(w1))
        gate.net[0].bias.zero_()
        gate.net[2].weight.copy_(torch.from_numpy(w2))
        gate.net[2].bias.zero_()
    return gate.eval()


def default_gate() -> TMDGate:
    """Lane i -> expert i (weight ~0.9993), uniform without a TMD code."""
    return lane_detector_gate(DEFAULT_SCALE * np.eye(N_EXPERTS))


def save_gate(path: str | Path, gate: TMDGate, meta: dict[str, Any] | None = None) -> None:
    torch.save(
        {
            "model_type": GATE_TYPE,
            "encoding": ENCODING,
            "state_dict": gate.state_dict(),
            "meta": dict(meta or {}),
        },
        path,
    )


def load_gate(path: str | Path) -> TMDGate:
    """A gate file from save_gate, or a bare TMDGate state_dict; CheckpointError otherwise."""
    raw = read_torch_file(path, what="gate")
    where = f"gate {path}"
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: expected a dict, got {type(raw).__name__}")
    if set(raw) != set(_SHAPES):
        if raw.get("model_type") != GATE_TYPE:
            raise CheckpointError(
                f"{where}: model_type is {raw.get('model_type')!r}, expected {GATE_TYPE!r}"
            )
        if raw.get("encoding", ENCODING) != ENCODING:
            raise CheckpointError(
                f"{where}: encoding is {raw['encoding']!r}, this gateway reads {ENCODING!r}"
            )
        raw = raw.get("state_dict")
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where}: missing state_dict")
    problems = []
    if missing := sorted(set(_SHAPES) - set(raw)):
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected := sorted(set(raw) - set(_SHAPES)):
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    for key, shape in _SHAPES.items():
        t = raw.get(key)
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            problems.append(f"{key} is {got}, expected {shape}")
        elif not bool(torch.isfinite(t).all()):
            problems.append(f"non-finite values in {key}")
    if problems:
        raise CheckpointError(f"{where}: {' | '.join(problems)}")
    gate = TMDGate()
    gate.load_state_dict(raw, strict=True)
    return gate.eval()


class GateRuntime:
    """The gate's per-request decision in numpy, cached by TMD code (at most 32,768 codes)."""

    def __init__(self, gate: TMDGate) -> None:
        state = {k: v.detach().double().numpy() for k, v in gate.state_dict().items()}
        self._w1, self._b1 = state["net.0.weight"], state["net.0.bias"]
        self._w2, self._b2 = state["net.2.weight"], state["net.2.bias"]
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

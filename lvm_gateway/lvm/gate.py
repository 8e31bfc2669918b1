"""The TMD gate as a torch module, for fitting and saving gate files (`lvm-train --gate`).

The architecture, the TMD encoding, the file format and the serving runtime are the contract
in `lvm_gateway/contract/gate.py`; this module only adds torch: the trainable module, and the
conversion from and to the weights the contract describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvm_gateway.contract.gate import (
    DEFAULT_SCALE,
    ENCODING,
    GATE_TYPE,
    HIDDEN,
    N_EXPERTS,
    TMD_DIM,
    GateState,
    lane_detector_state,
)
from lvm_gateway.torchfile import load_gate_state


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

    def weights(self) -> GateState:
        """The gate's weights as the contract's numpy arrays (what GateRuntime serves)."""
        return {k: v.detach().double().numpy() for k, v in self.state_dict().items()}


def gate_from_state(state: GateState) -> TMDGate:
    gate = TMDGate()
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    gate.load_state_dict(tensors, strict=True)
    return gate.eval()


def lane_detector_gate(lane_logits: np.ndarray) -> TMDGate:
    """A gate whose expert logits for lane j are row j of `lane_logits` (16 x 16), for any code."""
    return gate_from_state(lane_detector_state(lane_logits))


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
    return gate_from_state(load_gate_state(path))

"""Reading torch files (checkpoints, gate files) safely: the one place that calls torch.load.

torch is imported on first use, so a gateway whose policies load no gate file never imports it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lvm_gateway.contract.gate import GateState, gate_state
from lvm_gateway.errors import CheckpointError


def read_torch_file(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True, every failure turned into a CheckpointError."""
    import torch

    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} {path}: no such file")
    if not p.is_file():
        raise CheckpointError(f"{what} {path}: not a regular file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for "not a checkpoint"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{what} {path}: not a loadable torch file: {first_line}") from exc


def load_gate_state(path: str | Path) -> GateState:
    """A gate file's weights as numpy arrays (save_gate's envelope or a bare state_dict)."""
    return gate_state(read_torch_file(path, what="gate"), f"gate {path}")

"""Memory-GRU checkpoints in the LVM project's format: save, load and validate.

A checkpoint is a dict `{"epoch", "model_type": "memory_gru", "model_state_dict", "val_results",
"args"}`. `args` carries the architecture sizes and the trained context length; a checkpoint whose
args lack the sizes is rebuilt from its tensor shapes. Loading never unpickles arbitrary objects
(`weights_only=True`, with `argparse.Namespace` allowed because the LVM project stores its args
that way); a checkpoint that needs more is refused rather than trusted.

Every way a file can fail to serve raises CheckpointError naming the problem, so `lvm-serve`
fails at start-up, never at the first request.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm.model import MODEL_TYPE, GRUPredictor, GRUSizes, MemoryAugmentedGRU
from lvm_gateway.torchfile import read_torch_file

_REQUIRED = ("model_type", "model_state_dict")
_DOCUMENTED = ("epoch", "model_type", "model_state_dict", "val_results", "args")
_GRU_LAYER = re.compile(r"gru\.weight_ih_l(\d+)$")


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: MemoryAugmentedGRU  # in eval mode
    context_length: int | None  # None when the checkpoint does not say
    epoch: int | None
    val_results: dict[str, Any]
    args: dict[str, Any]


def save_checkpoint(
    path: str | Path,
    model: MemoryAugmentedGRU,
    *,
    epoch: int,
    context_length: int,
    val_results: Mapping[str, Any],
    args: Mapping[str, Any] | None = None,
) -> None:
    """Write atomically, so a server never sees a half-written file mid-training."""
    checkpoint = {
        "epoch": epoch,
        "model_type": MODEL_TYPE,
        "model_state_dict": model.state_dict(),
        "val_results": dict(val_results),
        "args": {**(args or {}), **model.sizes.as_dict(), "context_length": context_length},
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    raw = read_torch_file(path, what="checkpoint")
    where = f"checkpoint {path}"
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{where}: expected a dict with keys {', '.join(_DOCUMENTED)}, got {type(raw).__name__}"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{where}: missing top-level keys: {', '.join(missing)}")
    if raw["model_type"] != MODEL_TYPE:
        raise CheckpointError(
            f"{where}: model_type is {raw['model_type']!r}, expected {MODEL_TYPE!r}"
        )
    state = raw["model_state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{where}: model_state_dict must map names to tensors")
    args = _args_dict(raw.get("args"), where)
    sizes = _sizes(args, state, where)
    model = MemoryAugmentedGRU(**sizes.as_dict())
    _check_state(model, state, where)
    model.load_state_dict(state, strict=True)
    return LoadedCheckpoint(
        model=model.eval(),
        context_length=_context_length(args, where),
        epoch=raw.get("epoch"),
        val_results=dict(raw.get("val_results") or {}),
        args=args,
    )


def load_predictor(path: str) -> GRUPredictor:
    """The model server's entry point: one validated model, ready for inference."""
    loaded = load_checkpoint(path)
    return GRUPredictor(loaded.model, loaded.context_length)


def _args_dict(args: Any, where: str) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return vars(args)
    if isinstance(args, Mapping):
        return dict(args)
    raise CheckpointError(f"{where}: args must be a dict, got {type(args).__name__}")


def _sizes(args: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str) -> GRUSizes:
    """Sizes from args where given, otherwise read off the tensors' shapes."""
    inferred = _sizes_from_shapes(state)
    sizes = {}
    for field, fallback in inferred.items():
        value = args.get(field, fallback)
        if value is None:
            raise CheckpointError(
                f"{where}: cannot tell {field}: not in args and its tensor is missing"
            )
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CheckpointError(f"{where}: args.{field} must be a positive integer: {value!r}")
        sizes[field] = value
    return GRUSizes(**sizes)


def _sizes_from_shapes(state: Mapping[str, torch.Tensor]) -> dict[str, int | None]:
    def dim(key: str, axis: int) -> int | None:
        t = state.get(key)
        return int(t.shape[axis]) if t is not None and t.dim() > axis else None

    layers = [int(m.group(1)) for k in state if (m := _GRU_LAYER.match(k))]
    return {
        "d_model": dim("input_norm.weight", 0),
        "hidden_dim": dim("gru.weight_hh_l0", 1),
        "num_layers": max(layers) + 1 if layers else None,
        "memory_slots": dim("memory.memory", 0),
    }


def _check_state(model: MemoryAugmentedGRU, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Name every missing, unexpected, misshapen or non-finite tensor, not just the first."""
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    shapes = [
        f"{k} is {tuple(state[k].shape)}, expected {tuple(t.shape)}"
        for k, t in expected.items()
        if k in state and state[k].shape != t.shape
    ]
    if shapes:
        built = ", ".join(f"{k}={v}" for k, v in model.sizes.as_dict().items())
        problems.append(f"wrong shapes for a model of {built}: {'; '.join(shapes)}")
    non_finite = [
        k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if non_finite:
        problems.append(f"non-finite values in: {', '.join(non_finite)}")
    if problems:
        raise CheckpointError(f"{where}: {' | '.join(problems)}")


def _context_length(args: Mapping[str, Any], where: str) -> int | None:
    value = args.get("context_length")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{where}: args.context_length must be a positive integer: {value!r}")
    return value

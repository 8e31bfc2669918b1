"""Checkpoints round-trip in the LVM project's format; every bad file is refused by name."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm.checkpoint import load_checkpoint, load_predictor, save_checkpoint
from lvm_gateway.lvm.model import MemoryAugmentedGRU

torch.set_num_threads(1)

SIZES = {"hidden_dim": 16, "num_layers": 2, "memory_slots": 8}


def tiny() -> MemoryAugmentedGRU:
    torch.manual_seed(0)
    return MemoryAugmentedGRU(**SIZES)


def raw_checkpoint(**overrides) -> dict:
    model = tiny()
    ckpt = {
        "epoch": 3,
        "model_type": "memory_gru",
        "model_state_dict": model.state_dict(),
        "val_results": {"hit@5": 0.5},
        "args": {**SIZES, "d_model": 768, "context_length": 4},
    }
    ckpt.update(overrides)
    return ckpt


def write(tmp_path: Path, obj) -> Path:
    path = tmp_path / "model.pt"
    torch.save(obj, path)
    return path


def test_round_trip_is_exact_and_strict(tmp_path):
    model = tiny()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, epoch=2, context_length=4, val_results={"hit@5": 0.25})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"epoch", "model_type", "model_state_dict", "val_results", "args"}
    assert raw["model_type"] == "memory_gru"
    assert raw["args"]["context_length"] == 4 and raw["args"]["hidden_dim"] == 16
    loaded = load_checkpoint(path)
    assert loaded.epoch == 2 and loaded.val_results == {"hit@5": 0.25}
    assert not loaded.model.training
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[key]), key
    # strict=True on a fresh model of the stored sizes is the compatibility contract
    MemoryAugmentedGRU(**SIZES).load_state_dict(raw["model_state_dict"], strict=True)


def test_predictor_from_file_matches_the_model(tmp_path):
    model = tiny().eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, epoch=0, context_length=4, val_results={})
    predictor = load_predictor(str(path))
    context = np.random.default_rng(1).standard_normal((9, 768)).astype(np.float32)
    with torch.inference_mode():
        x = torch.from_numpy(context[-4:])[None]
        expected = torch.nn.functional.normalize(x[0, -1] + model(x)[0], dim=-1).numpy()
    np.testing.assert_allclose(predictor.predict(context, (1, 2, 3)), expected, atol=1e-6)
    assert predictor.context_length == 4


def test_sizes_are_inferred_from_shapes_and_namespace_args_load(tmp_path):
    ns = argparse.Namespace(lr=1e-3, context_length=7)
    loaded = load_checkpoint(write(tmp_path, raw_checkpoint(args=ns)))
    assert loaded.model.sizes.hidden_dim == 16 and loaded.model.sizes.num_layers == 2
    assert loaded.context_length == 7
    without_args = {k: v for k, v in raw_checkpoint().items() if k != "args"}
    assert load_checkpoint(write(tmp_path, without_args)).context_length is None


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(tmp_path)


def test_not_a_torch_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_text("this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable torch file"):
        load_checkpoint(path)


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    opaque = datetime.datetime(2025, 10, 19)  # any global weights_only does not allow
    with pytest.raises(CheckpointError, match="not a loadable torch file"):
        load_checkpoint(write(tmp_path, raw_checkpoint(args=opaque)))


def test_not_a_dict(tmp_path):
    with pytest.raises(CheckpointError, match=r"expected a dict .* got list"):
        load_checkpoint(write(tmp_path, [1, 2]))


def test_missing_top_level_keys(tmp_path):
    ckpt = raw_checkpoint()
    del ckpt["model_state_dict"]
    with pytest.raises(CheckpointError, match="missing top-level keys: model_state_dict"):
        load_checkpoint(write(tmp_path, ckpt))


def test_wrong_model_type(tmp_path):
    with pytest.raises(CheckpointError, match="model_type is 'transformer', expected 'memory_gru'"):
        load_checkpoint(write(tmp_path, raw_checkpoint(model_type="transformer")))


def test_missing_and_unexpected_state_keys_are_named(tmp_path):
    ckpt = raw_checkpoint()
    state = dict(ckpt["model_state_dict"])
    del state["fusion.3.weight"]
    state["head.extra"] = torch.zeros(1)
    ckpt["model_state_dict"] = state
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(write(tmp_path, ckpt))
    assert "missing keys: fusion.3.weight" in str(err.value)
    assert "unexpected keys: head.extra" in str(err.value)


def test_wrong_shapes_are_named(tmp_path):
    ckpt = raw_checkpoint()
    ckpt["model_state_dict"]["output_proj.3.bias"] = torch.zeros(767)
    with pytest.raises(CheckpointError, match=r"wrong shapes.*: output_proj.3.bias is \(767,\)"):
        load_checkpoint(write(tmp_path, ckpt))


def test_args_contradicting_the_tensors(tmp_path):
    ckpt = raw_checkpoint(args={"hidden_dim": 32})
    with pytest.raises(
        CheckpointError,
        match=r"hidden_dim=32.*gru.weight_ih_l0 is \(48, 1536\), expected \(96, 1536\)",
    ):
        load_checkpoint(write(tmp_path, ckpt))


def test_non_tensor_state_and_non_finite_weights(tmp_path):
    with pytest.raises(CheckpointError, match="must map names to tensors"):
        load_checkpoint(write(tmp_path, raw_checkpoint(model_state_dict={"a": 1})))
    ckpt = raw_checkpoint()
    ckpt["model_state_dict"]["fusion.0.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match=r"non-finite values in: fusion\.0\.bias"):
        load_checkpoint(write(tmp_path, ckpt))


def test_bad_context_length(tmp_path):
    with pytest.raises(CheckpointError, match="context_length must be a positive integer"):
        load_checkpoint(write(tmp_path, raw_checkpoint(args={"context_length": 0})))

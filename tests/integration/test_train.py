"""Training a tiny GRU improves on its untrained self; the CLI writes loadable files."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from lvm_gateway.contract.gate import GateRuntime
from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm.checkpoint import load_checkpoint, save_checkpoint
from lvm_gateway.lvm.evaluate import hit_rates
from lvm_gateway.lvm.gate import load_gate
from lvm_gateway.lvm.model import GRUPredictor, MemoryAugmentedGRU
from lvm_gateway.lvm.train import TrainConfig, train, walks
from lvm_gateway.lvm.world import World
from lvm_gateway.procs import BIN

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

TINY = {"hidden": 32, "layers": 1, "slots": 16, "context": 8, "walks_per_epoch": 256}


def test_two_epochs_beat_the_untrained_model(tmp_path):
    cfg = TrainConfig(out=tmp_path / "lane3.pt", lane=3, epochs=2, patience=2, **TINY)
    reports = []
    result = train(cfg, on_epoch=reports.append)

    torch.manual_seed(cfg.seed)  # the same initial weights train() started from
    untrained = MemoryAugmentedGRU(hidden_dim=32, num_layers=1, memory_slots=16)
    world = World.build(cfg.world_seed)
    val = walks(world, cfg.val_walks, cfg.context, cfg.lane, np.random.default_rng([cfg.seed, 2]))
    before = hit_rates(GRUPredictor(untrained, cfg.context), world, val)

    assert [r.epoch for r in reports] == [1, 2]
    assert reports[1].loss < reports[0].loss
    assert result.best_hits[10] > before[10] + 0.1, (before, result.best_hits)
    loaded = load_checkpoint(cfg.out)
    assert loaded.epoch == result.best_epoch
    assert loaded.context_length == 8 and loaded.args["lane"] == 3
    assert loaded.val_results["hit@5"] == result.best_hits[5]


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    cfg = TrainConfig(out=tmp_path / "m.pt", epochs=6, patience=1, lr=1e-7, **TINY)
    result = train(cfg)
    assert result.stopped_early  # a learning rate this small cannot improve Hit@5 twice
    assert len(result.history) < 6
    assert load_checkpoint(cfg.out).epoch == result.best_epoch


def test_cli_trains_then_fits_a_gate_over_16_experts(tmp_path):
    out = tmp_path / "cli.pt"
    lvm_train = str(BIN / "lvm-train")
    args = ["--hidden", "16", "--layers", "1", "--slots", "8", "--context", "4"]
    done = subprocess.run(
        [lvm_train, "--out", str(out), *args, "--walks", "64", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Hit@5" in done.stderr and load_checkpoint(out).context_length == 4

    experts = tmp_path / "experts"
    experts.mkdir()
    for i in range(16):
        torch.manual_seed(i)
        model = MemoryAugmentedGRU(hidden_dim=8, num_layers=1, memory_slots=4)
        save_checkpoint(
            experts / f"lane{i:02d}.pt", model, epoch=0, context_length=4, val_results={}
        )
    gate_file = tmp_path / "gate.pt"
    gate_args = ["--experts", str(experts), "--context", "4", "--walks-per-lane", "4"]
    done = subprocess.run(
        [lvm_train, "--gate", *gate_args, "--out", str(gate_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "fitted" in done.stderr and "uniform" in done.stderr
    weights = GateRuntime(load_gate(gate_file).weights()).gate_weights((1, 2, 3))
    assert weights.shape == (16,) and weights.sum() == pytest.approx(1.0)


def test_cli_refuses_a_wrong_number_of_experts(tmp_path):
    done = subprocess.run(
        [str(BIN / "lvm-train"), "--gate", "--experts", str(tmp_path), "--out", "g.pt"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs 16 expert checkpoints, got 0" in done.stderr


def test_warm_start_carries_the_weights_and_refuses_other_sizes(tmp_path):
    first = TrainConfig(out=tmp_path / "short.pt", epochs=1, **TINY)
    train(first)
    longer = {**TINY, "context": 12}
    cfg = TrainConfig(out=tmp_path / "long.pt", epochs=1, lr=1e-9, init=first.out, **longer)
    train(cfg)
    start, after = load_checkpoint(first.out).model, load_checkpoint(cfg.out).model
    for name, param in start.named_parameters():
        torch.testing.assert_close(param, dict(after.named_parameters())[name], atol=1e-6, rtol=0)
    assert load_checkpoint(cfg.out).args["init"] == str(first.out)

    wider = TrainConfig(out=tmp_path / "w.pt", epochs=1, init=first.out, **{**TINY, "hidden": 8})
    with pytest.raises(CheckpointError, match=r"sizes .* differ"):
        train(wider)

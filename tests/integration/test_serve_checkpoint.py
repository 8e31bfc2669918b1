"""`lvm-serve --checkpoint` serves a trained GRU; a bad checkpoint fails at start-up, by name."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from lvm_gateway.lvm.checkpoint import load_predictor, save_checkpoint
from lvm_gateway.lvm.model import MemoryAugmentedGRU
from lvm_gateway.procs import BIN, free_port, start, stop

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = MemoryAugmentedGRU(hidden_dim=16, num_layers=2, memory_slots=8)
    path = tmp_path_factory.mktemp("ckpt") / "gru.pt"
    save_checkpoint(path, model, epoch=1, context_length=4, val_results={"hit@5": 0.0})
    return path


def test_serves_the_checkpoint_in_delta_mode(checkpoint, logs):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(
        ["lvm-serve", "--checkpoint", str(checkpoint), "--port", str(port), "--latency-ms", "0"],
        health_url=f"{base}/health",
        log=logs / "serve.log",
    )
    try:
        context = np.random.default_rng(0).standard_normal((6, 768)).astype(np.float32)
        body = {"context_vectors": context.tolist(), "tmd_codes": [2, 3, 4]}
        r = httpx.post(f"{base}/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["model_type"] == "memory_gru"
        got = np.asarray(data["predicted_vector"], dtype=np.float32)
        expected = load_predictor(str(checkpoint)).predict(context, (2, 3, 4))
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert len(data["neighbors"]) > 0
    finally:
        stop(proc)


def fails_at_start_up(path: Path) -> str:
    cmd = [str(BIN / "lvm-serve"), "--checkpoint", str(path), "--port", str(free_port())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    return done.stderr


def test_bad_checkpoint_fails_at_start_up_naming_the_problem(checkpoint, tmp_path):
    # One process per case costs a torch import; the other cases are unit-tested in-process.
    ckpt = torch.load(checkpoint, weights_only=True)
    del ckpt["model_state_dict"]["fusion.3.bias"]
    ckpt["model_state_dict"]["output_proj.3.weight"] = torch.zeros(768, 8)
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    stderr = fails_at_start_up(bad)
    assert "missing keys: fusion.3.bias" in stderr, stderr
    assert "output_proj.3.weight is (768, 8), expected (768, 32)" in stderr, stderr


def test_not_a_checkpoint_fails_at_start_up(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    stderr = fails_at_start_up(junk)
    assert "not a loadable torch file" in stderr, stderr

"""`lvm-serve --checkpoint` batches concurrent requests; each answer equals the unbatched one."""

from __future__ import annotations

import asyncio
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
    model = MemoryAugmentedGRU(hidden_dim=32, num_layers=1, memory_slots=16)
    path = tmp_path_factory.mktemp("ckpt") / "gru.pt"
    save_checkpoint(path, model, epoch=1, context_length=6, val_results={"hit@5": 0.0})
    return path


async def post_all(base: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=20) as client:
        return await asyncio.gather(*(client.post("/infer", json=b) for b in bodies))


@pytest.mark.parametrize("max_batch", [8, 1])
def test_concurrent_answers_equal_unbatched_predictions(checkpoint, logs, max_batch):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = ["lvm-serve", "--checkpoint", str(checkpoint), "--port", str(port)]
    cmd += ["--latency-ms", "0", "--max-batch", str(max_batch), "--batch-window-ms", "30"]
    proc = start(cmd, health_url=f"{base}/health", log=logs / "serve.log")
    try:
        rng = np.random.default_rng(3)
        lengths = [4, 9, 4, 2, 4, 9, 6, 1, 4, 4, 2, 9]
        ctxs = [rng.standard_normal((n, 768)).astype(np.float32) for n in lengths]
        bodies: list[dict] = [{"context_vectors": c.tolist()} for c in ctxs]
        bodies.insert(5, {"context_vectors": [[1.0] * 767]})  # rejected before batching
        responses = asyncio.run(post_all(base, bodies))
        bad = responses.pop(5)
        assert bad.status_code == 400, bad.text
        predictor = load_predictor(str(checkpoint))
        for ctx, r in zip(ctxs, responses, strict=True):
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["predicted_vector"], dtype=np.float32)
            np.testing.assert_allclose(got, predictor.predict(ctx, None), atol=1e-5)
    finally:
        stop(proc)
    log = (logs / "serve.log").read_text()
    if max_batch > 1:
        # How many shared a batch depends on arrival timing; the unit tests pin the grouping.
        assert "lvm-serve: 12 requests in" in log, log
    else:
        assert "requests in" not in log, log  # no batcher at all


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-batch", "0"), ("--threads", "0"), ("--batch-window-ms", "-1")]
)
def test_bad_batching_flags_are_refused(flag, value):
    cmd = [str(BIN / "lvm-serve"), "--port", str(free_port()), flag, value]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert flag in done.stderr

"""The micro-batcher groups concurrent predictions by length and hands each caller its own row."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from lvm_gateway.lvm.model import GRUPredictor, MemoryAugmentedGRU
from lvm_gateway.lvm.server import MicroBatcher

D = 768


class Recorder:
    """predict_batch returning each row's last vector; records batches and their thread."""

    def __init__(self, fail_on_length: int | None = None) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.threads: set[str] = set()
        self.fail_on_length = fail_on_length

    def predict_batch(self, contexts: np.ndarray) -> np.ndarray:
        self.shapes.append(contexts.shape)
        self.threads.add(threading.current_thread().name)
        if contexts.shape[1] == self.fail_on_length:
            raise RuntimeError("boom")
        return contexts[:, -1].copy()


def contexts(lengths: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, D)).astype(np.float32) for n in lengths]


def run(batcher: MicroBatcher, ctxs: list[np.ndarray]) -> list[np.ndarray | BaseException]:
    async def go() -> list[np.ndarray | BaseException]:
        try:
            return await asyncio.gather(*(batcher.predict(c) for c in ctxs), return_exceptions=True)
        finally:
            batcher.close()

    return asyncio.run(go())


def test_groups_by_length_and_returns_each_callers_row():
    model = Recorder()
    ctxs = contexts([3, 5, 3, 5, 3, 1])
    out = run(MicroBatcher(model, max_batch=16, window_s=0.01), ctxs)
    for ctx, row in zip(ctxs, out, strict=True):
        np.testing.assert_array_equal(row, ctx[-1])
    # The first request finds the model idle and runs alone; the rest wait for it, by length.
    assert model.shapes[0][:2] == (1, 3)
    assert sorted(s[:2] for s in model.shapes[1:]) == [(1, 1), (2, 3), (2, 5)]
    assert all(name.startswith("lvm-model") for name in model.threads)


def test_a_full_group_runs_at_once_and_never_exceeds_max_batch():
    model = Recorder()
    batcher = MicroBatcher(model, max_batch=4, window_s=10.0)  # the window never expires
    ctxs = contexts([2] * 8)
    out = run(batcher, ctxs)
    # One runs at once (idle model), four run as soon as the group is full, three once it frees.
    assert [s[0] for s in model.shapes] == [1, 4, 3]
    assert (batcher.batches, batcher.requests, batcher.largest) == (3, 8, 4)
    for ctx, row in zip(ctxs, out, strict=True):
        np.testing.assert_array_equal(row, ctx[-1])


def test_a_failing_batch_fails_only_its_own_requests():
    model = Recorder(fail_on_length=4)
    ctxs = contexts([4, 2, 4, 2])
    out = run(MicroBatcher(model, max_batch=16, window_s=0.005), ctxs)
    assert isinstance(out[0], RuntimeError) and isinstance(out[2], RuntimeError)
    np.testing.assert_array_equal(out[1], ctxs[1][-1])
    np.testing.assert_array_equal(out[3], ctxs[3][-1])


def test_contexts_longer_than_the_model_reads_share_a_batch():
    model = Recorder()
    ctxs = contexts([6, 9, 7, 2])
    out = run(MicroBatcher(model, max_batch=16, window_s=0.005, context_length=4), ctxs)
    assert sorted(s[:2] for s in model.shapes) == [(1, 2), (1, 4), (2, 4)]
    for ctx, row in zip(ctxs, out, strict=True):
        np.testing.assert_array_equal(row, ctx[-1])


def test_the_window_bounds_the_wait_behind_a_busy_model():
    class Slow(Recorder):
        def predict_batch(self, contexts: np.ndarray) -> np.ndarray:
            if not self.shapes:
                time.sleep(0.5)  # the first batch holds the model thread
            return super().predict_batch(contexts)

    model = Slow()

    async def go() -> None:
        batcher = MicroBatcher(model, max_batch=16, window_s=0.01)
        first = asyncio.ensure_future(batcher.predict(contexts([3])[0]))
        await asyncio.sleep(0.05)
        pair = [asyncio.ensure_future(batcher.predict(c)) for c in contexts([2, 2])]
        await asyncio.sleep(0.1)  # the pair's window has passed: handed to the model thread
        late = asyncio.ensure_future(batcher.predict(contexts([2])[0]))
        await asyncio.gather(first, *pair, late)
        batcher.close()

    asyncio.run(go())
    # Without the window the pair would have waited for the model and taken the late one along.
    assert [s[:2] for s in model.shapes] == [(1, 3), (2, 2), (1, 2)]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), max_batch=0, window_s=0.001)


@pytest.mark.parametrize("context_length", [None, 5])
def test_batched_gru_matches_unbatched_prediction(context_length):
    torch.manual_seed(0)
    model = MemoryAugmentedGRU(hidden_dim=32, num_layers=1, memory_slots=16)
    predictor = GRUPredictor(model, context_length)
    ctxs = contexts([7, 3, 7, 7, 3, 1, 8, 7], seed=1)
    batcher = MicroBatcher(predictor, max_batch=16, window_s=0.01, context_length=context_length)
    out = run(batcher, ctxs)
    assert batcher.largest > 1
    for ctx, row in zip(ctxs, out, strict=True):
        np.testing.assert_allclose(row, predictor.predict(ctx, None), atol=1e-5)

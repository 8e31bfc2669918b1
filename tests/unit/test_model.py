"""The memory GRU's architecture is a compatibility contract with the LVM project's checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvm_gateway.lvm.model import GRUPredictor, MemoryAugmentedGRU, count_trainable

torch.set_num_threads(1)

DOCUMENTED_KEYS = {
    *(f"gru.{w}_l{i}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for i in range(4)),
    "memory.memory",
    "memory.query_proj.weight",
    "memory.query_proj.bias",
    "memory.write_gate.weight",
    "memory.write_gate.bias",
    "input_norm.weight",
    "input_norm.bias",
    "fusion.0.weight",
    "fusion.0.bias",
    "fusion.3.weight",
    "fusion.3.bias",
    "output_proj.0.weight",
    "output_proj.0.bias",
    "output_proj.3.weight",
    "output_proj.3.bias",
}


def tiny(**kw) -> MemoryAugmentedGRU:
    torch.manual_seed(0)
    return MemoryAugmentedGRU(**{"hidden_dim": 16, "num_layers": 2, "memory_slots": 8, **kw})


def test_default_sizes_match_the_lvm_project():
    model = MemoryAugmentedGRU()
    assert count_trainable(model) == 11_292_160
    state = model.state_dict()
    assert set(state) == DOCUMENTED_KEYS
    assert state["memory.memory"].shape == (2048, 768)
    assert state["gru.weight_ih_l0"].shape == (3 * 512, 1536)
    assert state["memory.write_gate.weight"].shape == (2048, 512)
    assert state["fusion.0.weight"].shape == (512, 1280)
    assert state["output_proj.0.weight"].shape == (1024, 512)
    assert "memory.memory" not in dict(model.named_parameters())  # a buffer


def test_forward_is_unit_and_steps_agree_with_prefixes():
    model = tiny().eval()
    x = torch.randn(3, 6, 768)
    out = model(x)
    assert out.shape == (3, 768)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    steps = model.forward_steps(x)
    torch.testing.assert_close(steps[:, 2], model(x[:, :3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(steps[:, -1], out, atol=1e-5, rtol=0)


def test_training_steps_write_memory_and_backpropagate():
    model = tiny().train()
    before = model.memory.memory.clone()
    model.forward_steps(torch.randn(2, 5, 768)).sum().backward()
    assert not torch.equal(before, model.memory.memory)
    assert model.gru.weight_ih_l0.grad is not None


def test_predictor_uses_delta_mode_and_truncates_context():
    model = tiny()
    predictor = GRUPredictor(model, context_length=4)
    context = np.random.default_rng(0).standard_normal((10, 768)).astype(np.float32)
    got = predictor.predict(context, None)
    with torch.inference_mode():
        x = torch.from_numpy(context[-4:])[None]
        expected = torch.nn.functional.normalize(x[0, -1] + model(x)[0], dim=-1).numpy()
    assert got.dtype == np.float32 and got.shape == (768,)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert predictor.model_type == "memory_gru"


@pytest.mark.parametrize("shape", [(0, 768), (3, 767), (768,)])
def test_predictor_rejects_malformed_context(shape):
    with pytest.raises(ValueError, match="contexts must be"):
        GRUPredictor(tiny(), None).predict(np.zeros(shape, np.float32), None)

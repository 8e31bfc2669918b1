"""The TMD gate: encoding, default routing, top-k with renormalisation, numpy == torch, files."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from lvm_gateway.contract.gate import GateRuntime, encode_tmd
from lvm_gateway.errors import CheckpointError
from lvm_gateway.lvm.gate import TMDGate, default_gate, lane_detector_gate, load_gate, save_gate

torch.set_num_threads(1)


def test_encoding_is_the_bits_and_a_presence_flag():
    x = encode_tmd((5, 17, 33))
    np.testing.assert_array_equal(x[:4], [0, 1, 0, 1])
    np.testing.assert_array_equal(x[4:9], [1, 0, 0, 0, 1])
    np.testing.assert_array_equal(x[9:15], [1, 0, 0, 0, 0, 1])
    assert x[15] == 1.0 and x.shape == (16,) and x.dtype == np.float32
    assert not encode_tmd(None).any()


@pytest.mark.parametrize(
    "tmd, message",
    [((16, 0, 0), "domain"), ((0, 32, 0), "task"), ((0, 0, -1), "modifier"), ((1, 2), "code")],
)
def test_encoding_rejects_out_of_range_codes(tmd, message):
    with pytest.raises(ValueError, match=message):
        encode_tmd(tmd)


def test_default_gate_sends_lane_i_to_expert_i_whatever_the_task_and_modifier():
    runtime = GateRuntime(default_gate().weights())
    for lane in range(16):
        for task, modifier in [(0, 0), (31, 63), (lane, 2 * lane)]:
            weights = runtime.gate_weights((lane, task, modifier))
            assert int(np.argmax(weights)) == lane
            assert weights[lane] > 0.999
            assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(runtime.gate_weights(None), np.full(16, 1 / 16))


def test_numpy_path_matches_torch_for_any_gate():
    torch.manual_seed(3)
    gate = TMDGate().eval()
    runtime = GateRuntime(gate.weights())
    for tmd in [(0, 0, 0), (7, 12, 40), (15, 31, 63), None]:
        with torch.no_grad():
            expected = gate(torch.from_numpy(encode_tmd(tmd))).numpy()
        np.testing.assert_allclose(runtime.gate_weights(tmd), expected, atol=1e-6)


def test_top_k_renormalises_and_masks_to_the_next_best():
    logits = np.zeros((16, 16))
    logits[3, [3, 9, 1]] = [3.0, 2.0, 1.0]
    runtime = GateRuntime(lane_detector_gate(logits).weights())
    w = runtime.gate_weights((3, 0, 0))
    top = runtime.top_k((3, 0, 0), 2)
    assert [e for e, _ in top] == [3, 9]
    assert top[0][1] == pytest.approx(w[3] / (w[3] + w[9]))
    assert sum(weight for _, weight in top) == pytest.approx(1.0)
    masked = runtime.top_k((3, 0, 0), 2, exclude={3})
    assert [e for e, _ in masked] == [9, 1]
    assert masked[0][1] == pytest.approx(w[9] / (w[9] + w[1]))
    assert runtime.top_k((3, 0, 0), 1, exclude=set(range(15))) == [(15, 1.0)]
    assert runtime.top_k((3, 0, 0), 2, exclude=set(range(16))) == []
    # ties rank by expert index; lists and numpy ints are the same code
    assert [e for e, _ in runtime.top_k((4, 1, 1), 3)] == [0, 1, 2]
    assert runtime.top_k([3, np.int64(0), 0], 2) == top
    with pytest.raises(ValueError, match="k must be"):
        runtime.top_k((3, 0, 0), 0)


def test_decision_is_fast_once_cached():
    runtime = GateRuntime(default_gate().weights())
    codes = [(d, t, m) for d in range(16) for t in (0, 5) for m in (1, 9)]
    for code in codes:
        runtime.top_k(code, 2)
    n = 20_000
    started = time.perf_counter()
    for i in range(n):
        runtime.top_k(codes[i % len(codes)], 2)
    per_call_us = (time.perf_counter() - started) / n * 1e6
    assert per_call_us < 50, per_call_us


def test_gate_file_round_trip_and_bare_state_dict(tmp_path):
    torch.manual_seed(1)
    gate = TMDGate()
    path = tmp_path / "gate.pt"
    save_gate(path, gate, meta={"temperature": 0.1})
    loaded = load_gate(path)
    for key, tensor in gate.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[key])
    bare = tmp_path / "bare.pt"
    torch.save(gate.state_dict(), bare)
    assert torch.equal(load_gate(bare).net[2].bias, gate.net[2].bias)


def test_bad_gate_files_are_refused_by_name(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not torch")
    with pytest.raises(CheckpointError, match="not a loadable torch file"):
        load_gate(junk)
    with pytest.raises(CheckpointError, match="no such file"):
        load_gate(tmp_path / "absent.pt")
    wrong_type = tmp_path / "wrong.pt"
    torch.save({"model_type": "memory_gru", "state_dict": {}}, wrong_type)
    with pytest.raises(CheckpointError, match="model_type is 'memory_gru'"):
        load_gate(wrong_type)
    state = TMDGate().state_dict()
    state["net.2.weight"] = torch.zeros(8, 64)
    del state["net.0.bias"]
    bad = tmp_path / "bad.pt"
    torch.save({"model_type": "tmd_gate", "state_dict": state}, bad)
    with pytest.raises(CheckpointError) as err:
        load_gate(bad)
    assert "missing keys: net.0.bias" in str(err.value)
    assert "net.2.weight is (8, 64), expected (16, 64)" in str(err.value)

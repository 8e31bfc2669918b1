"""The `tmd` mixture policy and the fusion arithmetic, pure."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from lvm_gateway.config.load import parse_config
from lvm_gateway.errors import BadRequestError, ConfigError
from lvm_gateway.gateway.fusion import fuse
from lvm_gateway.gateway.signals import Prediction
from lvm_gateway.policies.base import Policy, RequestInfo, RoutingView

EXPERTS = [f"e{i}" for i in range(16)]


def mixture(extra: str = "") -> Policy:
    variants = {e: {"url": f"http://127.0.0.1:{9000 + i}"} for i, e in enumerate(EXPERTS)}
    variants["champion"] = {"url": "http://127.0.0.1:8999"}
    doc = {
        "variants": variants,
        "routes": [{"path": "/infer", "policy": yaml.safe_load(
            f"{{canary: {{stable: champion, weight: 100, canary: "
            f"{{tmd: {{name: moe, experts: [{', '.join(EXPERTS)}], top_k: 2 {extra}}}}}}}}}"
        )}],
    }  # fmt: skip
    return parse_config(doc).routes["/infer"].policy


def lane_req(lane: int) -> RequestInfo:
    return RequestInfo({"x-tmd-domain": str(lane), "x-tmd-task": "1", "x-tmd-modifier": "2"}, b"")


def test_default_gate_sends_lane_i_to_expert_i() -> None:
    policy = mixture()
    for lane in range(16):
        d = policy.decide(lane_req(lane), RoutingView())
        assert d.variant == "moe" and d.fallback == "champion"
        (first, w1), (_, w2) = d.experts
        assert first == f"e{lane}" and w1 > 0.99
        assert w1 + w2 == pytest.approx(1.0)


def test_tmd_from_body_and_bad_codes() -> None:
    policy = mixture()
    body = RequestInfo({}, b'{"context_vectors": [[0.0]], "tmd_codes": [7, 3, 1]}')
    assert policy.decide(body, RoutingView()).experts[0][0] == "e7"
    with pytest.raises(BadRequestError, match="invalid TMD code"):
        policy.decide(lane_req(16), RoutingView())


def test_open_circuit_masks_an_expert_and_its_share_moves_on() -> None:
    policy = mixture()
    d = policy.decide(lane_req(3), RoutingView(open_circuits=frozenset({"e3"})))
    assert "e3" not in [e for e, _ in d.experts] and len(d.experts) == 2
    assert sum(w for _, w in d.experts) == pytest.approx(1.0)
    assert d.masked == ("e3",)


def test_capacity_overflows_to_the_next_best_expert() -> None:
    policy = mixture(", capacity: 4")
    assert policy.decide(lane_req(5), RoutingView(inflight={"e5": 3})).experts[0][0] == "e5"
    d = policy.decide(lane_req(5), RoutingView(inflight={"e5": 4}))
    assert d.experts[0][0] != "e5" and d.masked == ("e5",)


def test_every_expert_masked_leaves_no_expert() -> None:
    policy = mixture()
    d = policy.decide(lane_req(1), RoutingView(open_circuits=frozenset(EXPERTS)))
    # The canary's own subtree has nothing to call: the decision says so with no experts,
    # and the transport answers 502 (or falls back to the champion).
    assert d.fanout and d.experts == () and d.fallback == "champion"


def test_wrong_expert_count_and_unknown_expert_are_config_errors() -> None:
    doc = {
        "variants": {"a": {"url": "http://127.0.0.1:1"}},
        "routes": [{"path": "/infer", "policy": {"tmd": {"experts": ["a"] * 15 + ["zz"]}}}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert any(
        "routes[0].policy.tmd.experts[15]: unknown variant 'zz'" in e for e in info.value.errors
    )
    doc["routes"][0]["policy"] = {"tmd": {"experts": ["a"] * 3}}
    with pytest.raises(ConfigError, match="needs exactly 16 experts"):
        parse_config(doc)


def unit(seed: int) -> list[float]:
    v = np.random.default_rng(seed).standard_normal(768)
    return (v / np.linalg.norm(v)).tolist()


def pred(values: list[float], neighbors: tuple[tuple[str, float], ...]) -> Prediction:
    return Prediction(np.asarray(values), [i for i, _ in neighbors], [s for _, s in neighbors])


def test_fusion_is_the_renormalised_weighted_sum() -> None:
    a, b = unit(1), unit(2)
    # Gate weights 0.6 / 0.2 renormalise to 0.75 / 0.25 over the two experts that answered.
    doc, fused = fuse([("e1", 0.6, pred(a, (("x", 0.9), ("y", 0.5)))),
                       ("e2", 0.2, pred(b, (("y", 0.8), ("z", 0.7))))])  # fmt: skip
    expected = 0.75 * np.array(a) + 0.25 * np.array(b)
    expected /= np.linalg.norm(expected)
    assert np.allclose(doc["predicted_vector"], expected, atol=1e-6)
    assert np.linalg.norm(doc["predicted_vector"]) == pytest.approx(1.0, abs=1e-6)
    scores = {n["id"]: n["score"] for n in doc["neighbors"]}
    assert scores == pytest.approx({"x": 0.675, "y": 0.575, "z": 0.175})
    assert [n["id"] for n in doc["neighbors"]] == ["x", "y", "z"]
    assert doc["experts"] == [{"expert": "e1", "weight": 0.75}, {"expert": "e2", "weight": 0.25}]
    assert fused.neighbor_ids == ["x", "y", "z"] and fused.best_score == pytest.approx(0.675)


def test_fusion_with_one_expert_is_that_expert() -> None:
    a = unit(5)
    doc, _ = fuse([("e9", 0.3, pred(a, (("x", 0.5),)))])
    assert np.allclose(doc["predicted_vector"], a, atol=1e-6)
    assert doc["experts"] == [{"expert": "e9", "weight": 1.0}]

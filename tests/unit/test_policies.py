"""The routing policies, pure: split accuracy, monotone stickiness, overrides, composition."""

from __future__ import annotations

import math
import random

import pytest
import yaml

from lvm_gateway.config.load import parse_config
from lvm_gateway.errors import BadRequestError
from lvm_gateway.policies.base import Decision, Policy, RequestInfo, RoutingView
from lvm_gateway.policies.canary import POSITIONS_KEPT, Canary

N_USERS = 100_000


def tree(policy_yaml: str, rollouts: str = "") -> Policy:
    doc = yaml.safe_load(
        f"""
variants:
  a: {{url: "http://127.0.0.1:1"}}
  b: {{url: "http://127.0.0.1:2"}}
  c: {{url: "http://127.0.0.1:3"}}
routes:
  - path: /infer
    policy: {policy_yaml}
{rollouts}
"""
    )
    return parse_config(doc).routes["/infer"].policy


def req(headers: dict[str, str] | None = None, body: bytes = b"") -> RequestInfo:
    return RequestInfo({k.lower(): v for k, v in (headers or {}).items()}, body)


def users_in_canary(policy: Policy, view: RoutingView, canary: str = "b") -> set[str]:
    return {
        u
        for u in (f"user-{i}" for i in range(N_USERS))
        if policy.decide(req({"X-User-Id": u}), view).variant == canary
    }


def within_binomial(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("weight", [1, 10, 12.5, 50, 90])
def test_sticky_split_matches_weight(weight: float) -> None:
    policy = tree(
        f"{{canary: {{stable: a, canary: b, weight: {weight}, sticky: {{header: X-User-Id}}}}}}"
    )
    n = len(users_in_canary(policy, RoutingView()))
    assert within_binomial(n, N_USERS, weight / 100), n


def test_stickiness_is_monotone_across_weight_changes() -> None:
    policy = tree(
        "{canary: {stable: a, canary: b, sticky: {header: X-User-Id}}}",
        "rollouts: {r: {route: /infer}}",
    )
    at = {w: users_in_canary(policy, RoutingView(weights={"r": w})) for w in (10, 20, 50)}
    assert at[10] < at[20] < at[50]
    # Same user, same answer, every time: from the remembered positions and after they were
    # cleared (N_USERS is past what a split keeps).
    again = users_in_canary(policy, RoutingView(weights={"r": 10}))
    assert again == at[10]
    assert isinstance(policy, Canary) and 0 < len(policy.positions) <= POSITIONS_KEPT < N_USERS


def test_rollout_weight_overrides_yaml_weight_and_zero_means_none() -> None:
    policy = tree(
        "{canary: {stable: a, canary: b, weight: 50, sticky: {header: X-User-Id}}}",
        "rollouts: {r: {route: /infer}}",
    )
    assert users_in_canary(policy, RoutingView(weights={"r": 0})) == set()
    assert len(users_in_canary(policy, RoutingView(weights={"r": 100}))) == N_USERS
    # No snapshot entry yet: the YAML weight applies.
    assert within_binomial(len(users_in_canary(policy, RoutingView())), N_USERS, 0.5)


def test_requests_without_the_sticky_header_split_by_the_draw() -> None:
    policy = tree("{canary: {stable: a, canary: b, weight: 20, sticky: {header: X-User-Id}}}")
    rng = random.Random(7)
    hits = sum(
        policy.decide(req(), RoutingView(draw=rng.random())).variant == "b" for _ in range(N_USERS)
    )
    assert within_binomial(hits, N_USERS, 0.2)


def test_salts_make_rollouts_independent() -> None:
    first = tree(
        "{canary: {stable: a, canary: b, weight: 10, sticky: {header: X-User-Id}, salt: one}}"
    )
    second = tree(
        "{canary: {stable: a, canary: b, weight: 10, sticky: {header: X-User-Id}, salt: two}}"
    )
    both = users_in_canary(first, RoutingView()) & users_in_canary(second, RoutingView())
    # Independent 10% samples overlap on ~1% of users, not ~10%.
    assert within_binomial(len(both), N_USERS, 0.01)


def test_canary_decision_falls_back_to_stable() -> None:
    policy = tree("{canary: {stable: a, canary: b, weight: 100}}")
    decision = policy.decide(req(), RoutingView(draw=0.5))
    assert (decision.variant, decision.fallback) == ("b", "a")


def test_open_canary_circuit_routes_to_stable() -> None:
    policy = tree("{canary: {stable: a, canary: b, weight: 100}}")
    decision = policy.decide(req(), RoutingView(draw=0.5, open_circuits=frozenset({"b"})))
    assert (decision.variant, decision.fallback, decision.diverted) == ("a", None, "b")
    # Only canary users are diverted: a stable user's decision does not charge the canary.
    half = tree("{canary: {stable: a, canary: b, weight: 50}}")
    outside = half.decide(req(), RoutingView(draw=0.9, open_circuits=frozenset({"b"})))
    assert (outside.variant, outside.diverted) == ("a", None)
    assert policy.decide(req(), RoutingView(draw=0.5)).diverted is None


def test_mirror_share() -> None:
    policy = tree("{canary: {stable: a, canary: b, weight: 0, mirror: {variant: c, percent: 30}}}")
    rng = random.Random(3)
    mirrored = sum(
        policy.decide(req(), RoutingView(draw=rng.random(), mirror_draw=rng.random())).mirror
        == Decision("c")
        for _ in range(20_000)
    )
    assert within_binomial(mirrored, 20_000, 0.3)


def test_header_override() -> None:
    policy = tree(
        "{header: {header: X-Variant, default: {canary: {stable: a, canary: b, weight: 0}}}}"
    )
    assert policy.decide(req({"X-Variant": "b"}), RoutingView()).variant == "b"
    assert policy.decide(req(), RoutingView()).variant == "a"
    with pytest.raises(
        BadRequestError, match=r"X-Variant: 'zzz' is not a variant of this route; allowed: a, b"
    ):
        policy.decide(req({"X-Variant": "zzz"}), RoutingView())


def test_context_length_routing_by_header_and_body() -> None:
    policy = tree("{context_length: {threshold: 3, short: a, long: b}}")
    assert policy.decide(req({"X-Context-Length": "2"}), RoutingView()).variant == "a"
    assert policy.decide(req({"X-Context-Length": "3"}), RoutingView()).variant == "b"
    assert (
        policy.decide(req(body=b'{"context_vectors": [[1], [2], [3], [4]]}'), RoutingView()).variant
        == "b"
    )
    assert policy.decide(req(body=b'{"context_vectors": [[1]]}'), RoutingView()).variant == "a"
    for bad in (b"{not json", b'{"context_vectors": 5}', b""):
        with pytest.raises(BadRequestError):
            policy.decide(req(body=bad), RoutingView())
    with pytest.raises(BadRequestError, match="X-Context-Length must be an integer"):
        policy.decide(req({"X-Context-Length": "many"}), RoutingView())


def test_composition_header_over_context_over_canary() -> None:
    policy = tree(
        "{header: {default: {context_length: {threshold: 100, long: c,"
        " short: {canary: {stable: a, canary: b, weight: 100}}}}}}"
    )
    assert policy.leaves() == {"a", "b", "c"}
    assert policy.decide(req({"X-Context-Length": "500"}), RoutingView()).variant == "c"
    short = policy.decide(req({"X-Context-Length": "5"}), RoutingView())
    assert (short.variant, short.fallback) == ("b", "a")
    assert (
        policy.decide(req({"X-Variant": "a", "X-Context-Length": "5"}), RoutingView()).variant
        == "a"
    )


def test_decide_is_pure() -> None:
    policy = tree("{canary: {stable: a, canary: b, weight: 37, sticky: {header: X-User-Id}}}")
    view = RoutingView(draw=0.3)
    first = [policy.decide(req({"X-User-Id": f"u{i}"}), view) for i in range(1000)]
    second = [policy.decide(req({"X-User-Id": f"u{i}"}), view) for i in range(1000)]
    assert first == second


def test_the_canary_is_sticky_on_x_user_id_unless_told_otherwise() -> None:
    default = tree("{canary: {stable: a, canary: b, weight: 50}}")
    for user in ("u1", "u2", "u3", "u4"):
        seen = {
            default.decide(RequestInfo({"x-user-id": user}, b""), RoutingView(draw=d)).variant
            for d in (0.0, 0.3, 0.6, 0.99)
        }
        assert len(seen) == 1, user  # the draw does not move a user
    unsticky = tree("{canary: {stable: a, canary: b, weight: 50, sticky: false}}")
    seen = {
        unsticky.decide(RequestInfo({"x-user-id": "u1"}, b""), RoutingView(draw=d)).variant
        for d in (0.0, 0.99)
    }
    assert seen == {"a", "b"}

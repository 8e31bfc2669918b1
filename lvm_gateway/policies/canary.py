"""`canary`: a weighted split between a stable and a canary subtree, sticky per user.

A user's position is a stable hash of the sticky header into [0, 100); the user is in the canary
when that position is below the weight. Raising the weight therefore only ever adds users to the
canary (monotone stickiness): whoever was in at 10% is still in at 20% and 50%. Requests without
the header are split by the per-request random draw. A canary user whose canary's circuit is
open is served by stable, and the decision says it was diverted (the data plane counts that
against the canary).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from lvm_gateway.policies.base import (
    BuildContext,
    Decision,
    Policy,
    PolicyPlugin,
    RequestInfo,
    RoutingView,
    display_name,
    register,
)
from lvm_gateway.policies.canary_spec import CanaryParams

_SCALE: Final = 100.0 / 2**64
# Sticky keys whose position a split remembers: the keyed hash is ~1 us, a hit ~0.05; a user
# sends many requests. Past this many the memory is cleared (~2 MB at most).
POSITIONS_KEPT: Final = 16_384


def bucket(key: str, salt: bytes) -> float:
    """Position of a sticky key in [0, 100): uniform, stable across processes and restarts."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") * _SCALE


@dataclass(frozen=True, slots=True)
class Canary:
    stable: Policy
    canary: Policy
    weight: float
    sticky_header: str | None  # lower-case
    salt: bytes
    mirror: str | None = None
    mirror_percent: float = 0.0
    rollout: str | None = None
    positions: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def weight_in(self, view: RoutingView) -> float:
        if self.rollout is None:
            return self.weight
        return view.weights.get(self.rollout, self.weight)

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        weight = self.weight_in(view)
        key = req.headers.get(self.sticky_header) if self.sticky_header else None
        position = self._position(key) if key else view.draw * 100.0
        stable = self.stable.decide(req, view)
        mirror = self._mirror(req, view)
        chosen = self.canary.decide(req, view) if position < weight else None
        if chosen is None:
            return _routed(stable, stable.fallback, mirror, self.rollout, stable.diverted)
        if chosen.variant in view.open_circuits:
            # The stable subtree serves a canary user, and the canary is charged for it.
            return _routed(stable, stable.fallback, mirror, self.rollout, chosen.variant)
        fallback = stable.variant if stable.variant != chosen.variant else chosen.fallback
        return _routed(chosen, fallback, mirror, self.rollout, chosen.diverted)

    def _position(self, key: str) -> float:
        position = self.positions.get(key)
        if position is None:
            if len(self.positions) >= POSITIONS_KEPT:
                self.positions.clear()
            position = self.positions[key] = bucket(key, self.salt)
        return position

    def _mirror(self, req: RequestInfo, view: RoutingView) -> Decision | None:
        # A rollout's shadow step mirrors a share of traffic to the canary subtree (a variant or
        # a whole mixture), which serves no one.
        shadow = view.shadow.get(self.rollout) if self.rollout is not None else None
        if shadow is not None:
            return self.canary.decide(req, view) if view.mirror_draw * 100.0 < shadow else None
        if self.mirror is not None and view.mirror_draw * 100.0 < self.mirror_percent:
            return Decision(self.mirror)
        return None

    def leaves(self) -> frozenset[str]:
        extra = {self.mirror} if self.mirror else set()
        return self.stable.leaves() | self.canary.leaves() | extra

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        return self.stable.needs_body(headers) or self.canary.needs_body(headers)


def _build(p: CanaryParams, ctx: BuildContext, path: str) -> Canary:
    stable = ctx.build(p.stable, f"{path}.stable")
    canary = ctx.build(p.canary, f"{path}.canary")
    if p.mirror is not None:
        ctx.build(p.mirror.variant, f"{path}.mirror.variant")
    rollout = ctx.claim_rollout(path, display_name(stable), display_name(canary), canary.leaves())
    salt = p.salt if p.salt is not None else (rollout or "/".join(sorted(canary.leaves())))
    return Canary(
        stable=stable,
        canary=canary,
        weight=p.weight,
        sticky_header=p.sticky.header.lower() if p.sticky is not None else None,
        salt=salt.encode()[:64],
        mirror=p.mirror.variant if p.mirror else None,
        mirror_percent=p.mirror.percent if p.mirror else 0.0,
        rollout=rollout,
    )


PLUGIN = register(PolicyPlugin("canary", CanaryParams, _build))


def _routed(
    d: Decision,
    fallback: str | None,
    mirror: Decision | None,
    rollout: str | None,
    diverted: str | None,
) -> Decision:
    """`d` as this split routes it: dataclasses.replace, built directly (replace costs ~1 us
    more, on every request)."""
    return Decision(
        d.variant, fallback, mirror or d.mirror, d.fanout, d.experts, d.deadline_s, rollout,
        d.masked, diverted,
    )  # fmt: skip

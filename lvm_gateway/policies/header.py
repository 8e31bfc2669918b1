"""`header`: an explicit override by request header (e.g. `X-Variant: phase2`).

A route has overrides only when its tree contains this policy; the allowed set defaults to the
leaves of the `default` subtree, and a value outside it is a 400 that names the allowed ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from lvm_gateway.contract.strict import StrictModel
from lvm_gateway.errors import BadRequestError
from lvm_gateway.policies.base import (
    BuildContext,
    Decision,
    Policy,
    PolicyPlugin,
    PolicySpec,
    RequestInfo,
    RoutingView,
    register,
)


class HeaderParams(StrictModel):
    header: str = "X-Variant"
    allow: tuple[str, ...] | None = None
    default: PolicySpec


@dataclass(frozen=True, slots=True)
class HeaderOverride:
    header: str  # lower-case
    allow: frozenset[str]
    default: Policy
    display: str  # the header as configured, for messages

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        wanted = req.headers.get(self.header)
        if not wanted:
            return self.default.decide(req, view)
        if wanted not in self.allow:
            raise BadRequestError(
                f"{self.display}: {wanted!r} is not a variant of this route; "
                f"allowed: {', '.join(sorted(self.allow))}"
            )
        return Decision(wanted)

    def leaves(self) -> frozenset[str]:
        return self.default.leaves() | self.allow


def _build(p: HeaderParams, ctx: BuildContext, path: str) -> HeaderOverride:
    default = ctx.build(p.default, f"{path}.default")
    allow = p.allow if p.allow is not None else tuple(default.leaves())
    for i, name in enumerate(allow):
        ctx.build(name, f"{path}.allow[{i}]")
    return HeaderOverride(p.header.lower(), frozenset(allow), default, p.header)


PLUGIN = register(PolicyPlugin("header", HeaderParams, _build))

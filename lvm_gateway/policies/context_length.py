"""`context_length`: route by the number of context vectors (the LVM plan's option A).

Short contexts go to the model trained on them (phase1, 100-ctx), long ones to the long-context
model (phase2, 500-ctx). The count comes from `X-Context-Length` when the client sends it, so the
body is parsed only when it must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field

from lvm_gateway.contract.strict import StrictModel
from lvm_gateway.policies.base import (
    CONTEXT_LENGTH_HEADER,
    BuildContext,
    Decision,
    Policy,
    PolicyPlugin,
    PolicySpec,
    RequestInfo,
    RoutingView,
    register,
)


class ContextLengthParams(StrictModel):
    threshold: int = Field(ge=1)
    short: PolicySpec  # fewer than `threshold` context vectors
    long: PolicySpec  # `threshold` or more


@dataclass(frozen=True, slots=True)
class ContextLength:
    threshold: int
    short: Policy
    long: Policy

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        branch = self.short if req.context_length() < self.threshold else self.long
        return branch.decide(req, view)

    def leaves(self) -> frozenset[str]:
        return self.short.leaves() | self.long.leaves()

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        # The count is in X-Context-Length when the client sends it, else in the body.
        return (
            CONTEXT_LENGTH_HEADER not in headers
            or self.short.needs_body(headers)
            or self.long.needs_body(headers)
        )


def _build(p: ContextLengthParams, ctx: BuildContext, path: str) -> ContextLength:
    return ContextLength(
        p.threshold, ctx.build(p.short, f"{path}.short"), ctx.build(p.long, f"{path}.long")
    )


PLUGIN = register(PolicyPlugin("context_length", ContextLengthParams, _build))

"""`header`: an explicit override by request header (e.g. `X-Variant: phase2`).

A route has overrides only when its tree contains this policy; the allowed set defaults to the
leaves of the `default` subtree, and a value outside it is a 400 that names the allowed ones.

Overrides are for debugging and evaluation, not for every client: with `token_env` set, an
override needs `X-Override-Token` equal to that environment variable's value (unset variable:
every override is refused); without it, an override to a variant a rollout holds at weight 0
(pending, shadow, rolled back) is refused, so no client can pick a canary that was rolled back.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field

from lvm_gateway.contract.strict import Seq, StrictModel
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
    allow: Seq[str] | None = None
    default: PolicySpec
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


TOKEN_HEADER = "x-override-token"


@dataclass(frozen=True, slots=True)
class HeaderOverride:
    header: str  # lower-case
    allow: frozenset[str]
    default: Policy
    display: str  # the header as configured, for messages
    token_env: str | None = None
    token: str | None = None  # the value of token_env when the gateway loaded the policy

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        wanted = req.headers.get(self.header)
        if not wanted:
            return self.default.decide(req, view)
        if wanted not in self.allow:
            raise BadRequestError(
                f"{self.display}: {wanted!r} is not a variant of this route; "
                f"allowed: {', '.join(sorted(self.allow))}"
            )
        if self.token_env is not None:
            given = req.headers.get(TOKEN_HEADER, "")
            if self.token is None or not hmac.compare_digest(given, self.token):
                raise BadRequestError(
                    f"{self.display} overrides need X-Override-Token (the value of "
                    f"{self.token_env} on the gateway)",
                    status=403,
                )
        elif wanted in view.held:
            raise BadRequestError(
                f"{self.display}: {wanted!r} is held at weight 0 by its rollout; overrides to "
                "it need a token_env on this header policy",
                status=403,
            )
        return Decision(wanted)

    def leaves(self) -> frozenset[str]:
        return self.default.leaves() | self.allow

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        return not headers.get(self.header) and self.default.needs_body(headers)


def _build(p: HeaderParams, ctx: BuildContext, path: str) -> HeaderOverride:
    default = ctx.build(p.default, f"{path}.default")
    allow = p.allow if p.allow is not None else tuple(default.leaves())
    for i, name in enumerate(allow):
        ctx.build(name, f"{path}.allow[{i}]")
    token = os.environ.get(p.token_env) or None if p.token_env else None
    return HeaderOverride(p.header.lower(), frozenset(allow), default, p.header, p.token_env, token)


PLUGIN = register(PolicyPlugin("header", HeaderParams, _build))

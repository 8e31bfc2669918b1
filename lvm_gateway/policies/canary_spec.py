"""The `canary` policy's parameters as the config gives them (policies/canary.py builds it).

Apart from the policy because that module is compiled (lvm_gateway/native.py) and pydantic
models cannot be: a compiled class fails at import on `Field()` defaults.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from lvm_gateway.contract.strict import StrictModel
from lvm_gateway.policies.base import PolicySpec


class StickySpec(StrictModel):
    header: str = "X-User-Id"


class MirrorSpec(StrictModel):
    variant: str
    percent: float = Field(default=100, ge=0, le=100)


def _false_is_off(value: object) -> object:
    """`sticky: false` opts out of stickiness (held as None)."""
    return None if value is False else value


class CanaryParams(StrictModel):
    stable: PolicySpec
    canary: PolicySpec
    weight: float = Field(default=0, ge=0, le=100)
    # Sticky by default: one user must not flip between variants from request to request.
    sticky: Annotated[StickySpec | None, BeforeValidator(_false_is_off)] = StickySpec()
    mirror: MirrorSpec | None = None
    salt: str | None = Field(default=None, max_length=64)

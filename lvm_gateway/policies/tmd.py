"""`tmd`: the mixture of 16 lane experts, routed by a learned gate over the request's TMD code.

    tmd: {name: moe, experts: [e0, ..., e15], top_k: 2, gate: gate.pt, capacity: 64}

The decision is the top-k experts for the request's TMD code (`X-TMD-Domain`/`-Task`/`-Modifier`
or `X-TMD-Lane` headers, else the body's `tmd_codes`), skipping experts whose circuit is open or
whose in-flight requests reached `capacity`: their share goes to the next-best expert. The gate's
weights are renormalised over the chosen experts. Without `gate`, the documented default sends
lane i to expert i. Fan-out and fusion are the transport's job (gateway/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import Field, field_validator

from lvm_gateway.contract.gate import N_EXPERTS, GateRuntime, default_gate_state
from lvm_gateway.contract.lvm import tmd_from_headers
from lvm_gateway.contract.strict import Seq, StrictModel
from lvm_gateway.errors import BadRequestError, CheckpointError, ConfigError
from lvm_gateway.policies.base import (
    BuildContext,
    Decision,
    PolicyPlugin,
    RequestInfo,
    RoutingView,
    register,
)
from lvm_gateway.torchfile import load_gate_state


class TmdParams(StrictModel):
    name: str = Field(default="tmd", pattern=r"^[A-Za-z0-9_.-]+$")
    experts: Seq[str]
    top_k: int = Field(default=2, ge=1, le=N_EXPERTS)
    gate: str | None = None
    capacity: int = Field(default=64, ge=1)  # in-flight requests per expert before overflow
    deadline_ms: float = Field(default=250, gt=0)  # an expert slower than this is masked out

    @field_validator("experts")
    @classmethod
    def _sixteen(cls, experts: tuple[str, ...]) -> tuple[str, ...]:
        if len(experts) != N_EXPERTS:
            raise ValueError(
                f"needs exactly {N_EXPERTS} experts (one per lane), got {len(experts)}"
            )
        return experts


@dataclass(frozen=True, slots=True, eq=False)
class Tmd:
    name: str
    experts: tuple[str, ...]
    top_k: int
    capacity: int
    deadline_ms: float
    gate: GateRuntime

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        tmd = req.tmd_codes()
        excluded = [
            i
            for i, e in enumerate(self.experts)
            if e in view.open_circuits or view.inflight.get(e, 0) >= self.capacity
        ]
        try:
            chosen = self.gate.top_k(tmd, self.top_k, exclude=excluded)
        except ValueError as exc:  # a TMD code out of range
            raise BadRequestError(f"invalid TMD code {tmd}: {exc}") from exc
        masked: tuple[str, ...] = ()
        if excluded:
            preferred = self.gate.top_k(tmd, self.top_k)
            masked = tuple(self.experts[i] for i, _ in preferred if i in excluded)
        return Decision(
            self.name,
            fanout=True,
            experts=tuple((self.experts[i], w) for i, w in chosen),
            deadline_s=self.deadline_ms / 1000.0,
            masked=masked,
        )

    def leaves(self) -> frozenset[str]:
        return frozenset(self.experts)

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        # The code is in X-TMD-* headers when the client sends them, else in the body.
        return tmd_from_headers(headers) is None


def _build(p: TmdParams, ctx: BuildContext, path: str) -> Tmd:
    for i, expert in enumerate(p.experts):
        ctx.build(expert, f"{path}.experts[{i}]")
    try:
        state = load_gate_state(p.gate) if p.gate else default_gate_state()
    except CheckpointError as exc:
        raise ConfigError([f"{path}.gate: {exc}"]) from exc
    return Tmd(p.name, p.experts, p.top_k, p.capacity, p.deadline_ms, GateRuntime(state))


PLUGIN = register(PolicyPlugin("tmd", TmdParams, _build))

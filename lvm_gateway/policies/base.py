"""The policy interface: decide apart from act.

A policy is an immutable node of a route's policy tree whose leaves are variant names. Its
`decide(request, view)` is pure and synchronous: from what the request says (headers, lazily
parsed body) and an immutable `RoutingView` of the dynamic state (rollout weights, open
circuits, a random draw) it returns a `Decision`. Sending the request is the transport's job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

import orjson

from lvm_gateway.contract.lvm import (
    NO_LANE,
    Tmd,
    domain_in_body,
    lane_name,
    tmd_from_body,
    tmd_from_headers,
)
from lvm_gateway.contract.oip import RequestHead, request_tmd
from lvm_gateway.contract.strict import StrictModel
from lvm_gateway.errors import BadRequestError, UnknownPluginError

CONTEXT_LENGTH_HEADER: Final = "x-context-length"


class RequestInfo:
    """What a policy may read of a request. The body is parsed at most once, on demand.

    A v2 (Open Inference Protocol) request comes with its checked JSON object (`oip`): the
    context length is its shape, the TMD code its `tmd_codes` tensor."""

    __slots__ = ("_json", "_parsed", "body", "headers", "oip")

    def __init__(
        self, headers: Mapping[str, str], body: bytes, oip: RequestHead | None = None
    ) -> None:
        self.headers = headers  # lower-case names
        self.body = body
        self.oip = oip
        self._json: Any = None
        self._parsed = False

    def json(self) -> Any:
        if not self._parsed:
            self._parsed = True
            try:
                self._json = orjson.loads(self.body) if self.body else None
            except orjson.JSONDecodeError as exc:
                raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
        return self._json

    def context_length(self) -> int:
        raw = self.headers.get(CONTEXT_LENGTH_HEADER)
        if raw is not None:
            try:
                return int(raw)
            except ValueError as exc:
                raise BadRequestError(f"X-Context-Length must be an integer, got {raw!r}") from exc
        if self.oip is not None:
            return self.oip.context_length
        body = self.json()
        ctx = body.get("context_vectors") if isinstance(body, dict) else None
        if not isinstance(ctx, list):
            raise BadRequestError("body needs a 'context_vectors' list to route by context length")
        return len(ctx)

    def tmd_codes(self) -> Tmd | None:
        """(domain, task, modifier) from X-TMD-* headers, else the body's tmd_codes, else None."""
        codes = tmd_from_headers(self.headers)
        if codes is not None:
            return codes
        if self.oip is not None:
            return request_tmd(self.oip, self.body)
        return tmd_from_body(self.json())

    def lane(self) -> str:
        """The request's lane for metrics, gates and records: the domain of `tmd_codes()`, found
        in a body no policy parsed by a byte scan rather than a JSON parse. Never raises: a
        request whose TMD code is malformed counts under `none` (a policy that routes by the
        code answers it 400)."""
        try:
            codes = tmd_from_headers(self.headers)
            if codes is None:
                if self.oip is not None:
                    codes = request_tmd(self.oip, self.body)
                elif self._parsed:
                    codes = tmd_from_body(self._json)
                else:
                    return lane_name(domain_in_body(self.body))
        except BadRequestError:
            return NO_LANE
        return lane_name(codes[0] if codes is not None else None)


_NO_MAPPING: Mapping[str, Any] = MappingProxyType({})


class RoutingView:
    """The dynamic state a decision may depend on, frozen for one request.

    A plain class built per request: its __init__ is compiled (lvm_gateway/native.py), where a
    dataclass's generated one would run as Python (~0.5 us per request)."""

    __slots__ = ("draw", "held", "inflight", "mirror_draw", "open_circuits", "shadow", "weights")

    def __init__(
        self,
        weights: Mapping[str, float] = _NO_MAPPING,  # rollout name -> canary weight
        shadow: Mapping[str, float] = _NO_MAPPING,  # rollout -> % mirrored to the canary
        open_circuits: frozenset[str] = frozenset(),
        inflight: Mapping[str, int] = _NO_MAPPING,  # variant -> requests in flight
        held: frozenset[str] = frozenset(),  # variants a rollout holds at weight 0: no overrides
        draw: float = 0.0,  # uniform [0, 1) drawn per request by the caller, for unsticky splits
        mirror_draw: float = 1.0,  # an independent draw for mirroring decisions
    ) -> None:
        self.weights = weights
        self.shadow = shadow
        self.open_circuits = open_circuits
        self.inflight = inflight
        self.held = held
        self.draw = draw
        self.mirror_draw = mirror_draw


# Built once or twice per request: the __init__ is written out so that it is compiled (a
# dataclass's generated __init__ runs as Python); the dataclass gives equality and repr.
@dataclass(slots=True, init=False)
class Decision:
    variant: str  # the leaf that serves the client
    fallback: str | None  # served instead when `variant` fails or its circuit is open
    mirror: Decision | None  # a fire-and-forget copy goes there; never delays the client
    fanout: bool  # `variant` names a mixture: call `experts` at once and fuse
    experts: tuple[tuple[str, float], ...]  # the mixture's chosen leaves and gate weights
    deadline_s: float  # how long a fan-out waits for each expert
    rollout: str | None  # the rollout whose split made this decision
    masked: tuple[str, ...]  # experts the gate preferred but had to skip (circuit/capacity)
    diverted: str | None  # the variant this request was meant for, whose circuit is open

    def __init__(
        self,
        variant: str,
        fallback: str | None = None,
        mirror: Decision | None = None,
        fanout: bool = False,
        experts: tuple[tuple[str, float], ...] = (),
        deadline_s: float = 0.0,
        rollout: str | None = None,
        masked: tuple[str, ...] = (),
        diverted: str | None = None,
    ) -> None:
        self.variant = variant
        self.fallback = fallback
        self.mirror = mirror
        self.fanout = fanout
        self.experts = experts
        self.deadline_s = deadline_s
        self.rollout = rollout
        self.masked = masked
        self.diverted = diverted


class Policy(Protocol):
    def decide(self, req: RequestInfo, view: RoutingView) -> Decision: ...

    def leaves(self) -> frozenset[str]:
        """Every variant this subtree can send to (reference checks, warm-up)."""
        ...

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        """Whether deciding a request with these headers may read its body: when no node does,
        the gateway streams the body to the upstream as it arrives instead of buffering it."""
        ...


# A policy tree node as written in YAML: a variant name, or a one-key mapping {policy: params}.
PolicySpec = str | dict[str, Any]


@dataclass(frozen=True)
class BuildContext:
    """What a policy builder needs beyond its own params."""

    variants: frozenset[str]
    build: Callable[[PolicySpec, str], Policy]  # builds a child node at a path
    # A canary policy calls this with (path, stable name, canary name, the canary subtree's
    # leaves) to learn which rollout, if any, drives its weight.
    claim_rollout: Callable[[str, str, str, frozenset[str]], str | None]


@dataclass(frozen=True)
class PolicyPlugin:
    name: str
    params: type[StrictModel]
    build: Callable[[Any, BuildContext, str], Policy]  # (params, ctx, path) -> Policy


_REGISTRY: dict[str, PolicyPlugin] = {}


def register(plugin: PolicyPlugin) -> PolicyPlugin:
    if plugin.name in _REGISTRY:
        raise ValueError(f"policy {plugin.name!r} registered twice")
    _REGISTRY[plugin.name] = plugin
    return plugin


def plugin(name: str) -> PolicyPlugin:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPluginError(
            f"unknown policy {name!r}; known policies: {', '.join(sorted(_REGISTRY))}"
        ) from None


def plugins() -> dict[str, PolicyPlugin]:
    _load_builtin()
    return dict(_REGISTRY)


def _load_builtin() -> None:
    # Importing a policy module registers it; the list is the one place that names them.
    import lvm_gateway.policies.canary
    import lvm_gateway.policies.context_length
    import lvm_gateway.policies.header
    import lvm_gateway.policies.tmd  # noqa: F401


def display_name(policy: Policy) -> str:
    """A subtree's name in X-Variant, metrics and rollouts: a leaf's variant, else its name."""
    return str(getattr(policy, "variant", None) or getattr(policy, "name", type(policy).__name__))


@dataclass(frozen=True, slots=True)
class Leaf:
    """A variant name in leaf position."""

    variant: str

    def decide(self, req: RequestInfo, view: RoutingView) -> Decision:
        return Decision(self.variant)

    def leaves(self) -> frozenset[str]:
        return frozenset({self.variant})

    def needs_body(self, headers: Mapping[str, str]) -> bool:
        return False

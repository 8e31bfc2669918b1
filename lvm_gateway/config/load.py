"""Load the policy YAML strictly into immutable typed objects, reporting every error with its path.

Parsing is two passes: pydantic validates the document's shape (unknown keys are errors), then
the policy trees are built through the registry, which checks names and variant references.
Every problem from both passes is collected, so `lvm-gateway validate` shows them all at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from lvm_gateway.config.spec import DEFAULT_RETRY, ConfigSpec, RetrySpec, VariantSpec
from lvm_gateway.config.yamldoc import read_document
from lvm_gateway.contract.humanize import humanize
from lvm_gateway.contract.rollout import RolloutSpec
from lvm_gateway.errors import ConfigError, UnknownPluginError
from lvm_gateway.policies.base import BuildContext, Leaf, Policy, PolicySpec, plugin, plugins


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]
    policy: Policy
    fallback: bool
    inspect: bool
    rollout: str | None  # the rollout that drives this route's canary, if any
    protocol: str = "lvm-json"  # what its clients speak (config.spec.Protocol)
    stable: str | None = None  # that canary policy's stable and canary names
    canary: str | None = None
    canary_leaves: frozenset[str] = frozenset()  # the variants the canary subtree can send to
    retry: RetrySpec = DEFAULT_RETRY


@dataclass(frozen=True)
class Config:
    spec: ConfigSpec
    routes: Mapping[str, Route]
    source: str = ""
    digest: str = ""

    @property
    def variants(self) -> Mapping[str, VariantSpec]:
        return MappingProxyType(self.spec.variants)

    @property
    def rollouts(self) -> Mapping[str, RolloutSpec]:
        return self.spec.rollouts


class _TreeBuilder:
    """Builds one route's policy tree, collecting errors instead of stopping at the first."""

    def __init__(self, variants: frozenset[str], rollout: str | None) -> None:
        self.errors: list[str] = []
        self.rollout = rollout
        # (path, stable, canary, the canary subtree's leaves)
        self.claims: list[tuple[str, str, str, frozenset[str]]] = []
        self.ctx = BuildContext(variants=variants, build=self.build, claim_rollout=self.claim)

    def claim(self, path: str, stable: str, canary: str, leaves: frozenset[str]) -> str | None:
        self.claims.append((path, stable, canary, leaves))
        return self.rollout

    def build(self, spec: PolicySpec, path: str) -> Policy:
        if isinstance(spec, str):
            if spec not in self.ctx.variants:
                declared = ", ".join(sorted(self.ctx.variants))
                self.errors.append(f"{path}: unknown variant {spec!r}; declared: {declared}")
            return Leaf(spec)
        if not isinstance(spec, dict) or len(spec) != 1:
            self.errors.append(
                f"{path}: must be a variant name or a mapping with exactly one policy"
            )
            return Leaf("?")
        ((name, raw),) = spec.items()
        try:
            plug = plugin(str(name))
        except UnknownPluginError as exc:
            self.errors.append(f"{path}: {exc}")
            return Leaf("?")
        try:
            params = plug.params.model_validate(raw if raw is not None else {})
        except ValidationError as exc:
            self.errors.extend(humanize(exc, raw, plug.params, f"{path}.{name}"))
            # The subtrees' own errors (unknown variants) too, not only once the shape is fixed.
            if isinstance(raw, dict):
                for key, field in plug.params.model_fields.items():
                    if field.annotation == PolicySpec and key in raw:
                        self.build(raw[key], f"{path}.{name}.{key}")
            return Leaf("?")
        try:
            return plug.build(params, self.ctx, f"{path}.{name}")
        except ConfigError as exc:
            self.errors.extend(exc.errors)
            return Leaf("?")


def parse_config(data: Any, source: str = "") -> Config:
    """Validate a loaded YAML document; raise ConfigError listing every error with its path."""
    try:
        spec = ConfigSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(humanize(exc, data, ConfigSpec) + _policy_errors_of_raw(data)) from exc
    errors: list[str] = []
    variants = frozenset(spec.variants)
    rollout_by_route: dict[str, str] = {}
    paths = {r.path for r in spec.routes}
    for name, ro in spec.rollouts.items():
        if ro.route not in paths:
            errors.append(f"rollouts.{name}.route: no route has path {ro.route!r}")
        elif ro.route in rollout_by_route:
            errors.append(
                f"rollouts.{name}.route: {ro.route} is already driven by rollout "
                f"{rollout_by_route[ro.route]!r}"
            )
        else:
            rollout_by_route[ro.route] = name
    routes: dict[str, Route] = {}
    for i, r in enumerate(spec.routes):
        where = f"routes[{i}]"
        if r.path in routes:
            errors.append(f"{where}.path: duplicate route {r.path!r}")
            continue
        tb = _TreeBuilder(variants, rollout_by_route.get(r.path))
        policy = tb.build(r.policy, f"{where}.policy")
        errors.extend(tb.errors)
        if tb.rollout is not None and len(tb.claims) != 1:
            errors.append(
                f"{where}.policy: rollout {tb.rollout!r} needs exactly one canary policy on this "
                f"route, found {len(tb.claims)}"
            )
        routes[r.path] = Route(
            path=r.path,
            methods=frozenset(m.upper() for m in r.methods),
            policy=policy,
            fallback=r.fallback,
            inspect=r.inspect,
            rollout=tb.rollout,
            protocol=r.protocol,
            stable=tb.claims[0][1] if tb.rollout and tb.claims else None,
            canary=tb.claims[0][2] if tb.rollout and tb.claims else None,
            canary_leaves=tb.claims[0][3] if tb.rollout and tb.claims else frozenset(),
            retry=r.retry,
        )
    if errors:
        raise ConfigError(errors)
    return Config(
        spec=spec,
        routes=MappingProxyType(routes),
        source=source,
        digest=hashlib.sha256(repr(data).encode()).hexdigest()[:12],
    )


def _policy_errors_of_raw(data: Any) -> list[str]:
    """The policy trees' errors in a document whose shape failed elsewhere, so that one
    `validate` run lists them too (rollout bindings need a valid document and wait)."""
    if not isinstance(data, dict):
        return []
    variants, routes = data.get("variants"), data.get("routes")
    if not isinstance(variants, dict) or not isinstance(routes, list):
        return []
    errors: list[str] = []
    for i, route in enumerate(routes):
        if isinstance(route, dict) and "policy" in route:
            tb = _TreeBuilder(frozenset(map(str, variants)), None)
            tb.build(route["policy"], f"routes[{i}].policy")
            errors.extend(tb.errors)
    return errors


def load_config(path: str | Path) -> Config:
    """The one validation path `validate`, `serve` and hot reload share."""
    return parse_config(read_document(path), source=str(path))


def json_schema() -> dict[str, Any]:
    """JSON Schema for editors: the document shape, with each policy's params as a oneOf."""
    schema = ConfigSpec.model_json_schema()
    defs = schema.setdefault("$defs", {})
    one_of: list[dict[str, Any]] = [{"type": "string", "description": "a variant name"}]
    for name, plug in sorted(plugins().items()):
        sub = plug.params.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[f"policy_{name}"] = sub
        one_of.append(
            {
                "type": "object",
                "properties": {name: {"$ref": f"#/$defs/policy_{name}"}},
                "required": [name],
                "additionalProperties": False,
            }
        )
    defs["PolicyNode"] = {"oneOf": one_of}
    schema["$defs"]["RouteSpec"]["properties"]["policy"] = {"$ref": "#/$defs/PolicyNode"}
    return schema

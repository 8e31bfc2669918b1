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
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lvm_gateway.errors import ConfigError, UnknownPluginError
from lvm_gateway.gateway.tls import TLSSpec
from lvm_gateway.policies.base import BuildContext, Leaf, Policy, PolicySpec, StrictModel, plugin
from lvm_gateway.rollout.spec import RolloutSpec


class CircuitSpec(StrictModel):
    errors: int = Field(default=10, ge=1)  # the seed: 10 errors ...
    window: int = Field(default=100, ge=1)  # ... in a window of 100 requests
    open_seconds: float = Field(default=5.0, gt=0)  # then one probe request is let through

    @model_validator(mode="after")
    def _errors_fit_window(self) -> CircuitSpec:
        if self.errors > self.window:
            raise ValueError(f"errors ({self.errors}) must be <= window ({self.window})")
        return self


class VariantSpec(StrictModel):
    url: str | None = None
    urls: tuple[str, ...] | None = None
    timeout_ms: float = Field(default=1000, gt=0)
    max_connections: int = Field(default=256, ge=1)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1)  # larger answers: a 502
    tls: TLSSpec | None = None  # for https:// endpoints; None: the system CA store
    circuit: CircuitSpec = CircuitSpec()

    @model_validator(mode="after")
    def _one_of_url_urls(self) -> VariantSpec:
        if (self.url is None) == (self.urls is None):
            raise ValueError("give exactly one of 'url' or 'urls'")
        for u in self.endpoints:
            parts = urlsplit(u)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{u!r} is not an http(s) URL")
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.url,) if self.url is not None else tuple(self.urls or ())


class RouteSpec(StrictModel):
    path: str
    methods: tuple[str, ...] = ("POST",)
    fallback: bool = True  # serve the stable variant when the canary fails
    # Inspect answers as LVM predictions: NaN/Inf and wrong dimensions become errors, empty hits
    # are counted, and predictions are recorded for feedback. Off for non-inference routes.
    inspect: bool = True
    policy: PolicySpec

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        if path.startswith(("/v1/feedback", "/healthz", "/readyz", "/metrics")):
            raise ValueError(f"{path} is reserved by the gateway")
        return path


class FeedbackSpec(StrictModel):
    # Defaults sized for production: recording every answer costs ~70 us of gateway CPU per
    # request and 1.3 KB of Redis per record (measured), so 10% is kept, for 5 minutes; at
    # 1,000 req/s that is 100 scored answers a second and 39 MB of Redis.
    ttl_seconds: float = Field(default=300, gt=0)
    sample_rate: float = Field(default=0.1, ge=0, le=1)


class ConfigSpec(StrictModel):
    variants: dict[str, VariantSpec]
    routes: tuple[RouteSpec, ...]
    rollouts: dict[str, RolloutSpec] = {}
    feedback: FeedbackSpec = FeedbackSpec()
    redis_prefix: str = "lvmgw"
    mirror_max_inflight: int = Field(default=64, ge=0)  # mirrored copies beyond this are dropped

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, v: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not v:
            raise ValueError("declare at least one variant")
        return v


@dataclass(frozen=True)
class Route:
    path: str
    methods: frozenset[str]
    policy: Policy
    fallback: bool
    inspect: bool
    rollout: str | None  # the rollout that drives this route's canary, if any
    stable: str | None = None  # that canary policy's stable and canary names
    canary: str | None = None


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


def format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[str]:
    errors = []
    for err in exc.errors():
        # Tagged-union and function-validator locations add noise that is not in the document.
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_steps_increase()]",))
        path = format_loc(loc)
        if prefix:
            path = prefix if path == "(document)" else f"{prefix}.{path}"
        msg = err["msg"].removeprefix("Value error, ")
        if msg.startswith("[") and "]: " in msg:
            # A validator that points inside a list ("[2]: must be > 20") extends the path.
            index, msg = msg.split(": ", 1)
            path += index
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        errors.append(f"{path}: {msg}")
    return errors


class _TreeBuilder:
    """Builds one route's policy tree, collecting errors instead of stopping at the first."""

    def __init__(self, variants: frozenset[str], rollout: str | None) -> None:
        self.errors: list[str] = []
        self.rollout = rollout
        self.claims: list[tuple[str, str, str]] = []  # (path, stable, canary)
        self.ctx = BuildContext(variants=variants, build=self.build, claim_rollout=self.claim)

    def claim(self, path: str, stable: str, canary: str) -> str | None:
        self.claims.append((path, stable, canary))
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
            self.errors.extend(_pydantic_errors(exc, f"{path}.{name}"))
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
        raise ConfigError(_pydantic_errors(exc) + _policy_errors_of_raw(data)) from exc
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
            stable=tb.claims[0][1] if tb.rollout and tb.claims else None,
            canary=tb.claims[0][2] if tb.rollout and tb.claims else None,
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
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        raise ConfigError([f"{where}: YAML syntax error: {getattr(exc, 'problem', exc)}"]) from exc
    return parse_config(data, source=str(p))


def json_schema() -> dict[str, Any]:
    """JSON Schema for editors: the document shape, with each policy's params as a oneOf."""
    from lvm_gateway.policies.base import plugins

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

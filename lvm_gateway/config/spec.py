"""The policy document's shape: variants, routes, rollouts, feedback sampling, Redis prefix.

Parsed strictly (unknown keys are errors) into immutable objects; `load.py` adds what needs the
whole document (policy trees, rollout bindings).
"""

from __future__ import annotations

import os
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from lvm_gateway.config.tls import TLSSpec
from lvm_gateway.contract.oip import INFER_PATH
from lvm_gateway.contract.rollout import RolloutSpec
from lvm_gateway.contract.strict import Seq, StrictModel
from lvm_gateway.errors import ConfigError
from lvm_gateway.policies.base import PolicySpec

# The gateway's fixed endpoints; no configured route may take their paths.
FEEDBACK_PATH = "/v1/feedback"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
RESERVED_PATHS = (FEEDBACK_PATH, HEALTH_PATH, READY_PATH, METRICS_PATH)
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"  # secrets are named by environment variable, never inlined
# The wire protocols of inference requests (contract/lvm.py, contract/oip.py).
Protocol = Literal["lvm-json", "oip-v2"]


class CircuitSpec(StrictModel):
    errors: int = Field(default=10, ge=1)  # the LVM plan: 10 errors ...
    window: int = Field(default=100, ge=1)  # ... in a window of 100 requests
    open_seconds: float = Field(default=5.0, gt=0)  # then one probe request is let through

    @model_validator(mode="after")
    def _errors_fit_window(self) -> CircuitSpec:
        if self.errors > self.window:
            raise ValueError(f"errors ({self.errors}) must be <= window ({self.window})")
        return self


class VariantSpec(StrictModel):
    url: str | None = None
    urls: Seq[str] | None = None
    timeout_ms: float = Field(default=1000, gt=0)
    max_connections: int = Field(default=256, ge=1)
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1)  # larger answers: a 502
    tls: TLSSpec | None = None  # for https:// endpoints; None: the system CA store
    circuit: CircuitSpec = CircuitSpec()
    # What the variant speaks; the gateway translates when a route's clients speak the other.
    protocol: Protocol = "lvm-json"
    model: str = Field(default="lvm", pattern=r"^[^/]+$")  # its v2 model: /v2/models/{model}/infer

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
    methods: Seq[str] = ("POST",)
    fallback: bool = True  # serve the stable variant when the canary fails
    # Inspect answers as LVM predictions: NaN/Inf and wrong dimensions become errors, empty hits
    # are counted, and predictions are recorded for feedback. Off for non-inference routes.
    inspect: bool = True
    # What the route's clients speak: oip-v2 routes are /v2/models/{name}/infer paths.
    protocol: Protocol = "lvm-json"
    policy: PolicySpec

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        if path.startswith(RESERVED_PATHS):
            raise ValueError(f"{path} is reserved by the gateway")
        return path

    @model_validator(mode="after")
    def _v2_path(self) -> RouteSpec:
        if self.protocol == "oip-v2" and not INFER_PATH.match(self.path):
            raise ValueError(
                f"an oip-v2 route's path is /v2/models/{{name}}/infer, got {self.path}"
            )
        return self


class FeedbackSpec(StrictModel):
    # Defaults sized for production: recording every answer costs ~70 us of gateway CPU per
    # request and 1.3 KB of Redis per record (measured), so 10% is kept, for 5 minutes; at
    # 1,000 req/s that is 100 scored answers a second and 39 MB of Redis.
    ttl_seconds: float = Field(default=300, gt=0)
    sample_rate: float = Field(default=0.1, ge=0, le=1)
    # Feedback tokens are HMACs under this secret (an environment variable's name); without it
    # the replicas share a random key kept in Redis.
    secret_env: str | None = Field(default=None, pattern=ENV_NAME)
    # When set, POST /v1/feedback also needs `Authorization: Bearer <that variable's value>`.
    bearer_token_env: str | None = Field(default=None, pattern=ENV_NAME)


class LimitsSpec(StrictModel):
    """Memory bounds on what clients send."""

    max_body_bytes: int = Field(default=64 * 2**20, ge=1)  # one request; 413 beyond
    buffered_body_bytes: int = Field(default=256 * 2**20, ge=1)  # all in flight; 503 beyond
    feedback_body_bytes: int = Field(default=64 * 2**10, ge=1)  # a feedback post is ~16 KB
    body_timeout_seconds: float = Field(default=30, gt=0)  # a stalled upload: 408


class ConfigSpec(StrictModel):
    variants: dict[str, VariantSpec]
    routes: Seq[RouteSpec]
    rollouts: dict[str, RolloutSpec] = {}
    feedback: FeedbackSpec = FeedbackSpec()
    redis_prefix: str = "lvmgw"
    limits: LimitsSpec = LimitsSpec()
    mirror_max_inflight: int = Field(default=64, ge=0)  # mirrored copies beyond this are dropped

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, v: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not v:
            raise ValueError("declare at least one variant")
        return v


def read_secret(env_name: str, where: str) -> str:
    """The value of the environment variable a config field names; ConfigError when unset."""
    value = os.environ.get(env_name, "")
    if not value:
        raise ConfigError([f"{where}: environment variable {env_name} is not set"])
    return value

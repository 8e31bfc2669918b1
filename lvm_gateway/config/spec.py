"""The policy document's shape: variants, routes, rollouts, feedback sampling, Redis prefix.

Parsed strictly (unknown keys are errors) into immutable objects; `load.py` adds what needs the
whole document (policy trees, rollout bindings).
"""

from __future__ import annotations

import hashlib
import os
from typing import Annotated, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, StringConstraints, field_validator, model_validator

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
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{u!r} is not an http(s) URL")
            if any(c.isspace() for c in u):
                raise ValueError(f"{u!r} contains white space")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"{u!r} has an invalid port (1-65535)") from None
            if port == 0:
                raise ValueError(f"{u!r} has an invalid port (1-65535)")
        return self

    @property
    def endpoints(self) -> tuple[str, ...]:
        return (self.url,) if self.url is not None else tuple(self.urls or ())


RetryOn = Literal["connect", "5xx", "timeout"]


class RetrySpec(StrictModel):
    """How a failed call is retried on another endpoint of the same variant."""

    attempts: int = Field(default=3, ge=1, le=10)  # tries in all, each on another endpoint
    on: Seq[RetryOn] = ("connect", "5xx", "timeout")
    # Retries may add this share of the variant's requests (plus 10 a second), so a sick
    # endpoint cannot multiply the load.
    budget: float = Field(default=0.2, ge=0, le=1)


DEFAULT_RETRY = RetrySpec()


class RouteSpec(StrictModel):
    path: str
    methods: Seq[Annotated[str, StringConstraints(pattern=r"^[A-Za-z]+$")]] = ("POST",)
    fallback: bool = True  # serve the stable variant when the canary fails
    retry: RetrySpec = RetrySpec()
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


# What a webhook may be told about: one event per kind of rollout transition.
NotifyEvent = Literal[
    "started", "advanced", "paused", "resumed", "promoted", "rolled_back", "aborted"
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


class NotificationSpec(StrictModel):
    """One webhook the rollout controller posts each transition to (once, whichever replica)."""

    url: str
    events: Seq[NotifyEvent] = NOTIFY_EVENTS
    format: Literal["json", "slack"] = "json"
    # The name of an environment variable (of the controller's process) holding the HMAC key;
    # the key itself never enters the policy file or Redis.
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url

    @property
    def key(self) -> str:
        """A stable id of this webhook as configured: a changed entry is a new target, whose
        notifications start from when it was first loaded."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """scheme://host[:port] only: a webhook's path often is its secret (Slack's are)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @field_validator("events")
    @classmethod
    def _some_events(cls, events: tuple[NotifyEvent, ...]) -> tuple[NotifyEvent, ...]:
        if not events:
            raise ValueError("list at least one event (omit the key for every event)")
        return tuple(dict.fromkeys(events))


class ConfigSpec(StrictModel):
    variants: dict[str, VariantSpec]
    routes: Seq[RouteSpec]
    rollouts: dict[str, RolloutSpec] = {}
    feedback: FeedbackSpec = FeedbackSpec()
    redis_prefix: str = "lvmgw"
    limits: LimitsSpec = LimitsSpec()
    mirror_max_inflight: int = Field(default=64, ge=0)  # mirrored copies beyond this are dropped
    notifications: Seq[NotificationSpec] = ()

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

"""The policy document's shape: variants, routes, rollouts, feedback sampling, Redis prefix.

Parsed strictly (unknown keys are errors) into immutable objects; `load.py` adds what needs the
whole document (policy trees, rollout bindings).
"""

from __future__ import annotations

import hashlib
from typing import Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from lvm_gateway.contract.rollout import RolloutSpec
from lvm_gateway.contract.strict import StrictModel
from lvm_gateway.policies.base import PolicySpec

# The gateway's fixed endpoints; no configured route may take their paths.
FEEDBACK_PATH = "/v1/feedback"
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
METRICS_PATH = "/metrics"
RESERVED_PATHS = (FEEDBACK_PATH, HEALTH_PATH, READY_PATH, METRICS_PATH)


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
    urls: tuple[str, ...] | None = None
    timeout_ms: float = Field(default=1000, gt=0)
    max_connections: int = Field(default=256, ge=1)
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
        if path.startswith(RESERVED_PATHS):
            raise ValueError(f"{path} is reserved by the gateway")
        return path


class FeedbackSpec(StrictModel):
    # Defaults sized for production: recording every answer costs ~70 us of gateway CPU per
    # request and 1.3 KB of Redis per record (measured), so 10% is kept, for 5 minutes; at
    # 1,000 req/s that is 100 scored answers a second and 39 MB of Redis.
    ttl_seconds: float = Field(default=300, gt=0)
    sample_rate: float = Field(default=0.1, ge=0, le=1)


# What a webhook may be told about: one event per kind of rollout transition.
NotifyEvent = Literal[
    "started", "advanced", "paused", "resumed", "promoted", "rolled_back", "aborted"
]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = get_args(NotifyEvent)


class NotificationSpec(StrictModel):
    """One webhook the rollout controller posts each transition to (once, whichever replica)."""

    url: str
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS
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
    routes: tuple[RouteSpec, ...]
    rollouts: dict[str, RolloutSpec] = {}
    feedback: FeedbackSpec = FeedbackSpec()
    redis_prefix: str = "lvmgw"
    mirror_max_inflight: int = Field(default=64, ge=0)  # mirrored copies beyond this are dropped
    notifications: tuple[NotificationSpec, ...] = ()

    @field_validator("variants")
    @classmethod
    def _some_variants(cls, v: dict[str, VariantSpec]) -> dict[str, VariantSpec]:
        if not v:
            raise ValueError("declare at least one variant")
        return v

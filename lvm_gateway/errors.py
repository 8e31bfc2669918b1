"""Every exception lvm-gateway raises on purpose.

LvmGatewayError                 base; never escapes to a client as a 500
├── ConfigError                 policy YAML invalid; carries every error with its path
├── UnknownPluginError          a policy name not in the registry (load-time, never a fallback)
├── RedisUnavailableError       Redis unreachable; callers degrade, they do not crash
├── RolloutError                control-plane misuse
│   ├── UnknownRolloutError     no rollout by that name
│   ├── InvalidTransitionError  e.g. advancing a RolledBack rollout
│   ├── ConflictError           compare-and-set lost: the version moved underneath
│   ├── NotLeaderError          a controller write after its lease moved to another instance
│   └── ThresholdError          `rolloutctl thresholds` got an unknown key or a bad value
├── CheckpointError             a checkpoint that cannot serve (wrong keys, shapes, format)
├── BadRequestError             client input the gateway refuses: a 4xx (or 503 when busy)
├── TrafficError                lvm-traffic cannot run: bad settings or the gateway unreachable
├── AdminServerError            the status page cannot start: a weak token, a taken port
└── UpstreamError               a variant failed; mapped to 502/504 in gateway.upstream
    ├── UpstreamTimeoutError    504
    ├── UpstreamConnectError    502, retried on another endpoint
    ├── UpstreamStatusError     502, the variant answered 5xx
    ├── InvalidPredictionError  502, NaN/Inf or wrong-dimension prediction
    └── CircuitOpenError        502, no endpoint of the variant may be tried

ConnectionError (the OSError family a socket raises), from an upstream transport; translated
into the UpstreamError family by gateway.upstream
├── ConnectionLostError         closed before a complete response
└── BadResponseError            a response that cannot be trusted: not retried
"""

from __future__ import annotations


class LvmGatewayError(Exception):
    """Base of every deliberate error."""


class ConfigError(LvmGatewayError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


class UnknownPluginError(LvmGatewayError):
    pass


class RedisUnavailableError(LvmGatewayError):
    pass


class RedisUrlError(RedisUnavailableError):
    """A --redis / REDIS_URL value redis-py cannot use (wrong scheme, no host, bad port)."""


class RolloutError(LvmGatewayError):
    pass


class UnknownRolloutError(RolloutError):
    pass


class InvalidTransitionError(RolloutError):
    pass


class ConflictError(RolloutError):
    pass


class NotLeaderError(RolloutError):
    pass


class ThresholdError(RolloutError):
    pass


class CheckpointError(LvmGatewayError):
    pass


class BadRequestError(LvmGatewayError):
    _CODES = {
        401: "unauthorized",
        403: "forbidden",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "payload_too_large",
        503: "overloaded",
    }

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)

    @property
    def code(self) -> str:
        """The `error` field of the JSON answer."""
        return self._CODES.get(self.status, "bad_request")


class TrafficError(LvmGatewayError):
    pass


class AdminServerError(LvmGatewayError):
    pass


class UpstreamError(LvmGatewayError):
    status = 502
    kind = "upstream_error"

    def __init__(self, variant: str, message: str) -> None:
        self.variant = variant
        super().__init__(f"{variant}: {message}")


class UpstreamTimeoutError(UpstreamError):
    status = 504
    kind = "timeout"


class UpstreamConnectError(UpstreamError):
    kind = "connect"


class UpstreamStatusError(UpstreamError):
    kind = "status"


class InvalidPredictionError(UpstreamError):
    kind = "invalid_prediction"


class CircuitOpenError(UpstreamError):
    kind = "circuit_open"


class ConnectionLostError(ConnectionError):
    """The connection closed before a complete response; `received`: any byte of it arrived."""

    def __init__(self, message: str, received: bool) -> None:
        super().__init__(message)
        self.received = received


class BadResponseError(ConnectionError):
    """The upstream's response cannot be trusted (framing, syntax, size): the connection is
    discarded and the request is not retried on it."""

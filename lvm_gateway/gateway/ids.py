"""Request ids and feedback tokens: what ties a feedback post to the one answer it scores.

Every request gets the gateway's own id (96 random bits); prediction records are keyed by it, so
two clients sending the same `X-Request-Id` can never share a record. The bits come from a
generator seeded from the OS once per process (and again after a fork), not from a getrandom()
syscall per request: an id must be unique, not secret, since a feedback post needs the id's
token, an HMAC only the gateway can compute. A client's id is kept for
tracing (echoed in `X-Request-Id`, forwarded upstream, stored in the record) when it is 1-128
characters of `[A-Za-z0-9._:-]`; anything else is a 400, never stored or echoed re-encoded.

A recorded answer carries `X-Feedback-Token: <gateway id>.<mac>`, the mac an HMAC-SHA256 of the
gateway id under a key every replica shares (the config's `feedback.secret_env`, else a random
key kept in Redis). Only the client that received the answer can score it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import re
from collections.abc import Callable
from typing import Final

from lvm_gateway.errors import BadRequestError

GATEWAY_ID_BYTES: Final = 12
_GATEWAY_ID: Final = re.compile(r"[0-9a-f]{24}")
_CLIENT_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAC_HEX: Final = 32  # 128 bits of the HMAC are enough to make forging hopeless


_bits: Callable[[int], int]


def _reseed() -> None:
    global _bits
    _bits = random.Random(os.urandom(32)).getrandbits


_reseed()
os.register_at_fork(after_in_child=_reseed)  # forked workers must not repeat each other's ids


def new_gateway_id() -> str:
    # 24 hex digits; to_bytes().hex() is ~3x cheaper than formatting the int with a width.
    return _bits(GATEWAY_ID_BYTES * 8).to_bytes(GATEWAY_ID_BYTES, "big").hex()


def is_gateway_id(value: str) -> bool:
    return _GATEWAY_ID.fullmatch(value) is not None


def client_id(raw: str | None) -> str | None:
    """The client's X-Request-Id when it is usable for tracing; BadRequestError otherwise."""
    if raw is None:
        return None
    if _CLIENT_ID.fullmatch(raw) is None:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise BadRequestError(
            f"X-Request-Id must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {shown!r}"
        )
    return raw


class FeedbackAuthError(BadRequestError):
    """A feedback post without a valid token: 401 missing, 403 foreign or forged."""


class FeedbackTokens:
    def __init__(self) -> None:
        self._key: bytes | None = None

    @property
    def ready(self) -> bool:
        return self._key is not None

    def set_key(self, key: bytes) -> None:
        self._key = key

    def _mac(self, gateway_id: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, gateway_id.encode(), hashlib.sha256).hexdigest()[:_MAC_HEX]

    def issue(self, gateway_id: str) -> str:
        return f"{gateway_id}.{self._mac(gateway_id)}"

    def verify(self, token: str) -> str:
        """The gateway id a token was issued for; FeedbackAuthError (403) when it was not."""
        gateway_id, _, mac = token.partition(".")
        if self._key is None:
            raise FeedbackAuthError(
                "feedback tokens cannot be checked yet (no signing key: Redis unreachable)",
                status=503,
            )
        if not is_gateway_id(gateway_id) or not hmac.compare_digest(mac, self._mac(gateway_id)):
            raise FeedbackAuthError("feedback token is not valid for this gateway", status=403)
        return gateway_id

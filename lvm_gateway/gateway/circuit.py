"""Circuit breakers: the LVM plan's rule, N errors in the last W requests to a variant, opens it.

While open the variant receives nothing (a canary's traffic goes to the stable variant); after
`open_seconds` it is half-open: requests flow again and the next outcome closes it (success) or
re-opens it (failure). Everything is in-process and synchronous: the hot path reads a frozenset.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from lvm_gateway.config.spec import CircuitSpec


class Breaker:
    __slots__ = ("errors", "half_open", "open_until", "outcomes", "spec")

    def __init__(self, spec: CircuitSpec) -> None:
        self.spec = spec
        self.outcomes: deque[bool] = deque(maxlen=spec.window)  # True = error
        self.errors = 0
        self.open_until = 0.0
        self.half_open = False

    def record(self, error: bool, now: float) -> str | None:
        """Count one outcome; return the new state name when the state changes."""
        if self.half_open:
            self.half_open = False
            self.outcomes.clear()
            self.errors = 0
            if error:
                self.open_until = now + self.spec.open_seconds
                return "open"
            return "closed"
        if len(self.outcomes) == self.outcomes.maxlen and self.outcomes[0]:
            self.errors -= 1
        self.outcomes.append(error)
        if error:
            self.errors += 1
            if self.errors >= self.spec.errors and self.open_until <= now:
                self.open_until = now + self.spec.open_seconds
                return "open"
        return None


class Circuits:
    """All variants' breakers, and the set of open ones as the policies see it."""

    def __init__(
        self,
        specs: dict[str, CircuitSpec],
        on_change: Callable[[str, str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, Breaker] = {}
        self._open: frozenset[str] = frozenset()
        self._next_expiry = float("inf")
        self.configure(specs)

    def configure(self, specs: dict[str, CircuitSpec]) -> None:
        """Keep the history of variants whose breaker settings did not change (hot reload)."""
        kept = {
            name: b for name, b in self._breakers.items() if name in specs and b.spec == specs[name]
        }
        self._breakers = {name: kept.get(name) or Breaker(spec) for name, spec in specs.items()}
        for name in specs:
            if name not in kept:
                self._on_change(name, "closed")
        self._refresh(self._clock())

    def _refresh(self, now: float) -> None:
        opened = [n for n, b in self._breakers.items() if b.open_until > now]
        for name, b in self._breakers.items():
            if 0 < b.open_until <= now and not b.half_open:
                b.half_open = True
                b.open_until = 0.0
                self._on_change(name, "half_open")
        self._open = frozenset(opened)
        self._next_expiry = min(
            (self._breakers[n].open_until for n in opened), default=float("inf")
        )

    def open_set(self) -> frozenset[str]:
        now = self._clock()
        if now >= self._next_expiry:
            self._refresh(now)
        return self._open

    def is_open(self, variant: str) -> bool:
        return variant in self.open_set()

    def record(self, variant: str, error: bool) -> None:
        breaker = self._breakers.get(variant)
        if breaker is None:
            return
        now = self._clock()
        change = breaker.record(error, now)
        if change is not None:
            self._on_change(variant, change)
            self._refresh(now)

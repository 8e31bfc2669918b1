"""Circuit breakers with an injected clock: the LVM plan's 10 errors in a window of 100."""

from __future__ import annotations

from lvm_gateway.config.spec import CircuitSpec
from lvm_gateway.gateway.circuit import Circuits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(spec: CircuitSpec | None = None) -> tuple[Circuits, Clock, list[tuple[str, str]]]:
    clock, changes = Clock(), []
    circuits = Circuits({"v": spec or CircuitSpec()}, lambda v, s: changes.append((v, s)), clock)
    changes.clear()
    return circuits, clock, changes


def test_opens_at_ten_errors_within_a_hundred() -> None:
    circuits, _, changes = make()
    for i in range(9):
        circuits.record("v", True)
        circuits.record("v", False)
        assert not circuits.is_open("v"), i
    circuits.record("v", True)
    assert circuits.is_open("v")
    assert changes == [("v", "open")]


def test_errors_sliding_out_of_the_window_do_not_count() -> None:
    circuits, _, _ = make()
    for _ in range(9):
        circuits.record("v", True)
    for _ in range(100):
        circuits.record("v", False)
    circuits.record("v", True)
    assert not circuits.is_open("v")


def test_half_open_after_cooldown_then_closes_on_success() -> None:
    circuits, clock, changes = make(CircuitSpec(errors=2, window=10, open_seconds=5))
    circuits.record("v", True)
    circuits.record("v", True)
    assert circuits.is_open("v")
    clock.now += 4.9
    assert circuits.is_open("v")
    clock.now += 0.2
    assert not circuits.is_open("v")
    circuits.record("v", False)
    assert changes == [("v", "open"), ("v", "half_open"), ("v", "closed")]
    circuits.record("v", True)
    assert not circuits.is_open("v")  # a fresh window: one error is not enough


def test_half_open_failure_reopens() -> None:
    circuits, clock, changes = make(CircuitSpec(errors=2, window=10, open_seconds=5))
    circuits.record("v", True)
    circuits.record("v", True)
    clock.now += 6
    assert not circuits.is_open("v")
    circuits.record("v", True)
    assert circuits.is_open("v")
    assert changes[-1] == ("v", "open")


def test_reconfigure_keeps_history_of_unchanged_variants() -> None:
    circuits, _, _ = make(CircuitSpec(errors=2, window=10))
    circuits.record("v", True)
    circuits.configure({"v": CircuitSpec(errors=2, window=10), "w": CircuitSpec()})
    circuits.record("v", True)
    assert circuits.is_open("v")
    circuits.configure({"v": CircuitSpec(errors=3, window=10)})
    assert not circuits.is_open("v")  # changed settings start a fresh breaker

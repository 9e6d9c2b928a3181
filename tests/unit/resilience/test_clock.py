"""The clocks the policies take: a manual one for tests, the monotonic one for the services."""

from __future__ import annotations

from echokit.resilience.clock import SYSTEM_CLOCK, ManualClock


def test_a_manual_clock_moves_only_when_told() -> None:
    """now() stands still until advance() or sleep(); sleep returns at once and is recorded."""
    clock = ManualClock(start=10.0)
    assert clock.now() == clock.now() == 10.0
    clock.advance(1.5)
    clock.sleep(0.25)
    assert clock.now() == 11.75
    assert clock.slept == [0.25]


def test_the_system_clock_never_goes_back() -> None:
    """The services' clock is monotonic."""
    first = SYSTEM_CLOCK.now()
    assert SYSTEM_CLOCK.now() >= first

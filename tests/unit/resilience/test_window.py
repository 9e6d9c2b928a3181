"""Sliding-window event counts, on a hand-driven clock."""

from __future__ import annotations

from echokit.resilience.clock import ManualClock
from echokit.resilience.window import SlidingCounts


def make_counts(window_s: float = 10.0, buckets: int = 10) -> tuple[SlidingCounts, ManualClock]:
    clock = ManualClock(start=1000.0)
    return SlidingCounts(window_s, clock, ("success", "failure"), buckets), clock


def test_counts_each_kind_separately() -> None:
    """Events of different kinds are counted apart."""
    counts, _ = make_counts()
    counts.add("success")
    counts.add("success")
    counts.add("failure", 3)
    assert counts.total("success") == 2
    assert counts.total("failure") == 3


def test_events_within_the_window_are_all_counted() -> None:
    """Events spread over less than the window all still count."""
    counts, clock = make_counts()
    for _ in range(9):
        counts.add("failure")
        clock.advance(1.0)
    assert counts.total("failure") == 9


def test_events_older_than_the_window_are_forgotten() -> None:
    """An event drops out once a full window has passed since its bucket."""
    counts, clock = make_counts(window_s=10.0)
    counts.add("failure")
    clock.advance(9.0)
    counts.add("failure")
    assert counts.total("failure") == 2
    clock.advance(1.0)
    assert counts.total("failure") == 1
    clock.advance(9.0)
    assert counts.total("failure") == 0


def test_a_long_idle_gap_clears_everything() -> None:
    """After many windows without events, totals are zero and new events count from scratch."""
    counts, clock = make_counts()
    counts.add("success", 50)
    clock.advance(1234.5)
    assert counts.total("success") == 0
    counts.add("success")
    assert counts.total("success") == 1


def test_reused_slots_do_not_leak_old_counts() -> None:
    """When the ring wraps around, a slot's old counts are discarded before new events are added."""
    counts, clock = make_counts(window_s=10.0, buckets=10)
    counts.add("failure", 7)
    clock.advance(10.0)  # same slot number modulo the ring, one window later
    counts.add("failure")
    assert counts.total("failure") == 1


def test_total_without_any_events_is_zero() -> None:
    """A fresh window counts nothing, whatever the clock says."""
    counts, _ = make_counts()
    assert counts.total("success") == 0
    assert counts.total("failure") == 0

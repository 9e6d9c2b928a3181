"""The per-request deadline and the X-Request-Timeout-Ms header, on a hand-driven clock."""

from __future__ import annotations

import pytest

from echokit.resilience.clock import ManualClock
from echokit.resilience.deadline import Deadline, parse_timeout_header


def test_remaining_shrinks_as_time_passes() -> None:
    """A 2 s deadline has 2 s left at once and 0.5 s left 1.5 s later."""
    clock = ManualClock()
    deadline = Deadline(2.0, clock)
    assert deadline.remaining() == 2.0
    clock.advance(1.5)
    assert deadline.remaining() == pytest.approx(0.5)
    assert not deadline.expired()


def test_remaining_never_goes_negative() -> None:
    """Past its deadline, remaining() is 0 and expired() is true."""
    clock = ManualClock()
    deadline = Deadline(1.0, clock)
    clock.advance(5.0)
    assert deadline.remaining() == 0.0
    assert deadline.expired()


def test_expired_exactly_at_the_deadline() -> None:
    """At the very instant the budget runs out the deadline counts as expired."""
    clock = ManualClock(start=0.0)
    deadline = Deadline(0.25, clock)
    clock.advance(0.25)
    assert deadline.expired()


@pytest.mark.parametrize(("elapsed", "header"), [(0.0, "2000"), (0.0004, "1999"), (1.9995, "0"), (3.0, "0")])
def test_header_is_whole_milliseconds_rounded_down(elapsed: float, header: str) -> None:
    """The header never promises A more time than is left: it rounds down to whole milliseconds."""
    clock = ManualClock(start=0.0)
    deadline = Deadline(2.0, clock)
    clock.advance(elapsed)
    assert deadline.header_ms() == header


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("0", 0.0), ("1500", 1.5), (" 250 ", 0.25), ("600000", 600.0), ("0000042", 0.042)],
)
def test_valid_header_values_parse_to_seconds(value: str | None, seconds: float | None) -> None:
    """Whole milliseconds from 0 to 600000 (surrounding spaces allowed) become seconds; absent is None."""
    assert parse_timeout_header(value) == seconds


@pytest.mark.parametrize("value", ["", " ", "abc", "-1", "+5", "1.5", "1e3", "0x10", "600001", "12345678", "1 2"])
def test_invalid_header_values_are_rejected(value: str) -> None:
    """Anything but whole milliseconds in range raises ValueError naming the header."""
    with pytest.raises(ValueError, match=r"^X-Request-Timeout-Ms must be whole milliseconds from 0 to 600000$"):
        parse_timeout_header(value)


@pytest.mark.parametrize("value", ["²", "¹⁰", "٣٠٠"])
def test_non_ascii_digits_are_rejected_with_the_header_message(value: str) -> None:
    """Unicode digits such as '²' (a latin-1 header byte) are refused with the same message as other junk."""
    with pytest.raises(ValueError, match=r"^X-Request-Timeout-Ms must be whole milliseconds"):
        parse_timeout_header(value)

"""One deadline per request: the whole budget, retries and backoff included."""

from __future__ import annotations

import math
from contextvars import ContextVar

from echokit.resilience.clock import SYSTEM_CLOCK, Clock

# The header in which B tells A how many milliseconds of the caller's budget are left.
TIMEOUT_HEADER = "X-Request-Timeout-Ms"
TIMEOUT_ENVIRON = "HTTP_X_REQUEST_TIMEOUT_MS"
MAX_TIMEOUT_MS = 600_000

# Seconds of the current request's time already spent before its handler ran (queued in the server,
# counted from when the server read its first byte). The serving layer (echokit.admission_app) sets
# it per request, so a budget counts from the request's arrival: every Deadline made while serving
# that request starts this much shorter. Zero outside a request.
spent_before_handler: ContextVar[float] = ContextVar("spent_before_handler", default=0.0)


class Deadline:
    """A point in time after which nobody is waiting for the answer any more."""

    def __init__(self, budget_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.budget_s = budget_s
        self.expires_at = clock.now() + budget_s - spent_before_handler.get()

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires_at - self.clock.now())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def header_ms(self) -> str:
        """The remaining budget as whole milliseconds for ``X-Request-Timeout-Ms`` (rounded down)."""
        return str(math.floor(self.remaining() * 1000))


def parse_timeout_header(value: str | None) -> float | None:
    """Seconds the caller will still wait, from ``X-Request-Timeout-Ms``; None if absent.

    Raises ValueError for anything but a whole number of milliseconds from 0 to 600000.
    """
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 7:  # isdigit() alone accepts '²' and '٣'
        raise ValueError(f"{TIMEOUT_HEADER} must be whole milliseconds from 0 to {MAX_TIMEOUT_MS}")
    millis = int(text)
    if millis > MAX_TIMEOUT_MS:
        raise ValueError(f"{TIMEOUT_HEADER} must be whole milliseconds from 0 to {MAX_TIMEOUT_MS}")
    return millis / 1000

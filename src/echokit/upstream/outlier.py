"""Outlier ejection (Envoy's consecutive-failure detector) for one endpoint.

After ``consecutive_failures`` failed calls in a row (connection error, timeout, 5xx) an endpoint
is ejected: the balancer skips it for ``base_ejection_s`` * (number of times it was ejected
recently), at most ``max_ejection_s``. When its time is up it returns on probation: its next call
must succeed, or it is ejected again at once with a longer time. The endpoint set decides how
many may be ejected at a time (never all of them).

Pure: time comes from the caller, so tests drive it by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

USABLE = "usable"
EJECTED = "ejected"


@dataclass(frozen=True)
class OutlierConfig:
    consecutive_failures: int = 5
    base_ejection_s: float = 5.0
    max_ejection_s: float = 60.0
    max_ejected_percent: int = 50

    def max_ejected(self, endpoints: int) -> int:
        """How many of ``endpoints`` may be ejected at once: at least one when there are two or
        more, never all of them."""
        if endpoints < 2:
            return 0
        allowed = math.floor(endpoints * self.max_ejected_percent / 100)
        return min(endpoints - 1, max(1, allowed))


class OutlierTracker:
    """One endpoint's failure streak and ejection state (the caller holds the lock)."""

    def __init__(self, config: OutlierConfig) -> None:
        self.config = config
        self.consecutive_failures = 0
        self.ejections = 0  # recent ejections: each makes the next one longer
        self.ejected_until: float | None = None
        self.probation = False
        self.last_back_at = float("-inf")

    @property
    def state(self) -> str:
        return EJECTED if self.ejected_until is not None else USABLE

    def success(self) -> None:
        self.consecutive_failures = 0
        self.probation = False

    def failure(self) -> bool:
        """Count a failure; True when the endpoint should now be ejected."""
        self.consecutive_failures += 1
        return self.probation or self.consecutive_failures >= self.config.consecutive_failures

    def eject(self, now: float) -> float:
        """Eject from ``now``; returns the ejection time."""
        if not self.probation and now - self.last_back_at > self.config.max_ejection_s:
            self.ejections = 0  # healthy for a long while: start again from the base time
        self.ejections += 1
        seconds = min(self.config.max_ejection_s, self.config.base_ejection_s * self.ejections)
        self.ejected_until = now + seconds
        self.probation = False
        self.consecutive_failures = 0
        return seconds

    def due_back(self, now: float) -> bool:
        return self.ejected_until is not None and now >= self.ejected_until

    def restore(self, now: float) -> None:
        """Back in the rotation on probation: its next call decides whether it stays."""
        self.ejected_until = None
        self.probation = True
        self.consecutive_failures = 0
        self.last_back_at = now

    def remaining(self, now: float) -> float:
        return max(0.0, self.ejected_until - now) if self.ejected_until is not None else 0.0

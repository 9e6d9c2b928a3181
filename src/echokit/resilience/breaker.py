"""A circuit breaker: stop calling a failing A, then let one probe through to see if it is back.

closed --(N failures in a row, or failure rate over the window)--> open
open --(reset time passed; next call becomes the probe)--> half_open
half_open --(probe succeeds)--> closed;  half_open --(probe fails)--> open

Only the probe's verdict moves a half-open breaker: calls admitted before the circuit opened may
still finish while it is open or half-open, and their late results are counted but must not
close (or re-open) the circuit, or a straggler's success would close it while A is still down.

Failures in a row say "A is down" only when they are not all one endpoint's: with several
endpoints usable, N timeouts from one frozen replica (calls that were stuck on it together, ending
together) are outlier ejection's business, and opening the circuit would refuse the calls the
healthy replicas were answering. So a failure names its ``sources`` (the endpoints the call tried),
and the run of failures trips the circuit only once it spans ``sources_needed()`` of them (1 by
default; a failure that names none counts as A's as a whole).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import Enum

from echokit.resilience.clock import Clock
from echokit.resilience.window import SlidingCounts


class BreakerState(str, Enum):
    """The breaker's three states; each reads as its value in logs, JSON and metric labels."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class CircuitOpenError(Exception):
    """The breaker refused the call; ``retry_after_s`` says when a probe may go through."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class BreakerConfig:
    """When to open and how long to stay open; the defaults are declared once, as BREAKER_* in echokit.settings."""

    failure_threshold: int
    failure_rate: float
    min_calls: int
    window_s: float
    reset_s: float


class CircuitBreaker:
    """Thread-safe breaker state machine; calls ``on_change(old, new, reason)`` on each transition."""

    def __init__(
        self,
        config: BreakerConfig,
        clock: Clock,
        on_change: Callable[[str, str, str], None] | None = None,
        sources_needed: Callable[[], int] = lambda: 1,
    ) -> None:
        self.config = config
        self.clock = clock
        self.on_change = on_change
        self.sources_needed = sources_needed
        self._state = CLOSED
        self._consecutive_failures = 0
        self._run_sources: set[str] = set()  # the endpoints that failed the current run of failures
        self._run_is_general = False  # a failure in the run named no endpoint
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._last_failure = "failure"
        self._open_reason = ""
        self._window = SlidingCounts(config.window_s, clock, ("success", "failure"))
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state

    def before_call(self) -> bool:
        """Raise CircuitOpenError unless the call may go to A now; True if this call is the probe.

        Pass the returned value as ``probe=`` to ``record_success``/``record_failure``.
        """
        notify = None
        with self._lock:
            if self._state == CLOSED:
                return False
            wait = self._opened_at + self.config.reset_s - self.clock.now()
            if self._state == OPEN and wait <= 0:
                notify = self._move(HALF_OPEN, "reset time passed; letting one probe call through")
                self._probe_in_flight = True
            elif self._state == HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
            else:
                retry_after = max(wait, 0.0) if self._state == OPEN else self.config.reset_s
                raise CircuitOpenError(
                    f"{self._last_failure} (circuit breaker open: {self._open_reason}; "
                    f"next probe in {retry_after:.1f}s)",
                    retry_after,
                )
        self._notify(notify)
        return True

    def record_success(self, probe: bool | None = None) -> None:
        """Count a successful call. ``probe`` is what ``before_call`` returned; None means "treat
        it as the probe if the breaker is half-open" (right for one caller at a time)."""
        notify = None
        with self._lock:
            self._window.add("success")
            if self._state == CLOSED:
                self._end_run()
            elif self._state == HALF_OPEN and probe is not False:
                self._end_run()
                self._probe_in_flight = False
                notify = self._move(CLOSED, "probe call succeeded")
            # Otherwise a straggler admitted before the circuit opened: counted, no verdict.
        self._notify(notify)

    def record_failure(self, description: str = "failure", probe: bool | None = None,
                       sources: Collection[str] = ()) -> None:
        """Count a failed call; ``description`` is repeated to callers refused while open.
        ``probe`` as for ``record_success``; ``sources`` are the endpoints it failed on (none: A as a
        whole, e.g. no address known)."""
        notify = None
        with self._lock:
            self._last_failure = description
            self._window.add("failure")
            self._consecutive_failures += 1
            self._run_sources.update(sources)
            self._run_is_general = self._run_is_general or not sources
            if self._state == HALF_OPEN and probe is not False:
                self._probe_in_flight = False
                self._opened_at = self.clock.now()
                self._open_reason = "the probe call failed"
                notify = self._move(OPEN, "probe call failed")
            elif self._state == CLOSED:
                reason = self._trip_reason()
                if reason:
                    self._opened_at = self.clock.now()
                    self._open_reason = reason
                    notify = self._move(OPEN, reason)
        self._notify(notify)

    def release_probe(self) -> None:
        """The probe ended without a verdict (e.g. shed locally): let another call probe."""
        with self._lock:
            self._probe_in_flight = False

    def _end_run(self) -> None:
        self._consecutive_failures = 0
        self._run_sources.clear()
        self._run_is_general = False

    def _run_is_spread(self) -> bool:
        return self._run_is_general or len(self._run_sources) >= self.sources_needed()

    def _trip_reason(self) -> str | None:
        cfg = self.config
        if self._consecutive_failures >= cfg.failure_threshold and self._run_is_spread():
            return f"{self._consecutive_failures} consecutive failures"
        failures = self._window.total("failure")
        calls = failures + self._window.total("success")
        if calls >= cfg.min_calls and failures / calls >= cfg.failure_rate:
            return f"failure rate {failures}/{calls} in the last {cfg.window_s:g}s"
        return None

    def _move(self, new: BreakerState, reason: str) -> tuple[str, str, str]:
        old, self._state = self._state, new
        if new == CLOSED:
            self._window = SlidingCounts(self.config.window_s, self.clock, ("success", "failure"))
        return old, new, reason

    def _notify(self, change: tuple[str, str, str] | None) -> None:
        if change is not None and self.on_change is not None:
            self.on_change(*change)

    def snapshot(self) -> dict[str, object]:
        """State and counts for the readiness body and the logs."""
        with self._lock:
            info: dict[str, object] = {
                "state": self._state,
                "consecutive_failures": self._consecutive_failures,
                "recent_failures": self._window.total("failure"),
                "recent_successes": self._window.total("success"),
            }
            if self._state == OPEN:
                info["retry_after_s"] = round(max(0.0, self._opened_at + self.config.reset_s - self.clock.now()), 3)
            return info

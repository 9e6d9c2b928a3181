"""Adaptive admission: how much work a service takes on, decided when a request arrives.

Pure logic, no sockets and no Flask; time comes from an injectable clock, so tests drive it by hand.
Three checks run at a request's entry, cheapest first, before any work is done for it:

1. **deadline** - it has already waited as long as its whole budget: nobody is waiting for the answer.
2. **queue_time** (CoDel) - the time requests spend between arriving (the server read their first
   byte) and reaching this check has stayed above ``queue_target_s`` for a whole ``queue_interval_s``:
   a standing queue, so requests that waited longer than the target are shed until one gets through
   in time again.
3. **limit** - as many requests as the concurrency limit are already in flight.

The concurrency limit adapts to the latency of admitted work (:class:`Gradient2Limit`, after Netflix's
concurrency-limits ``Gradient2Limit``) within a floor and a cap. Nothing waits in a queue here: a
request over the limit is refused at once, so a shed answer costs microseconds, not a wait.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

from echokit.resilience.clock import SYSTEM_CLOCK, Clock

SHED_REASONS = ("limit", "queue_time", "deadline")


@dataclass(frozen=True)
class AdmissionSettings:
    """One service's admission policy (see the ``ADMISSION_*`` variables in echokit.settings)."""

    enabled: bool = True
    initial_limit: int = 64
    min_limit: int = 64
    max_limit: int = 256
    queue_target_s: float = 0.1
    queue_interval_s: float = 0.2
    log_change_share: float = 0.5


@dataclass(frozen=True)
class Gradient2Knobs:
    """Gradient2's fixed knobs: latency growth taken as noise, how fast the limit moves, its headroom
    above the measured need, the slow average's length, and the sampling window (time and samples)."""

    tolerance: float = 2.0
    smoothing: float = 0.2
    queue_size: int = 4
    long_window: int = 600
    window: tuple[float, int] = (0.1, 10)  # at least this many seconds and this many samples


class Gradient2Limit:
    """A concurrency limit that follows the latency of admitted work (Netflix's Gradient2).

    Each sampling window (at least ``knobs.window``: seconds and samples) compares the
    window's average latency (short RTT) with a slow exponential average (long RTT):
    ``gradient = clamp(tolerance * long / short, 0.5, 1)``; ``new = limit * gradient + queue_size``,
    smoothed, within [floor, cap]. While latency stays within ``tolerance`` times its usual level the
    limit grows by ``queue_size`` per window; when it grows beyond that the limit shrinks, at most by
    half per window. A limit that is not being used (fewer than half of it in flight) does not grow.
    """

    def __init__(self, settings: AdmissionSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.settings = settings
        self.knobs = Gradient2Knobs()
        self.clock = clock
        self.floor = settings.min_limit
        self.cap = max(settings.min_limit, settings.max_limit)
        self.estimate = float(min(self.cap, max(self.floor, settings.initial_limit)))
        self.long_rtt = 0.0
        self._long_samples = 0
        self.short_rtt = 0.0
        self._window_start = clock.now()
        self._window_sum = 0.0
        self._window_count = 0
        self._window_max_in_flight = 0

    @property
    def limit(self) -> int:
        return int(self.estimate)

    def sample(self, rtt_s: float, in_flight: int) -> bool:
        """Record one admitted request's latency; True when a window closed and the limit was recomputed."""
        self._window_sum += rtt_s
        self._window_count += 1
        self._window_max_in_flight = max(self._window_max_in_flight, in_flight)
        now = self.clock.now()
        window_s, window_samples = self.knobs.window
        if self._window_count < window_samples or now - self._window_start < window_s:
            return False
        short = self._window_sum / self._window_count
        busiest = self._window_max_in_flight
        self._window_start = now
        self._window_sum = 0.0
        self._window_count = 0
        self._window_max_in_flight = 0
        self._update(short, busiest)
        return True

    def _update(self, short: float, in_flight: int) -> None:
        self.short_rtt = short
        if self._long_samples < 10:  # warm-up: a plain average of the first windows
            self._long_samples += 1
            self.long_rtt += (short - self.long_rtt) / self._long_samples
        else:
            factor = 2.0 / (self.knobs.long_window + 1)
            self.long_rtt = self.long_rtt * (1 - factor) + short * factor
        if short <= 0:
            return
        if self.long_rtt / short > 2:
            # Latency fell well below the long-term level (the overload ended): let the level follow
            # quickly, or the next rise would look smaller than it is.
            self.long_rtt *= 0.95
        if in_flight < self.estimate / 2:
            return  # app-limited: the limit was not the constraint, so the sample says nothing about it
        k = self.knobs
        gradient = max(0.5, min(1.0, k.tolerance * self.long_rtt / short))
        target = self.estimate * gradient + k.queue_size
        smoothed = self.estimate * (1 - k.smoothing) + target * k.smoothing
        self.estimate = max(float(self.floor), min(float(self.cap), smoothed))


class CoDel:
    """Controlled delay on the time requests waited before reaching admission (their sojourn).

    Below ``target`` all is well. Once every sojourn for a full ``interval`` has been above the
    target, the queue is a standing one and the state is *dropping*: requests that waited more than
    the target are shed; the first one that waited less ends the dropping state.
    """

    def __init__(self, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._above_since: float | None = None
        self.dropping = False

    def should_shed(self, sojourn_s: float, now: float) -> bool:
        if sojourn_s < self.target_s:
            self._above_since = None
            self.dropping = False
            return False
        if self._above_since is None:
            self._above_since = now
        elif now - self._above_since >= self.interval_s:
            self.dropping = True
        return self.dropping


@dataclass(frozen=True)
class Shed:
    """A refused request: why, and how long the client should wait before trying again."""

    reason: str  # one of SHED_REASONS
    details: str
    retry_after_s: int = 1


class Permit:
    """An admitted request's slot; ``release()`` exactly once when its work is done."""

    __slots__ = ("_controller", "_released", "admitted_at")

    def __init__(self, controller: AdmissionController, admitted_at: float) -> None:
        self._controller = controller
        self.admitted_at = admitted_at
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._controller._release(self)


LimitListener = Callable[[int, int, Gradient2Limit], None]


class AdmissionController:
    """The admission decision for one process: ``enter()`` gives a :class:`Permit` or a :class:`Shed`.

    Thread-safe (the dev server serves each request in a thread; under gevent the lock never blocks
    for long). ``on_limit_change(old, new, limit)`` is called when the limit has moved by more than
    ``log_change_share`` since the last call, and ``on_shed(reason)`` for every refusal.
    """

    def __init__(
        self,
        settings: AdmissionSettings,
        clock: Clock = SYSTEM_CLOCK,
        *,
        on_limit_change: LimitListener | None = None,
        on_shed: Callable[[str], None] | None = None,
        on_change: Callable[[int, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.limiter = Gradient2Limit(settings, clock)
        self.codel = CoDel(settings.queue_target_s, settings.queue_interval_s)
        self.on_limit_change = on_limit_change
        self.on_shed = on_shed
        self.on_change = on_change  # (limit, in_flight) after every change, for gauges
        self._in_flight = 0
        self._reported_limit = self.limiter.limit
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def enter(self, arrived_at: float | None = None, budget_s: float | None = None) -> Permit | Shed:
        """Admit or refuse a request that arrived at ``arrived_at`` (clock time) with ``budget_s`` to live."""
        now = self.clock.now()
        sojourn = max(0.0, now - arrived_at) if arrived_at is not None else 0.0
        with self._lock:
            if budget_s is not None and sojourn >= budget_s:
                shed = Shed(
                    "deadline",
                    f"Load shed: the request waited {sojourn * 1000:.0f}ms before it could start, "
                    f"its whole {budget_s * 1000:.0f}ms budget",
                )
            elif self.codel.should_shed(sojourn, now):
                shed = Shed(
                    "queue_time",
                    f"Load shed: the request waited {sojourn * 1000:.0f}ms before it could start "
                    f"(over {self.settings.queue_target_s * 1000:.0f}ms for a while); try again shortly",
                )
            elif self._in_flight >= self.limiter.limit:
                shed = Shed(
                    "limit",
                    f"Load shed: {self._in_flight} requests already in flight, the current limit; try again shortly",
                )
            else:
                self._in_flight += 1
                permit = Permit(self, now)
                limit, in_flight = self.limiter.limit, self._in_flight
                shed = None
        if shed is not None:
            if self.on_shed is not None:
                self.on_shed(shed.reason)
            return shed
        if self.on_change is not None:
            self.on_change(limit, in_flight)
        return permit

    def _release(self, permit: Permit) -> None:
        now = self.clock.now()
        report: tuple[int, int] | None = None
        with self._lock:
            in_flight_at_end = self._in_flight
            self._in_flight -= 1
            if self.limiter.sample(now - permit.admitted_at, in_flight_at_end):
                report = self._limit_moved()
            limit, in_flight = self.limiter.limit, self._in_flight
        if report is not None and self.on_limit_change is not None:
            self.on_limit_change(report[0], report[1], self.limiter)
        if self.on_change is not None:
            self.on_change(limit, in_flight)

    def _limit_moved(self) -> tuple[int, int] | None:
        new, old = self.limiter.limit, self._reported_limit
        if old > 0 and abs(new - old) / old <= self.settings.log_change_share:
            return None
        self._reported_limit = new
        return old, new

    def snapshot(self) -> dict[str, object]:
        """The state for ``/ready`` and debugging."""
        return {
            "limit": self.limiter.limit,
            "in_flight": self._in_flight,
            "latency_ms": round(self.limiter.short_rtt * 1000, 2),
            "baseline_latency_ms": round(self.limiter.long_rtt * 1000, 2),
            "queue_time_shedding": self.codel.dropping,
        }


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

"""Adaptive admission: how much work a service takes on, decided when a request arrives.

Pure logic, no sockets and no Flask; time comes from an injectable clock, so tests drive it by hand.
Three checks run at a request's entry, cheapest first, before any work is done for it:

1. **deadline** - it has already waited as long as its whole budget: nobody is waiting for the answer.
2. **queue_time** (CoDel) - the time requests spend between arriving (the server read their first
   byte) and reaching this check has stayed above ``queue_target_s`` for a whole ``queue_interval_s``:
   a standing queue, so requests that waited longer than the target are shed until one gets through
   in time again.
3. **limit** - as many requests as the concurrency limit are already in flight, and the wait queue
   holds as many as the recent latency says will get a slot within ``queue_wait_s``.

The concurrency limit adapts to the latency of admitted work (:class:`Gradient2Limit`, after Netflix's
concurrency-limits ``Gradient2Limit``) within a floor and a cap. Over the limit, a request takes a
place in a short first-come-first-served queue (a :class:`Ticket`) when one is free and is handed the
next slot a finished request releases, or is refused (**queue_timeout**) if none comes within
``queue_wait_s``; when the queue is full it is refused at once. The queue is what keeps a burst of
clients waiting inside the service, where each wait is bounded and visible, instead of unread in the
kernel's socket buffers, where nothing bounds it; its length follows the latency, so the wait stays
short (``queue_wait_s`` 0: no queue, a request over the limit is refused at once).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from echokit.resilience.clock import SYSTEM_CLOCK, Clock

SHED_REASONS = ("limit", "queue_time", "deadline", "queue_timeout")


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
    # The longest a request over the limit waits for a slot. 0 (no queue: refused at once) for the
    # controller alone; the services take ADMISSION_QUEUE_WAIT_MS (500 ms by default).
    queue_wait_s: float = 0.0
    queue_max: int = 1024  # the most requests waiting at once


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


class Ticket:
    """A place in the wait queue of a request over the limit: :meth:`AdmissionController.wait` turns it
    into the :class:`Permit` a finished request hands over, or into a :class:`Shed` at its timeout."""

    __slots__ = ("_granted", "permit", "queued_at")

    def __init__(self, queued_at: float) -> None:
        self.queued_at = queued_at
        self.permit: Permit | None = None
        self._granted = threading.Event()  # gevent's Event once threading is monkey-patched


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
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.limiter = Gradient2Limit(settings, clock)
        self.codel = CoDel(settings.queue_target_s, settings.queue_interval_s)
        self.on_limit_change = on_limit_change
        self.on_shed = on_shed
        self.on_change = on_change  # (limit, in_flight) after every change, for gauges
        self.on_queue = on_queue  # (requests waiting) after every change of the queue, for a gauge
        self._queue: deque[Ticket] = deque()
        self._in_flight = 0
        self._reported_limit = self.limiter.limit
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self.limiter.limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queue_capacity(self) -> int:
        """How many may wait: as many as get one of the limit's slots within ``queue_wait_s`` at the
        recent latency of admitted work, with one latency to spare (every ``latency`` the limit's
        slots free up once: ``limit * (queue_wait_s / latency - 1)``). None before that latency has
        been measured: a wait nobody can estimate is not offered; none when one latency is longer
        than the wait (a slow or hanging A: refusing at once is kinder than a wait that ends in 503)."""
        settings = self.settings
        latency = self.limiter.short_rtt
        if settings.queue_wait_s <= 0 or latency <= 0:
            return 0
        fits = int(self.limiter.limit * (settings.queue_wait_s / latency - 1))
        return max(0, min(settings.queue_max, fits))

    def enter(self, arrived_at: float | None = None, budget_s: float | None = None) -> Permit | Shed | Ticket:
        """Admit, queue or refuse a request that arrived at ``arrived_at`` (clock time) with ``budget_s``
        to live. A :class:`Ticket` must go to :meth:`wait`."""
        now = self.clock.now()
        queued = None
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
            elif self._in_flight >= self.limiter.limit:  # (never a free slot while one waits: releases hand them on)
                if len(self._queue) < self.queue_capacity():
                    queued = Ticket(now)
                    self._queue.append(queued)
                    waiting = len(self._queue)
                    shed = None
                else:
                    shed = Shed(
                        "limit",
                        f"Load shed: {self._in_flight} requests already in flight, the current limit, and "
                        f"{len(self._queue)} waiting; try again shortly",
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
        if queued is not None:
            if self.on_queue is not None:
                self.on_queue(waiting)
            return queued
        if self.on_change is not None:
            self.on_change(limit, in_flight)
        return permit

    def wait(self, ticket: Ticket, timeout_s: float) -> Permit | Shed:
        """Block (a greenlet, under gevent) until ``ticket`` is handed a slot, for at most ``timeout_s``."""
        try:
            ticket._granted.wait(max(0.0, timeout_s))
        except BaseException:  # killed while waiting (a worker's exit, a timeout around it): leave nothing held
            permit = self._withdraw(ticket)
            if permit is not None:
                permit.release()
            raise
        permit = self._withdraw(ticket)
        if permit is not None:
            return permit
        waited = self.clock.now() - ticket.queued_at
        if self.on_shed is not None:
            self.on_shed("queue_timeout")
        return Shed(
            "queue_timeout",
            f"Load shed: no request slot came free within {waited * 1000:.0f}ms of waiting; try again shortly",
        )

    def _withdraw(self, ticket: Ticket) -> Permit | None:
        """The permit a release handed ``ticket``, or None after taking it out of the queue."""
        with self._lock:
            permit = ticket.permit
            if permit is None:
                self._queue.remove(ticket)  # still queued: only a release takes it out, under the lock
            waiting = len(self._queue)
        if permit is None and self.on_queue is not None:
            self.on_queue(waiting)
        return permit

    def _release(self, permit: Permit) -> None:
        now = self.clock.now()
        report: tuple[int, int] | None = None
        with self._lock:
            in_flight_at_end = self._in_flight
            self._in_flight -= 1
            if self.limiter.sample(now - permit.admitted_at, in_flight_at_end):
                report = self._limit_moved()
            granted = []
            while self._queue and self._in_flight < self.limiter.limit:  # the oldest waiters take the slots
                ticket = self._queue.popleft()
                ticket.permit = Permit(self, now)
                self._in_flight += 1
                granted.append(ticket)
            limit, in_flight, waiting = self.limiter.limit, self._in_flight, len(self._queue)
        for ticket in granted:
            ticket._granted.set()
        if report is not None and self.on_limit_change is not None:
            self.on_limit_change(report[0], report[1], self.limiter)
        if self.on_change is not None:
            self.on_change(limit, in_flight)
        if granted and self.on_queue is not None:
            self.on_queue(waiting)

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
            "queued": len(self._queue),
            "latency_ms": round(self.limiter.short_rtt * 1000, 2),
            "baseline_latency_ms": round(self.limiter.long_rtt * 1000, 2),
            "queue_time_shedding": self.codel.dropping,
        }


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

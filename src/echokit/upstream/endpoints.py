"""The endpoints B calls: one keep-alive pool, latency estimate and outlier state per address.

:class:`EndpointSet` follows discovery (``update``), picks the endpoint for each attempt through
the balancer, records each attempt's outcome (latency estimate, outlier ejection, per-endpoint
metrics) and logs one line when an endpoint is added, removed, ejected or restored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

from echokit.metrics import count
from echokit.resilience.clock import Clock
from echokit.upstream.balancer import DEFAULT_RTT_S, Balancer, PeakEwma
from echokit.upstream.discovery import Address
from echokit.upstream.outlier import EJECTED, OutlierConfig, OutlierTracker
from echokit.upstream.transport import ConnectionPool

# Attempt outcomes per endpoint (the agreed metric labels) and those that count toward ejection.
# "abandoned" (lost a hedge race) is counted as a timeout and toward ejection: an endpoint that
# loses race after race (frozen, or far slower than the others) is an outlier too.
ENDPOINT_OUTCOMES = ("success", "timeout", "connection_error", "bad_status", "bad_response")
FAILURES = frozenset({"timeout", "connection_error", "bad_status", "abandoned"})
FAILURE_PENALTY_S = 0.1


class Endpoint:
    """One address of A: its pool, in-flight count, latency estimate and outlier state."""

    def __init__(self, address: Address, pool_size: int, clock: Clock, outlier: OutlierConfig,
                 initial_rtt_s: float) -> None:
        self.address = address
        self.key = address.key
        self.path = address.target.path
        self.host_header = address.target.host_header
        self.url = f"http://{self.key}{self.path}"
        self.echo_url = f"{self.url}/echo"  # as the outbound log line names it
        # Never queues for a connection: the bulkhead already bounds concurrency.
        self.pool = ConnectionPool(address.ip, address.port, pool_size, self.host_header, self.path)
        self.latency = PeakEwma(clock, initial_rtt_s)
        self.outlier = OutlierTracker(outlier)
        self.in_flight = 0
        self.counters: dict[str, Any] = {}
        self.hedges: Any = None
        self.usable_gauge: Any = None

    @property
    def state(self) -> str:
        return self.outlier.state


def _observe_failure(endpoint: Endpoint, outcome: str, rtt_s: float) -> None:
    """What a failed attempt tells the latency estimate."""
    if outcome == "abandoned":
        # A lost hedge race only says "slower than this": it may raise the estimate, never lower it
        # (a 300 ms replica abandoned at 50 ms must not start to look like a 50 ms one).
        if rtt_s > endpoint.latency.value():
            endpoint.latency.observe(rtt_s)
        return
    # Any other failure looks like an answer of at least FAILURE_PENALTY_S: a fast failure (refused,
    # a quick 503) must not make an endpoint look attractive. Peak EWMA takes the maximum, so
    # repeated failures do not compound; the estimate decays back once answers are good.
    endpoint.latency.observe(max(rtt_s, FAILURE_PENALTY_S))


class EndpointSet:
    """Thread-safe set of endpoints with balancing, outlier ejection, metrics and logs."""

    def __init__(
        self,
        balancer: Balancer,
        outlier: OutlierConfig,
        clock: Clock,
        pool_size: int,
        logger: logging.Logger,
        metrics: Any = None,  # echokit.metrics.UpstreamMetrics or None
    ) -> None:
        self.balancer, self.outlier, self.clock = balancer, outlier, clock
        self.pool_size, self.logger, self.metrics = pool_size, logger, metrics
        self._all: dict[str, Endpoint] = {}
        self._usable: list[Endpoint] = []
        self._next_restore = float("inf")
        self._on_probation = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._all)

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._all.values())

    # --- membership -------------------------------------------------------------------------

    def update(self, addresses: Sequence[Address]) -> None:
        """Make the set exactly ``addresses``: new ones are added, gone ones removed and their idle
        connections closed (calls in flight on them finish)."""
        wanted = {a.key: a for a in addresses}
        added: list[Endpoint] = []
        removed: list[Endpoint] = []
        with self._lock:
            for key in [k for k in self._all if k not in wanted]:
                removed.append(self._all.pop(key))
            initial = self._typical_rtt()
            for key, address in wanted.items():
                if key not in self._all:
                    endpoint = Endpoint(address, self.pool_size, self.clock, self.outlier, initial)
                    self._all[key] = endpoint
                    added.append(endpoint)
            self._rebuild()
        for endpoint in added:
            self._export_new(endpoint)
            self.logger.info("upstream endpoint added: %s (from %s)", endpoint.key, endpoint.address.target.url)
        for endpoint in removed:
            endpoint.pool.close()
            self._export_removed(endpoint)
            self.logger.info("upstream endpoint removed: %s (no longer in %s)", endpoint.key,
                             endpoint.address.target.url)

    def _typical_rtt(self) -> float:
        """A new endpoint starts at the median estimate of the others, so it is neither stampeded
        (a zero cost) nor starved (a high one)."""
        values = sorted(e.latency.value() for e in self._all.values() if e.state != EJECTED)
        return values[len(values) // 2] if values else DEFAULT_RTT_S

    def _rebuild(self) -> None:
        self._usable = [e for e in self._all.values() if e.state != EJECTED]
        self._on_probation = any(e.outlier.probation for e in self._usable)
        pending = [e.outlier.ejected_until for e in self._all.values() if e.outlier.ejected_until is not None]
        self._next_restore = min(pending, default=float("inf"))

    def close(self) -> None:
        with self._lock:
            endpoints = list(self._all.values())
        for endpoint in endpoints:
            endpoint.pool.close()

    # --- choosing -----------------------------------------------------------------------------

    def pick(self, exclude: Collection[str] = ()) -> Endpoint | None:
        """The endpoint for the next attempt, avoiding ``exclude`` (keys) when another is usable;
        None when there is no endpoint at all. Counts the attempt as in flight."""
        if self.clock.now() >= self._next_restore:
            self._restore_due()
        usable = self._usable
        if self._on_probation:  # a returning endpoint takes one call at a time until one succeeds
            usable = [e for e in usable if not (e.outlier.probation and e.in_flight)] or usable
        if exclude:
            others = [e for e in usable if e.key not in exclude]
            usable = others or usable
        if not usable:
            return None
        endpoint = usable[0] if len(usable) == 1 else usable[self.balancer.pick(usable)]
        with self._lock:
            endpoint.in_flight += 1
        return endpoint

    def usable_count(self, exclude: Collection[str] = ()) -> int:
        return sum(1 for e in self._usable if e.key not in exclude)

    def _restore_due(self) -> None:
        now = self.clock.now()
        restored = []
        with self._lock:
            for endpoint in self._all.values():
                if endpoint.outlier.due_back(now):
                    endpoint.outlier.restore(now)
                    endpoint.latency.reset(self._typical_rtt())
                    restored.append(endpoint)
            self._rebuild()
        for endpoint in restored:
            if endpoint.usable_gauge is not None:
                endpoint.usable_gauge.set(1)
            self.logger.info("upstream endpoint restored: %s (on probation: its next call must succeed)",
                             endpoint.key)

    # --- results ------------------------------------------------------------------------------

    def record(self, endpoint: Endpoint, outcome: str, rtt_s: float, detail: str = "") -> None:
        """Count one finished attempt on ``endpoint`` (``outcome`` one of ENDPOINT_OUTCOMES, or
        "abandoned" for a lost hedge race)."""
        # A lost hedge race is counted as a timeout: the endpoint did not answer in the time it had.
        counter = endpoint.counters.get("timeout" if outcome == "abandoned" else outcome)
        if counter is not None:
            count(counter)
        ejected_for = None
        with self._lock:
            endpoint.in_flight -= 1
            if outcome == "success":
                endpoint.latency.observe(rtt_s)
                was_on_probation = endpoint.outlier.probation
                endpoint.outlier.success()
                if was_on_probation:
                    self._rebuild()
                return
            if outcome not in FAILURES:
                return
            _observe_failure(endpoint, outcome, rtt_s)
            ejected_for = self._eject_if_due(endpoint)
        if ejected_for is not None:
            self._ejected(endpoint, ejected_for, detail or outcome)

    def _eject_if_due(self, endpoint: Endpoint) -> float | None:
        """Count a failure (the caller holds the lock); the ejection time if it ejects the endpoint."""
        if endpoint.key not in self._all or endpoint.state == EJECTED or not endpoint.outlier.failure():
            return None
        ejected = sum(1 for e in self._all.values() if e.state == EJECTED)
        if ejected >= self.outlier.max_ejected(len(self._all)):
            return None  # never so many that calls have nowhere to go
        seconds = endpoint.outlier.eject(self.clock.now())
        self._rebuild()
        return seconds

    def _ejected(self, endpoint: Endpoint, seconds: float, cause: str) -> None:
        if self.metrics is not None:
            self.metrics.endpoint_ejections.labels(endpoint.key).inc()
        if endpoint.usable_gauge is not None:
            endpoint.usable_gauge.set(0)
        self.logger.warning(
            "upstream endpoint ejected: %s for %.1fs (ejection %d) after %s",
            endpoint.key, seconds, endpoint.outlier.ejections, cause,
        )

    # --- visibility ---------------------------------------------------------------------------

    def _export_new(self, endpoint: Endpoint) -> None:
        m = self.metrics
        if m is None:
            return
        endpoint.counters = {o: m.endpoint_requests.labels(endpoint.key, o) for o in ENDPOINT_OUTCOMES}
        endpoint.hedges = m.hedges.labels(endpoint.key)
        endpoint.usable_gauge = m.endpoint_usable.labels(endpoint.key)
        endpoint.usable_gauge.set(1)
        m.endpoint_ejections.labels(endpoint.key)

    def _export_removed(self, endpoint: Endpoint) -> None:
        m = self.metrics
        if m is None:
            return
        key = endpoint.key
        families: list[tuple[Any, tuple[str, ...]]] = [
            (m.endpoint_usable, (key,)), (m.endpoint_ejections, (key,)), (m.hedges, (key,)),
        ]
        families += [(m.endpoint_requests, (key, o)) for o in ENDPOINT_OUTCOMES]
        for family, labels in families:
            with contextlib.suppress(KeyError):
                family.remove(*labels)

    def snapshot(self) -> list[dict[str, Any]]:
        """Each endpoint's state, in-flight calls and latency estimate, for /ready."""
        now = self.clock.now()
        rows = []
        with self._lock:
            endpoints = list(self._all.values())
        for e in endpoints:
            row: dict[str, Any] = {
                "endpoint": e.key,
                "state": e.state,
                "in_flight": e.in_flight,
                "latency_ms": round(e.latency.value() * 1000, 3),
                "consecutive_failures": e.outlier.consecutive_failures,
            }
            if e.state == EJECTED:
                row["back_in_s"] = round(e.outlier.remaining(now), 3)
            rows.append(row)
        return rows

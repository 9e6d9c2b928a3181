"""Prometheus metrics for both services, correct under several gunicorn worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the gunicorn config sets and cleans it per run), every
worker writes its samples to files there and ``/metrics`` sums them across workers.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from echokit.resilience.breaker import BreakerState

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
BREAKER_STATES = tuple(BreakerState)
# Every final outcome of a call from B to A (the ``outcome`` label), so each series exists from the start.
UPSTREAM_OUTCOMES = (
    "success", "timeout", "connection_error", "bad_status", "bad_response", "shed", "circuit_open", "rejected",
)
# No ``*_created`` series: in the 0.0.4 text format Prometheus reads them as extra gauges, and
# multiprocess mode (gunicorn) never has them, so the dev server's /metrics now reads the same.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Bound on the cache of labelled children: method is client-chosen (mapped to OTHER), so the raw
# key space is not bounded; the label space is.
_CHILD_CACHE_LIMIT = 1024


class _DirectSamples:
    """Writes samples straight into prometheus_client's per-process file, for the hot-path series.

    Only under gevent's monkey-patching in multiprocess mode, where every request runs in a greenlet
    of one OS thread: nothing between reading a value and writing it back here can switch greenlets
    (no I/O, no gevent call), so no two updates interleave and no lock is needed. The public path
    takes prometheus_client's lock (gevent's Python-level lock when patched) and checks for a fork
    on every sample, several per request; this checks for a fork once per call and does the rest
    of what ``MmapedValue.inc``/``set`` do: the value kept in memory and the same bytes at the same
    place in the same file, so ``/metrics`` (summed over the workers' files) reads the same.
    """

    __slots__ = ("_on", "_pid")

    def __init__(self) -> None:
        self._pid = 0  # the process it last decided in (decided again after a fork)
        self._on = False

    def ready(self, value: Any) -> bool:
        """True when ``value`` (a child's value object) may be written directly in this process."""
        pid = _ThisProcess.pid
        if pid != self._pid:
            monkey = sys.modules.get("gevent.monkey")
            self._on = (
                monkey is not None and monkey.is_module_patched("threading")
                and getattr(value, "_multiprocess", False)
                and all(hasattr(value, a) for a in ("_value", "_timestamp", "_file", "_key"))
            )
            if self._on:
                value.get()  # after a fork, prometheus_client's own check moves every value to this pid's files
            self._pid = pid
        return self._on

    @staticmethod
    def add(value: Any, amount: float) -> None:
        value._value += amount
        value._timestamp = 0.0
        value._file.write_value(value._key, value._value, 0.0)

    @staticmethod
    def put(value: Any, new: float) -> None:
        value._value = new
        value._timestamp = 0.0
        value._file.write_value(value._key, new, 0.0)


_DIRECT = _DirectSamples()


class _ThisProcess:
    """This process's pid without a system call per sample (os.getpid() is one): set again in a forked child."""

    pid = os.getpid()

    @classmethod
    def forked(cls) -> None:
        cls.pid = os.getpid()


os.register_at_fork(after_in_child=_ThisProcess.forked)


def count(child: Any, amount: float = 1.0) -> None:
    """``child.inc(amount)`` for a counter or gauge child, written directly when that is safe."""
    value = getattr(child, "_value", None)
    if value is not None and _DIRECT.ready(value):
        _DIRECT.add(value, amount)
    else:
        child.inc(amount)


def set_gauge(child: Any, value: float) -> None:
    """``child.set(value)`` for a gauge child, written directly when that is safe."""
    stored = getattr(child, "_value", None)
    if stored is not None and _DIRECT.ready(stored):
        _DIRECT.put(stored, value)
    else:
        child.set(value)


def observe(child: Any, amount: float) -> None:
    """``child.observe(amount)`` for a histogram child, written directly when that is safe."""
    total = getattr(child, "_sum", None)
    if total is None or not _DIRECT.ready(total):
        child.observe(amount)
        return
    _DIRECT.add(total, amount)
    for bound, bucket in zip(child._upper_bounds, child._buckets, strict=True):  # as Histogram.observe
        if amount <= bound:
            _DIRECT.add(bucket, 1.0)
            break


class UpstreamMetrics:
    """Service B's families for its calls to A: outcomes, latency, retries, circuit breaker."""

    def __init__(self, reg: CollectorRegistry) -> None:
        self.calls = Counter(
            "upstream_requests", "Calls from B to A, by final outcome.", ("outcome",), registry=reg,
        )
        self.latency = Histogram(
            "upstream_request_duration_seconds", "Time of a call from B to A, retries included, by outcome.",
            ("outcome",), buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.retries = Counter(
            "upstream_retries", "Retries of calls from B to A.", registry=reg,
        )
        self.retries_denied = Counter(
            "upstream_retries_denied", "Retries not made because the retry budget was spent.", registry=reg,
        )
        self.breaker_state = Gauge(
            "circuit_breaker_state", "1 for the circuit breaker's current state, 0 for the others.",
            ("state",), registry=reg, multiprocess_mode="livemax",
        )
        self.breaker_transitions = Counter(
            "circuit_breaker_transitions", "Circuit breaker state changes, by the state entered.",
            ("state",), registry=reg,
        )
        # Per endpoint of A (endpoint="host:port"); each endpoint's series start at 0 when it is added.
        self.endpoint_requests = Counter(
            "upstream_endpoint_requests", "Attempts from B to one endpoint of A, by outcome.",
            ("endpoint", "outcome"), registry=reg,
        )
        self.endpoint_ejections = Counter(
            "upstream_endpoint_ejections", "Times an endpoint of A was ejected as an outlier.",
            ("endpoint",), registry=reg,
        )
        self.hedges = Counter(
            "upstream_hedges", "Hedged attempts sent to an endpoint of A.", ("endpoint",), registry=reg,
        )
        self.endpoint_usable = Gauge(
            "upstream_endpoint_usable", "1 while an endpoint of A takes calls, 0 while it is ejected.",
            ("endpoint",), registry=reg, multiprocess_mode="livemin",
        )
        # Every labelled series exists at 0 from the start, so a rate or ratio over a failure
        # outcome is 0 rather than "no data" until the first failure.
        for outcome in UPSTREAM_OUTCOMES:
            self.calls.labels(outcome)
            self.latency.labels(outcome)
        for state in BREAKER_STATES:
            self.breaker_transitions.labels(state)


class Metrics:
    """The metric families of one app, registered on their own registry.

    ``multiprocess_dir`` is the settings' PROMETHEUS_MULTIPROC_DIR: then ``/metrics`` sums the files
    every worker writes there (prometheus_client itself picks file storage from the same variable).
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir is not None
        reg = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests served, by method, route template and status.",
            ("method", "route", "status"), registry=reg,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to serve an HTTP request, by method, route template and status.",
            ("method", "route", "status"), buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being served right now.",
            registry=reg, multiprocess_mode="livesum",
        )
        self._upstream: UpstreamMetrics | None = None
        self._upstream_lock = threading.Lock()

        # (method, route, status) -> (counter child, histogram child): labels() takes a lock and
        # builds tuples on every call; the hot path should not.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            label = method if method in KNOWN_METHODS else "OTHER"
            children = (
                self.requests.labels(label, route, str(status)),
                self.latency.labels(label, route, str(status)),
            )
            if len(self._request_children) < _CHILD_CACHE_LIMIT:
                self._request_children[key] = children
        return children

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one served request and its latency; ``route`` is a template, never a raw path."""
        counter, histogram = self._children(method, route, status)
        counter.inc()
        histogram.observe(seconds)

    def request_started(self) -> None:
        """One more request in flight (``http_requests_in_flight``)."""
        count(self.in_flight)

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """The request left flight: :meth:`observe_request` and the in-flight gauge down by one."""
        counter, histogram = self._children(method, route, status)
        count(self.in_flight, -1.0)
        count(counter)
        observe(histogram, seconds)

    @property
    def upstream(self) -> UpstreamMetrics:
        """B's families for its calls to A, registered on first use so A's /metrics has none of them.

        B's EchoClient touches them when it is built (it exports the breaker's initial state), so
        B's /metrics shows them all from the start.
        """
        if self._upstream is None:
            with self._upstream_lock:
                if self._upstream is None:
                    self._upstream = UpstreamMetrics(self.registry)
        return self._upstream

    def set_breaker_state(self, state: str) -> None:
        for name in BREAKER_STATES:
            self.upstream.breaker_state.labels(name).set(1 if name == state else 0)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format: this process's registry, or all workers' files summed."""
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int, multiprocess_dir: str | None) -> None:
    """Drop a dead worker's live gauges (gunicorn's ``child_exit`` hook calls this)."""
    if multiprocess_dir:
        prometheus_multiprocess.mark_process_dead(pid, multiprocess_dir)  # type: ignore[no-untyped-call]

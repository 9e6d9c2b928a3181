"""Prometheus metrics for both services, correct under several gunicorn worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (the gunicorn config sets and cleans it per run), every
worker writes its samples to files there and ``/metrics`` sums them across workers.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
BREAKER_STATES = ("closed", "open", "half_open")
UPSTREAM_OUTCOMES = ("success", "timeout", "connection_error", "bad_status", "bad_response", "shed", "circuit_open")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metric families of one app, registered on their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        reg = self.registry
        self.requests = Counter(
            "http_requests", "HTTP requests served, by method, route template and status.",
            ("method", "route", "status"), registry=reg,
        )
        self.latency = Histogram(
            "http_request_duration_seconds", "Time to serve an HTTP request, by method and route template.",
            ("method", "route"), buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight", "HTTP requests being served right now.",
            registry=reg, multiprocess_mode="livesum",
        )
        self.upstream_calls = Counter(
            "upstream_requests", "Calls from B to A, by final outcome.", ("outcome",), registry=reg,
        )
        self.upstream_latency = Histogram(
            "upstream_request_duration_seconds", "Time of a call from B to A, retries included, by outcome.",
            ("outcome",), buckets=LATENCY_BUCKETS, registry=reg,
        )
        self.upstream_retries = Counter(
            "upstream_retries", "Retries of calls from B to A.", registry=reg,
        )
        self.upstream_retries_denied = Counter(
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

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def set_breaker_state(self, state: str) -> None:
        for name in BREAKER_STATES:
            self.breaker_state.labels(name).set(1 if name == state else 0)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition format: this process's registry, or all workers' files summed."""
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn's ``child_exit`` hook calls this)."""
    if multiprocess_dir():
        prometheus_multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]

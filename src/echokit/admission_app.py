"""The admission gate at a service's request entry: a WSGI layer in front of Flask.

It runs before Flask builds a request, so a refused request costs a few microseconds of Python and
one small JSON answer. It does three things for the routes it guards:

* counts each request's budget from its **arrival** (``ARRIVAL_ENVIRON``, recorded by the gunicorn
  worker when it read the request), and makes every :class:`~echokit.resilience.deadline.Deadline`
  created while serving the request that much shorter;
* on B, asks the :class:`~echokit.admission.AdmissionController` whether to take the request on,
  lets it wait for a slot when the controller gives it a place in its short queue, and answers
  ``503`` JSON with ``Retry-After`` when it is refused (at once, or when its wait runs out);
* on A, no layer: A's ``/echo`` reads :func:`spent_since_arrival` itself, to see how much of the
  caller's propagated deadline (``X-Request-Timeout-Ms``) the request already spent waiting, and
  answers ``504`` without doing the work once none is left (A admits everything else).

Probes (``/health``, ``/ready``, ``/metrics``) are never guarded.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from echokit.admission import (
    SHED_REASONS,
    AdmissionController,
    AdmissionSettings,
    Gradient2Limit,
    Shed,
    Ticket,
    retry_after_header,
)
from echokit.context import ARRIVAL_ENVIRON
from echokit.metrics import set_gauge
from echokit.middleware import ROUTE_ENVIRON, WSGIApp
from echokit.resilience.deadline import spent_before_handler
from echokit.responses import to_json

OVERLOADED = "Service A unavailable"  # the document's error for every 503 of B; details say why
_ROUTED_METHODS = frozenset({"GET", "HEAD"})  # what the guarded routes answer; anything else gets Flask's 405


class AdmissionMetrics:
    """``admission_limit``, ``admission_in_flight`` and ``admission_shed_total{reason}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.shed = Counter(
            "admission_shed", "Requests refused at entry, by reason (limit, queue_time, deadline, queue_timeout).",
            ("reason",), registry=registry,
        )
        self._shed_children = {reason: self.shed.labels(reason) for reason in SHED_REASONS}  # all shown at 0
        # Summed over live worker processes: the service's limit and in-flight count as a whole.
        self.limit = Gauge(
            "admission_limit", "Current adaptive concurrency limit (sum over worker processes).",
            registry=registry, multiprocess_mode="livesum",
        )
        self.in_flight = Gauge(
            "admission_in_flight", "Admitted requests in flight (sum over worker processes).",
            registry=registry, multiprocess_mode="livesum",
        )
        self.queued = Gauge(
            "admission_queued", "Requests over the limit waiting for a slot (sum over worker processes).",
            registry=registry, multiprocess_mode="livesum",
        )
        # The values last written: the controller reports both on every enter and release, and
        # the limit seldom moves; each write is a locked write to the multiprocess file.
        self._written: tuple[int | None, int | None] = (None, None)

    def set_queued(self, waiting: int) -> None:
        set_gauge(self.queued, waiting)

    def count_shed(self, reason: str) -> None:
        self._shed_children[reason].inc()

    def set_state(self, limit: int, in_flight: int) -> None:
        written_limit, written_in_flight = self._written
        if limit != written_limit:
            set_gauge(self.limit, limit)
        if in_flight != written_in_flight:
            set_gauge(self.in_flight, in_flight)
        self._written = (limit, in_flight)


def build_controller(
    settings: AdmissionSettings, metrics: AdmissionMetrics, logger: logging.Logger
) -> AdmissionController:
    """B's controller, wired to its metrics and to one log line per large move of the limit."""

    def limit_moved(old: int, new: int, limiter: Gradient2Limit) -> None:
        logger.info(
            "admission limit %d -> %d (admitted latency %.1fms, baseline %.1fms)",
            old, new, limiter.short_rtt * 1000, limiter.long_rtt * 1000,
        )

    controller = AdmissionController(
        settings, on_limit_change=limit_moved, on_shed=metrics.count_shed, on_change=metrics.set_state,
        on_queue=metrics.set_queued,
    )
    metrics.set_state(controller.limit, 0)
    return controller


def spent_since_arrival(environ: dict[str, Any], now: float | None = None) -> float:
    """Seconds since the server read the request (``ARRIVAL_ENVIRON``); 0.0 without an arrival stamp."""
    arrived = environ.get(ARRIVAL_ENVIRON)
    if not isinstance(arrived, float):
        return 0.0
    return max(0.0, (time.monotonic() if now is None else now) - arrived)


@functools.lru_cache(maxsize=1024)
def _shed_answer(details: str, retry_after_s: int) -> tuple[bytes, list[tuple[str, str]]]:
    """The body and headers of a 503 for ``details``, encoded once per distinct text.

    A shed must cost as little as possible (under overload most answers are sheds), and its details
    take few distinct values (mostly "N requests already in flight" for N up to the limit's cap).
    """
    payload = to_json({"error": OVERLOADED, "details": details}).encode()
    headers = [
        ("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
        ("Retry-After", retry_after_header(retry_after_s)),
    ]
    return payload, headers


class AdmissionGate:
    """WSGI middleware: arrival-based budgets, and admission for the routes in ``guarded``.

    ``budget_s(environ)`` is the request's whole budget in seconds (None: no budget). With a
    ``controller`` the gate admits or sheds; without one it refuses only requests that already waited
    their whole budget (B with ADMISSION_ENABLED=false).
    """

    def __init__(
        self,
        app: WSGIApp,
        guarded: frozenset[str],
        *,
        controller: AdmissionController | None,
        metrics: AdmissionMetrics | None,
        budget_s: Callable[[dict[str, Any]], float | None],
    ) -> None:
        self.app, self.guarded, self.budget_s = app, guarded, budget_s
        self.controller, self.metrics = controller, metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "") not in self.guarded or environ.get("REQUEST_METHOD") not in _ROUTED_METHODS:
            return self.app(environ, start_response)  # probes, other routes, and 405s are Flask's
        now = time.monotonic()
        spent = spent_since_arrival(environ, now)
        budget = self.budget_s(environ)
        if self.controller is None:
            if budget is not None and spent >= budget:
                return self._refuse(environ, start_response, Shed(
                    "deadline", f"Load shed: the request waited {spent * 1000:.0f}ms before it could start, "
                    f"its whole {budget * 1000:.0f}ms budget",
                ))
            return self._serve(environ, start_response, spent)
        decision = self.controller.enter(now - spent, budget)
        if isinstance(decision, Ticket):  # over the limit, with a place in the queue: wait for a slot
            wait_s = self.controller.settings.queue_wait_s
            if budget is not None:
                wait_s = min(wait_s, budget - spent)
            decision = self.controller.wait(decision, wait_s)
            spent = spent_since_arrival(environ)  # the wait counts against the request's budget
        if isinstance(decision, Shed):
            return self._refuse(environ, start_response, decision)
        try:
            return self._serve(environ, start_response, spent)
        finally:
            decision.release()

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any], spent: float) -> Iterable[bytes]:
        token = spent_before_handler.set(spent)
        try:
            return self.app(environ, start_response)
        finally:
            spent_before_handler.reset(token)

    def _refuse(self, environ: dict[str, Any], start_response: Callable[..., Any], shed: Shed) -> list[bytes]:
        environ[ROUTE_ENVIRON] = environ.get("PATH_INFO", "")  # a guarded path is its own route template
        if self.controller is None and self.metrics is not None:
            self.metrics.count_shed(shed.reason)  # the controller counts its own
        payload, headers = _shed_answer(shed.details, shed.retry_after_s)
        start_response("503 Service Unavailable", list(headers))  # a copy: a server may extend the list
        return [payload]


def service_b_gate(
    app: WSGIApp, settings: AdmissionSettings, budget_s: float, registry: CollectorRegistry, logger: logging.Logger
) -> AdmissionGate:
    """B's gate: ``/call-echo`` admitted by the adaptive limit, its budget counted from arrival."""
    metrics = AdmissionMetrics(registry)
    controller = build_controller(settings, metrics, logger) if settings.enabled else None
    return AdmissionGate(
        app, frozenset({"/call-echo"}), controller=controller, metrics=metrics, budget_s=lambda environ: budget_s,
    )


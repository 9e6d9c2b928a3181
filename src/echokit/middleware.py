"""The WSGI layer around each Flask app: request ID, access log line, metrics, in-flight count.

It sits outside Flask so that every request is counted and logged once, including 404s, 405s
and errors Flask turns into 500s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

from echokit.context import (
    REQUEST_ID_ENVIRON,
    REQUEST_ID_HEADER,
    TRACE_ID_ENVIRON,
    accept_request_id,
    current_request_id,
)
from echokit.lifecycle import Lifecycle
from echokit.metrics import Metrics

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

ROUTE_ENVIRON = "echokit.route"  # set by the Flask app to the matched route template
UNMATCHED_ROUTE = "unmatched"
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})


class ObservedApp:
    """Wraps a WSGI app so each request gets an ID, one access line and its metrics."""

    def __init__(
        self, app: WSGIApp, logger: logging.Logger, lifecycle: Lifecycle, metrics: Metrics, log_probes: bool
    ) -> None:
        self.app = app
        self.logger = logger
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.log_probes = log_probes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = perf_counter()
        request_id = accept_request_id(environ.get(REQUEST_ID_ENVIRON))
        environ[REQUEST_ID_ENVIRON] = request_id  # what the app (and B's call to A) sees
        token = current_request_id.set(request_id)
        status_code = 500

        def start_response_with_id(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            nonlocal status_code
            status_code = int(status[:3])
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, exc_info)

        self.lifecycle.request_started()
        self.metrics.in_flight.inc()
        body: Iterable[bytes] | None = None
        try:
            body = self.app(environ, start_response_with_id)
            return _FinishAfterBody(body, self.lifecycle.request_finished)
        finally:
            elapsed = perf_counter() - started
            self.metrics.in_flight.dec()
            if body is None:  # the app raised: nothing left to send
                self.lifecycle.request_finished()
            method = environ.get("REQUEST_METHOD", "")
            path = environ.get("PATH_INFO", "")
            if not path.isascii():  # WSGI hands the path over as latin-1; show it as the UTF-8 it was
                path = path.encode("latin-1").decode("utf-8", "replace")
            self.metrics.observe_request(method, environ.get(ROUTE_ENVIRON, UNMATCHED_ROUTE), status_code, elapsed)
            if self.log_probes or path not in PROBE_PATHS:
                latency_ms = round(elapsed * 1000, 2)
                self.logger.info(
                    "%s %s %d %.2fms", method, path, status_code, latency_ms,
                    extra={
                        "method": method, "path": path, "status": status_code, "latency_ms": latency_ms,
                        # The request's span has ended by now; echokit.otel kept its trace id here.
                        "trace_id": environ.get(TRACE_ID_ENVIRON),
                    },
                )
            current_request_id.reset(token)



class _FinishAfterBody:
    """``body``, then ``finished()`` once the server has sent the last chunk or closed the body.

    A draining server waits for the lifecycle's in-flight count to reach zero and then exits; the
    count must not drop before the response body is written, or the exit cuts the body off.
    Exhausting the body (what test clients do) or closing it (what WSGI servers do) both count,
    once.
    """

    __slots__ = ("_body", "_done", "_finished")

    def __init__(self, body: Iterable[bytes], finished: Callable[[], None]) -> None:
        self._body = body
        self._finished = finished
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        finally:
            self.close()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._finished()

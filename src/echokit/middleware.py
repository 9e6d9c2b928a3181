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
from echokit.logs import access_logger
from echokit.metrics import Metrics
from echokit.probes import PROBE_PATHS

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# The matched route template, for the metrics' ``route`` label: set by the Flask app's request
# class when routing matches (echokit.web.RoutedRequest), by its 405 handler (the path matched,
# the method did not) and by the admission gate for a request it refuses.
ROUTE_ENVIRON = "echokit.route"
UNMATCHED_ROUTE = "unmatched"


class ObservedApp:
    """Wraps a WSGI app so each request gets an ID, one access line and its metrics.

    One layer, and per request one small object (:class:`_Exchange`: the status the app started,
    and the body that counts as in flight until it is sent); everything else is made once here.
    """

    __slots__ = ("access", "app", "lifecycle", "logger", "metrics", "unlogged")

    def __init__(
        self, app: WSGIApp, logger: logging.Logger, lifecycle: Lifecycle, metrics: Metrics, log_probes: bool
    ) -> None:
        self.app = app
        self.logger = logger
        self.access = access_logger(logger)
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.unlogged = frozenset() if log_probes else PROBE_PATHS  # paths that get no access line

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = perf_counter()
        request_id = accept_request_id(environ.get(REQUEST_ID_ENVIRON))
        environ[REQUEST_ID_ENVIRON] = request_id  # what the app (and B's call to A) sees
        token = current_request_id.set(request_id)
        exchange = _Exchange(start_response, request_id, self.lifecycle)
        self.lifecycle.request_started()
        self.metrics.request_started()
        try:
            exchange.body = self.app(environ, exchange.start_response)
            return exchange
        finally:
            elapsed = perf_counter() - started
            if exchange.body is None:  # the app raised: nothing left to send
                self.lifecycle.request_finished()
            method = environ.get("REQUEST_METHOD", "")
            status = exchange.status
            self.metrics.request_finished(method, environ.get(ROUTE_ENVIRON, UNMATCHED_ROUTE), status, elapsed)
            path = environ.get("PATH_INFO", "")
            if path not in self.unlogged:
                if not path.isascii():  # WSGI hands the path over as latin-1; show it as the UTF-8 it was
                    path = path.encode("latin-1").decode("utf-8", "replace")
                # The request's span has ended by now; echokit.tracing kept its trace id in the environ.
                self.access(method, path, status, round(elapsed * 1000, 2), environ.get(TRACE_ID_ENVIRON))
            current_request_id.reset(token)


class _Exchange:
    """One request's answer: the status the app started, then its body, passed on to the server.

    ``start_response`` adds the request ID header. A draining server waits for the lifecycle's
    in-flight count to reach zero and then exits; the count must not drop before the response body
    is written, or the exit cuts the body off. Exhausting the body (what test clients do) or closing
    it (what WSGI servers do) both count, once.
    """

    __slots__ = ("_done", "_lifecycle", "_request_id", "_start_response", "body", "status")

    def __init__(self, start_response: Callable[..., Any], request_id: str, lifecycle: Lifecycle) -> None:
        self._start_response = start_response
        self._request_id = request_id
        self._lifecycle = lifecycle
        self._done = False
        self.body: Iterable[bytes] | None = None
        self.status = 500  # until the app starts a response

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = int(status[:3])
        headers.append((REQUEST_ID_HEADER, self._request_id))
        return self._start_response(status, headers, exc_info)

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self.body  # type: ignore[misc]  # set before the server sees this object
        finally:
            self.close()

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self._lifecycle.request_finished()

"""Service B's call to Service A: pooled HTTP calls to every endpoint of A behind deadline, retry,
breaker, bulkhead, outlier ejection and hedging.

Usable without Flask: ``EchoClient(settings).echo("hello")`` returns ``{"echo": "hello"}`` or raises
:class:`UpstreamError`, whose ``status`` and ``details`` B sends back to its client.

Each attempt goes to one endpoint chosen by the balancer (:mod:`echokit.upstream.balancer`); a
retry goes to an endpoint not tried yet, at once when the failed one refused the connection or
dropped it before the request was written. With two or more endpoints the breaker judges calls,
not attempts: a failure retried elsewhere is one replica's problem, not A's.
"""

from __future__ import annotations

import contextvars
import json
import logging
import queue
import random
import threading
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import quote_plus

from echokit import tracing
from echokit.context import REQUEST_ID_HEADER, accept_request_id
from echokit.metrics import Metrics, count, observe
from echokit.resilience.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError
from echokit.resilience.bulkhead import Bulkhead
from echokit.resilience.clock import SYSTEM_CLOCK, Clock
from echokit.resilience.deadline import TIMEOUT_HEADER, Deadline
from echokit.resilience.retry import RetryBudget, RetryPolicy, run_with_retries
from echokit.settings import MAX_REQUEST_LINE_BYTES, UpstreamSettings
from echokit.upstream.balancer import make_balancer
from echokit.upstream.discovery import Discovery, Resolver, Target, parse_targets, system_resolver
from echokit.upstream.endpoints import Endpoint, EndpointSet
from echokit.upstream.hedging import HedgePolicy
from echokit.upstream.outlier import OutlierConfig
from echokit.upstream.transport import (
    AttemptTrace,
    ConnectTimeoutError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
    TransportError,
)

UNAVAILABLE = "Service A unavailable"
BAD_RESPONSE = "Invalid response from Service A"
RETRYABLE_STATUSES = frozenset({502, 503, 504})

# Characters legal in a query value that need no escaping; '&', '=', '+', '#' and '%' are escaped.
_QUERY_SAFE = "/:@!$'()*,;?~"
MSG_TOO_LONG = "'msg' parameter too long"
_TIMEOUT_NAME = TIMEOUT_HEADER.encode("ascii")
_REQUEST_ID_NAME = REQUEST_ID_HEADER.encode("ascii")
# len("GET  HTTP/1.1"): the request line around the base path and the query.
_REQUEST_LINE_FRAME = len("GET  HTTP/1.1")
# With no known address (names not resolving yet), re-resolve on demand at most this often.
ON_DEMAND_RESOLVE_S = 1.0


@dataclass
class UpstreamError(Exception):
    """A call to A that did not produce an echo.

    ``outcome`` is the metric label (timeout, connection_error, bad_status, bad_response, shed,
    circuit_open); ``status`` and ``error``/``details`` are what B answers; ``retryable`` says
    whether another attempt could help; ``counts_against_a`` whether the breaker should see it.
    """

    outcome: str
    details: str
    status: int = 503
    error: str = UNAVAILABLE
    retryable: bool = False
    counts_against_a: bool = True
    retry_after_s: float | None = None
    immediate: bool = False  # nothing reached A and another endpoint is free: retry at once

    def __str__(self) -> str:
        return self.details


class EchoClient:
    """Calls A's ``/echo`` over a keep-alive pool per endpoint, with B's resilience policies."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.settings = settings
        self.logger = logger or logging.getLogger("service_b")
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.targets = parse_targets(settings.urls)
        self.echo_url = f"{settings.urls[0]}/echo"
        self._line_frame = _REQUEST_LINE_FRAME + max(len(t.path) for t in self.targets)
        self.bulkhead = Bulkhead(settings.max_in_flight)
        self._by_outcome: dict[str, tuple[Any, Any]] = {}
        self.retry_budget = RetryBudget(
            settings.retry_budget_ratio, settings.retry_budget_min_retries, settings.retry_budget_window_s, clock
        )
        self.retry_policy = RetryPolicy(
            settings.retry_attempts, settings.retry_backoff_initial_s, settings.retry_backoff_max_s
        )
        self.breaker = CircuitBreaker(
            BreakerConfig(
                settings.breaker_failure_threshold,
                settings.breaker_failure_rate,
                settings.breaker_min_calls,
                settings.breaker_window_s,
                settings.breaker_reset_s,
            ),
            clock,
            on_change=self._breaker_changed,
            # Failures in a row open the circuit only if they are not one replica's alone.
            sources_needed=lambda: min(2, self.endpoints.usable_count()) or 1,
        )
        if metrics is not None:
            metrics.set_breaker_state(self.breaker.state)
        self.hedge = HedgePolicy(clock, settings.hedge_budget_ratio, settings.hedge_delay_s)
        self.endpoints = EndpointSet(
            make_balancer(settings.balancer, rng),
            OutlierConfig(
                settings.outlier_consecutive_failures, settings.outlier_base_ejection_s,
                settings.outlier_max_ejection_s, settings.outlier_max_ejected_percent,
            ),
            clock, settings.max_in_flight, self.logger, metrics.upstream if metrics is not None else None,
        )
        self.discovery = Discovery(
            self.targets, clock, resolver, on_failure=self._resolve_failed, on_recovery=self._resolve_recovered
        )
        self._refresh_lock = threading.Lock()
        self._stopping = threading.Event()
        self._refresher: threading.Thread | None = None
        self.refresh_endpoints()
        if self.discovery.needs_resolution and settings.resolve_interval_s > 0:
            self._refresher = threading.Thread(target=self._refresh_loop, name="echokit-resolver", daemon=True)
            self._refresher.start()

    # --- discovery ------------------------------------------------------------------------------

    def refresh_endpoints(self) -> None:
        """Re-resolve A's host names now and follow the result (tests and the resolver thread)."""
        with self._refresh_lock:
            self.endpoints.update(self.discovery.refresh())

    def _refresh_loop(self) -> None:
        while not self._stopping.wait(self.settings.resolve_interval_s):
            try:
                self.refresh_endpoints()
            except Exception:  # never let a bug end discovery silently
                self.logger.exception("re-resolving Service A's addresses failed")

    def _resolve_failed(self, target: Target, error: str) -> None:
        self.logger.warning(
            "cannot resolve %s for Service A (%s); keeping its last known addresses until it resolves",
            target.host, error,
        )

    def _resolve_recovered(self, target: Target) -> None:
        self.logger.info("%s resolves again for Service A", target.host)

    def close(self) -> None:
        self._stopping.set()
        if self._refresher is not None:
            self._refresher.join(timeout=2)
        self.endpoints.close()

    # --- one call -------------------------------------------------------------------------------

    def echo(self, msg: str, request_id: str | None = None) -> dict[str, str]:
        """A's answer for ``msg`` as ``{"echo": ...}``; raises UpstreamError on any failure."""
        started = perf_counter()
        outcome = "success"
        try:
            query = "/echo?msg=" + quote_plus(msg, safe=_QUERY_SAFE)
            line = len(query) + self._line_frame
            if line > MAX_REQUEST_LINE_BYTES:
                # Percent-encoding can triple a msg: say so as a 414 instead of letting A's 414 become a 502.
                raise UpstreamError(
                    "rejected",
                    f"Encoded for Service A, the request line would be {line} bytes; "
                    f"the limit is {MAX_REQUEST_LINE_BYTES}",
                    status=414, error=MSG_TOO_LONG, counts_against_a=False,
                )
            if not self.bulkhead.try_enter():
                raise UpstreamError(
                    "shed",
                    f"Load shed: Service B already has {self.settings.max_in_flight} calls to Service A "
                    "in flight; try again shortly",
                    counts_against_a=False,
                    retry_after_s=1.0,
                )
            try:
                return self._call(query, request_id)
            finally:
                self.bulkhead.leave()
        except UpstreamError as exc:
            outcome = exc.outcome
            raise
        finally:
            if self.metrics is not None:
                counter, histogram = self._outcome_metrics(outcome)
                count(counter)
                observe(histogram, perf_counter() - started)

    def _outcome_metrics(self, outcome: str) -> tuple[Any, Any]:
        """The call counter and latency histogram children for ``outcome``, looked up once each."""
        children = self._by_outcome.get(outcome)
        if children is None:
            assert self.metrics is not None
            up = self.metrics.upstream
            children = self._by_outcome[outcome] = (up.calls.labels(outcome), up.latency.labels(outcome))
        return children

    def _call(self, query: str, request_id: str | None) -> dict[str, str]:
        self.retry_budget.record_call()
        if self._hedging():
            self.hedge.record_call()
        deadline = Deadline(self.settings.timeout_s, self.clock)
        call = _Call(query, deadline, request_id)

        def retrying(attempt: int, exc: BaseException, wait_s: float) -> None:
            if call.pending is not None and call.pending[1]:
                self.breaker.release_probe()  # the retry may become the probe
            call.pending = None
            self._retrying(attempt, exc, wait_s)

        try:
            return run_with_retries(
                lambda attempt: self._attempt(call, attempt),
                policy=self.retry_policy,
                deadline=deadline,
                budget=self.retry_budget,
                is_retryable=_retryable,
                rng=self.rng,
                on_retry=retrying,
                on_denied=self._retry_denied,
                no_backoff=_immediate,
            )
        finally:
            if call.pending is not None:  # the failure that ended the call: now it is A's
                self.breaker.record_failure(call.pending[0], probe=call.pending[1], sources=call.tried)

    def _attempt(self, call: _Call, attempt: int) -> dict[str, str]:
        try:
            probe = self.breaker.before_call()
        except CircuitOpenError as exc:
            self.logger.warning("call to Service A refused: %s", exc)
            raise UpstreamError(
                "circuit_open", str(exc), counts_against_a=False, retry_after_s=exc.retry_after_s
            ) from None
        try:
            result = self._send(call, attempt)
        except UpstreamError as exc:
            if exc.counts_against_a:
                if exc.retryable and len(self.endpoints) > 1:
                    call.pending = (exc.details, probe)  # judged when the call ends, unless retried
                else:
                    self.breaker.record_failure(exc.details, probe=probe, sources=call.tried)
            elif probe:  # only the probe holds the half-open slot; a straggler must not free it
                self.breaker.release_probe()
            raise
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        self.breaker.record_success(probe=probe)
        return result

    def _pick(self, call: _Call) -> Endpoint:
        endpoint = self.endpoints.pick(call.tried)
        if endpoint is None and self.discovery.needs_resolution and self._resolve_due():
            self.refresh_endpoints()
            endpoint = self.endpoints.pick(call.tried)
        if endpoint is None:
            names = ", ".join(t.host for t in self.targets)
            raise UpstreamError("connection_error", f"Connection error: no address known for {names}",
                                retryable=True)
        call.tried.add(endpoint.key)
        return endpoint

    def _hedging(self) -> bool:
        """Hedging is on and there is a second endpoint to hedge to."""
        return self.settings.hedging and len(self.endpoints) > 1

    def _resolve_due(self) -> bool:
        return self.clock.now() - self.discovery.last_refresh >= ON_DEMAND_RESOLVE_S

    def _send(self, call: _Call, attempt: int) -> dict[str, str]:
        if call.deadline.remaining() <= 0:
            raise UpstreamError("timeout", f"Timeout: no time left of the {self.settings.timeout_s:g}s budget")
        endpoint = self._pick(call)
        if self._hedging():
            return self._send_hedged(endpoint, call, attempt)
        return self._send_one(endpoint, call, attempt)

    def _send_hedged(self, first: Endpoint, call: _Call, attempt: int) -> dict[str, str]:
        """Send to ``first``; if it has not answered after the hedge delay, also to another endpoint.
        The first good answer wins; the other attempt is abandoned and its connection dropped."""
        answers: queue.Queue[tuple[AttemptTrace, dict[str, str] | UpstreamError]] = queue.Queue()
        traces = [self._start_attempt(first, call, attempt, answers, hedge=False)]
        wait_s = min(self.hedge.delay_s(), call.deadline.remaining())
        try:
            trace, answer = answers.get(timeout=wait_s)
        except queue.Empty:
            second = self._hedge_target(call)
            if second is not None:
                self.logger.info(
                    "hedging call to Service A: no answer from %s after %.1fms; also asking %s",
                    first.key, wait_s * 1000, second.key,
                )
                if second.hedges is not None:
                    second.hedges.inc()
                traces.append(self._start_attempt(second, call, attempt, answers, hedge=True))
            trace, answer = self._first_good(answers, len(traces), call.deadline)
        for other in traces:
            if other is not trace:
                other.abandon()
        if isinstance(answer, UpstreamError):
            raise answer
        return answer

    def _hedge_target(self, call: _Call) -> Endpoint | None:
        if self.endpoints.usable_count(call.tried) == 0 or call.deadline.remaining() < 0.005:
            return None
        if not self.hedge.try_spend():
            return None
        endpoint = self.endpoints.pick(call.tried)
        if endpoint is not None:
            call.tried.add(endpoint.key)
        return endpoint

    def _first_good(
        self, answers: queue.Queue[tuple[AttemptTrace, dict[str, str] | UpstreamError]], count: int,
        deadline: Deadline,
    ) -> tuple[AttemptTrace, dict[str, str] | UpstreamError]:
        """The first successful answer of ``count`` racing attempts, else the first failure."""
        failure: tuple[AttemptTrace, dict[str, str] | UpstreamError] | None = None
        for _ in range(count):
            try:
                # Each attempt ends by the deadline; the slack covers its thread's last steps.
                item = answers.get(timeout=deadline.remaining() + 0.5)
            except queue.Empty:
                break
            if not isinstance(item[1], UpstreamError):
                return item
            failure = failure or item
        if failure is not None:
            return failure
        return AttemptTrace(), UpstreamError(
            "timeout", f"Timeout: Service A did not answer within {self.settings.timeout_s:g}s"
        )

    def _start_attempt(
        self, endpoint: Endpoint, call: _Call, attempt: int,
        answers: queue.Queue[tuple[AttemptTrace, dict[str, str] | UpstreamError]], *, hedge: bool,
    ) -> AttemptTrace:
        trace = AttemptTrace()

        def run() -> None:
            try:
                answer: dict[str, str] | UpstreamError = self._send_one(endpoint, call, attempt, trace)
            except UpstreamError as exc:
                answer = exc
            except BaseException as exc:  # a bug: report it as the attempt's failure, not a hang
                answer = UpstreamError("connection_error", f"Connection error: {exc!r}")
            answers.put((trace, answer))

        # In the request's context, so the attempt's log line and client span carry its ids.
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(run,), name="echokit-hedge" if hedge else "echokit-attempt",
                         daemon=True).start()
        return trace

    def _send_one(
        self, endpoint: Endpoint, call: _Call, attempt: int, trace: AttemptTrace | None = None
    ) -> dict[str, str]:
        """One attempt on ``endpoint``: exactly one ``record`` (or ``release``) for it, one log line."""
        remaining = call.deadline.remaining()
        connect_s = min(self.settings.connect_timeout_s, remaining)
        headers = b"%s: %d\r\n%s" % (_TIMEOUT_NAME, int(remaining * 1000), call.id_header)
        span = tracing.outbound(endpoint.echo_url, endpoint.address.ip, endpoint.address.port) \
            if tracing.outbound is not None else None
        if span is not None:
            headers += span.headers
        sent = perf_counter()
        try:
            status, body = endpoint.pool.request(call.query, headers, connect_s, remaining, trace)
        except TransportError as exc:
            if span is not None:
                span.finish(None, exc)
            if trace is not None and trace.abandoned:  # lost a hedge race: slower than another's whole answer
                self.endpoints.record(endpoint, "abandoned", perf_counter() - sent, "losing a hedge race")
                raise UpstreamError("connection_error", "abandoned: another attempt answered first") from None
            raise self._transport_error(endpoint, remaining, attempt, sent, exc, call) from None
        if span is not None:
            span.finish(status)
        elapsed = perf_counter() - sent
        if status != 200:
            raise self._failed(endpoint, remaining, attempt, sent, self._status_error(status))
        echo = _parse_echo(body)
        if echo is None:
            raise self._failed(endpoint, remaining, attempt, sent, UpstreamError(
                "bad_response", "Service A's body is not the expected {\"echo\": ...} JSON",
                status=502, error=BAD_RESPONSE,
            ))
        self.endpoints.record(endpoint, "success", elapsed)
        if self._hedging():
            self.hedge.observe_success(elapsed)
        self.logger.info(
            "outbound GET %s timeout=%.2fs attempt=%d -> 200 success in %.2fms",
            endpoint.echo_url, remaining, attempt, elapsed * 1000,
        )
        return echo

    def _status_error(self, status: int) -> UpstreamError:
        if status == 504:
            # A gives up at the deadline B sent it (X-Request-Timeout-Ms) with a 504, at the same moment
            # B's read would time out: report both the same way. Still retryable (a 504 from a proxy may
            # come early); the retry loop never retries past the deadline.
            return UpstreamError(
                "timeout", f"Timeout: Service A did not answer within {self.settings.timeout_s:g}s", retryable=True,
            )
        if status >= 500:
            return UpstreamError("bad_status", f"Service A answered HTTP {status}",
                                 retryable=status in RETRYABLE_STATUSES)
        return UpstreamError("bad_response", f"Service A answered HTTP {status}", status=502, error=BAD_RESPONSE,
                             counts_against_a=False)

    def _transport_error(
        self, endpoint: Endpoint, remaining: float, attempt: int, sent: float, exc: TransportError, call: _Call,
    ) -> UpstreamError:
        if isinstance(exc, ReadTimeoutError):
            error = UpstreamError("timeout", f"Timeout: Service A did not answer within {self.settings.timeout_s:g}s")
        elif isinstance(exc, NewConnectionError):
            error = self._connection_error(exc, immediate=True, call=call)
        elif isinstance(exc, ConnectTimeoutError):
            timeout_s = min(self.settings.connect_timeout_s, remaining)
            error = UpstreamError(
                "timeout", f"Timeout: could not connect to Service A within {timeout_s:.3g}s", retryable=True,
            )
        elif isinstance(exc, ResponseError):  # not HTTP, or over the size caps: A is broken, not busy
            error = UpstreamError("bad_response", f"Invalid HTTP response from Service A: {exc}", status=502,
                                  error=BAD_RESPONSE)
        else:  # ProtocolError: reset, closed, aborted
            error = self._connection_error(exc, immediate=not exc.sent, call=call)
        # The log line names a timeout as "timeout" and a connection error by its exception type.
        cause = None if error.outcome == "timeout" else exc
        return self._failed(endpoint, remaining, attempt, sent, error, cause)

    def _connection_error(self, exc: BaseException, *, immediate: bool, call: _Call) -> UpstreamError:
        # Nothing reached A: another endpoint can be asked at once, without backoff.
        others = immediate and self.endpoints.usable_count(call.tried) > 0
        return UpstreamError("connection_error", f"Connection error: {exc}", retryable=True, immediate=others)

    def _failed(
        self, endpoint: Endpoint, timeout_s: float, attempt: int, sent: float, error: UpstreamError,
        exc: BaseException | None = None,
    ) -> UpstreamError:
        elapsed = perf_counter() - sent
        kind = type(exc).__name__ if exc is not None else error.outcome
        self.endpoints.record(endpoint, error.outcome, elapsed, error.details)
        self.logger.warning(
            "outbound GET %s timeout=%.2fs attempt=%d -> failed %s after %.2fms: %s",
            endpoint.echo_url, timeout_s, attempt, kind, elapsed * 1000, error.details,
        )
        return error

    def _retrying(self, attempt: int, exc: BaseException, wait_s: float) -> None:
        if self.metrics is not None:
            self.metrics.upstream.retries.inc()
        self.logger.info("retrying call to Service A after attempt %d (%s) in %.1fms", attempt, exc, wait_s * 1000)

    def _retry_denied(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.upstream.retries_denied.inc()
        self.logger.warning("not retrying call to Service A: retry budget spent (%s)", exc)

    def _breaker_changed(self, old: str, new: str, reason: str) -> None:
        log = self.logger.warning if new == "open" else self.logger.info
        log("circuit breaker %s -> %s: %s", old, new, reason)
        if self.metrics is not None:
            self.metrics.set_breaker_state(new)
            self.metrics.upstream.breaker_transitions.labels(new).inc()

    def status(self) -> dict[str, Any]:
        """Breaker, bulkhead, retry budget and every endpoint's state, for ``/ready`` and debugging."""
        info: dict[str, Any] = {
            "circuit_breaker": self.breaker.snapshot(),
            "in_flight_calls": self.bulkhead.in_flight,
            "max_in_flight_calls": self.bulkhead.limit,
            "retry_budget": self.retry_budget.snapshot(),
            "balancer": self.settings.balancer,
            "endpoints": self.endpoints.snapshot(),
        }
        if self._hedging():
            info["hedging"] = self.hedge.snapshot()
        return info


class _Call:
    """One call's state across its attempts: the query, its deadline, the request id's header line,
    the endpoints tried and a failure the breaker has not been told about yet (``pending``:
    details, was-probe)."""

    __slots__ = ("deadline", "id_header", "pending", "query", "tried")

    def __init__(self, query: str, deadline: Deadline, request_id: str | None) -> None:
        self.query = query
        self.deadline = deadline
        # A well-formed id is sent as it is; anything else (this is a public API) is replaced, never
        # written into the request: it could split the header.
        self.id_header = b"" if not request_id else b"%s: %s\r\n" % (
            _REQUEST_ID_NAME, accept_request_id(request_id).encode("ascii"))
        self.tried: set[str] = set()
        self.pending: tuple[str, bool] | None = None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.retryable


def _immediate(exc: BaseException) -> bool:
    return isinstance(exc, UpstreamError) and exc.immediate


def _parse_echo(body: bytes) -> dict[str, str] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("echo"), str):
        return {"echo": data["echo"]}
    return None

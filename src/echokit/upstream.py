"""Service B's call to Service A: one pooled HTTP client behind deadline, retry, breaker and bulkhead.

Usable without Flask: ``EchoClient(settings).echo("hello")`` returns ``{"echo": "hello"}`` or raises
:class:`UpstreamError`, whose ``status`` and ``details`` B sends back to its client.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from time import perf_counter
from typing import Any
from urllib.parse import quote_plus, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from echokit.context import REQUEST_ID_HEADER
from echokit.metrics import Metrics
from echokit.resilience.breaker import BreakerConfig, CircuitBreaker, CircuitOpenError
from echokit.resilience.bulkhead import Bulkhead
from echokit.resilience.clock import SYSTEM_CLOCK, Clock
from echokit.resilience.deadline import TIMEOUT_HEADER, Deadline
from echokit.resilience.retry import RetryBudget, RetryPolicy, run_with_retries
from echokit.settings import MAX_REQUEST_LINE_BYTES, UpstreamSettings

UNAVAILABLE = "Service A unavailable"
BAD_RESPONSE = "Invalid response from Service A"
RETRYABLE_STATUSES = frozenset({502, 503, 504})

# Characters legal in a query value that need no escaping; '&', '=', '+', '#' and '%' are escaped.
_QUERY_SAFE = "/:@!$'()*,;?~"
MSG_TOO_LONG = "'msg' parameter too long"


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

    def __str__(self) -> str:
        return self.details


class EchoClient:
    """Calls A's ``/echo`` with a keep-alive connection pool and B's resilience policies."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        logger: logging.Logger | None = None,
        metrics: Metrics | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.logger = logger or logging.getLogger("service_b")
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        parts = urlsplit(settings.url)
        self.echo_url = f"{settings.url}/echo"
        self._echo_path = f"{parts.path.rstrip('/')}/echo"
        self._pool = urllib3.HTTPConnectionPool(
            parts.hostname or "127.0.0.1",  # settings validation guarantees a host
            parts.port or 80,
            maxsize=settings.max_in_flight,
            block=False,  # never queue for a connection: the bulkhead already bounds concurrency
            retries=False,
        )
        self.bulkhead = Bulkhead(settings.max_in_flight)
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
        )
        if metrics is not None:
            metrics.set_breaker_state(self.breaker.state)

    def close(self) -> None:
        self._pool.close()

    def echo(self, msg: str, request_id: str | None = None) -> dict[str, str]:
        """A's answer for ``msg`` as ``{"echo": ...}``; raises UpstreamError on any failure."""
        started = perf_counter()
        outcome = "success"
        try:
            target = f"{self._echo_path}?msg={quote_plus(msg, safe=_QUERY_SAFE)}"
            line = len(f"GET {target} HTTP/1.1")
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
                self.retry_budget.record_call()
                deadline = Deadline(self.settings.timeout_s, self.clock)
                return run_with_retries(
                    lambda attempt: self._attempt(target, deadline, attempt, request_id),
                    policy=self.retry_policy,
                    deadline=deadline,
                    budget=self.retry_budget,
                    is_retryable=lambda exc: isinstance(exc, UpstreamError) and exc.retryable,
                    rng=self.rng,
                    on_retry=self._retrying,
                    on_denied=self._retry_denied,
                )
            finally:
                self.bulkhead.leave()
        except UpstreamError as exc:
            outcome = exc.outcome
            raise
        finally:
            if self.metrics is not None:
                self.metrics.upstream.calls.labels(outcome).inc()
                self.metrics.upstream.latency.labels(outcome).observe(perf_counter() - started)

    def _attempt(self, target: str, deadline: Deadline, attempt: int, request_id: str | None) -> dict[str, str]:
        try:
            probe = self.breaker.before_call()
        except CircuitOpenError as exc:
            self.logger.warning("call to Service A refused: %s", exc)
            raise UpstreamError(
                "circuit_open", str(exc), counts_against_a=False, retry_after_s=exc.retry_after_s
            ) from None
        try:
            result = self._send(target, deadline, attempt, request_id)
        except UpstreamError as exc:
            if exc.counts_against_a:
                self.breaker.record_failure(exc.details, probe=probe)
            elif probe:  # only the probe holds the half-open slot; a straggler must not free it
                self.breaker.release_probe()
            raise
        except BaseException:
            if probe:
                self.breaker.release_probe()
            raise
        self.breaker.record_success(probe=probe)
        return result

    def _send(self, target: str, deadline: Deadline, attempt: int, request_id: str | None) -> dict[str, str]:
        remaining = deadline.remaining()
        url = self.echo_url
        if remaining <= 0:
            raise UpstreamError("timeout", f"Timeout: no time left of the {self.settings.timeout_s:g}s budget")
        # total= makes the read timeout what is left after connecting: without it a slow connect
        # (a busy A's full accept queue) plus a full read timeout would outlast the deadline.
        timeout = urllib3.Timeout(
            total=remaining, connect=min(self.settings.connect_timeout_s, remaining), read=remaining
        )
        headers = {TIMEOUT_HEADER: deadline.header_ms()}
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        sent = perf_counter()
        try:
            response = self._pool.urlopen(
                "GET", target, headers=headers, timeout=timeout, retries=False, redirect=False,
                preload_content=True, release_conn=True,
            )
        except ReadTimeoutError:
            raise self._failed(url, remaining, attempt, sent, UpstreamError(
                "timeout",
                f"Timeout: Service A did not answer within {self.settings.timeout_s:g}s",
            )) from None
        except NewConnectionError as exc:  # before ConnectTimeoutError: urllib3 makes it a subclass
            raise self._connection_error(url, remaining, attempt, sent, exc) from None
        except ConnectTimeoutError:
            raise self._failed(url, remaining, attempt, sent, UpstreamError(
                "timeout",
                f"Timeout: could not connect to Service A within {timeout.connect_timeout:.3g}s",
                retryable=True,
            )) from None
        except (ProtocolError, HTTPError) as exc:
            raise self._connection_error(url, remaining, attempt, sent, exc) from None
        elapsed_ms = (perf_counter() - sent) * 1000
        if response.status == 504:
            # A gives up at the deadline B sent it (X-Request-Timeout-Ms) with a 504, at the same moment
            # B's read would time out: report both the same way. Still retryable (a 504 from a proxy may
            # come early); the retry loop never retries past the deadline.
            raise self._failed(url, remaining, attempt, sent, UpstreamError(
                "timeout", f"Timeout: Service A did not answer within {self.settings.timeout_s:g}s", retryable=True,
            ))
        if response.status != 200:
            retryable = response.status in RETRYABLE_STATUSES
            error = UpstreamError(
                "bad_status",
                f"Service A answered HTTP {response.status}",
                retryable=retryable,
            ) if response.status >= 500 else UpstreamError(
                "bad_response", f"Service A answered HTTP {response.status}", status=502, error=BAD_RESPONSE,
                counts_against_a=False,
            )
            raise self._failed(url, remaining, attempt, sent, error)
        echo = _parse_echo(response.data)
        if echo is None:
            raise self._failed(url, remaining, attempt, sent, UpstreamError(
                "bad_response", "Service A's body is not the expected {\"echo\": ...} JSON",
                status=502, error=BAD_RESPONSE,
            ))
        self.logger.info(
            "outbound GET %s timeout=%.2fs attempt=%d -> 200 success in %.2fms", url, remaining, attempt, elapsed_ms
        )
        return echo

    def _connection_error(
        self, url: str, timeout_s: float, attempt: int, sent: float, exc: BaseException
    ) -> UpstreamError:
        error = UpstreamError("connection_error", f"Connection error: {_reason(exc)}", retryable=True)
        return self._failed(url, timeout_s, attempt, sent, error, exc)

    def _failed(
        self, url: str, timeout_s: float, attempt: int, sent: float, error: UpstreamError,
        exc: BaseException | None = None,
    ) -> UpstreamError:
        kind = type(exc).__name__ if exc is not None else error.outcome
        self.logger.warning(
            "outbound GET %s timeout=%.2fs attempt=%d -> failed %s after %.2fms: %s",
            url, timeout_s, attempt, kind, (perf_counter() - sent) * 1000, error.details,
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
        """Breaker, bulkhead and retry-budget state, for ``/ready`` and debugging."""
        return {
            "circuit_breaker": self.breaker.snapshot(),
            "in_flight_calls": self.bulkhead.in_flight,
            "max_in_flight_calls": self.bulkhead.limit,
            "retry_budget": self.retry_budget.snapshot(),
        }


def _reason(exc: BaseException) -> str:
    """The useful part of a urllib3 error: 'Connection refused', not the pool's repr."""
    reason = getattr(exc, "reason", None) or (exc.args[1] if len(exc.args) > 1 else None) or exc
    text = str(reason)
    marker = ": Failed to establish a new connection: "
    if marker in text:
        text = "Failed to establish a new connection: " + text.split(marker, 1)[1]
    return text


def _parse_echo(body: bytes) -> dict[str, str] | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("echo"), str):
        return {"echo": data["echo"]}
    return None

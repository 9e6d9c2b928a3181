"""Settings for both services: read from the environment in one place, validated at start-up.

Every variable either service reads is declared once in ``ENV_VARS`` (name, default, meaning);
the README table, the deployment manifests and their consistency tests are checked against it.
Defaults are the design document's values: A on 127.0.0.1:8080, B on 127.0.0.1:8081, 2 s budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from echokit.admission import AdmissionSettings

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value the services cannot run with; the message is one line."""


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, default (as text) and what it means."""

    name: str
    default: str
    help: str
    services: str  # "A", "B" or "A,B"


def _declare(*variables: EnvVar) -> dict[str, EnvVar]:
    return {v.name: v for v in variables}


ENV_VARS: dict[str, EnvVar] = _declare(
    EnvVar("SERVICE_A_HOST", "127.0.0.1", "Address Service A binds to.", "A"),
    EnvVar("SERVICE_A_PORT", "8080", "Port Service A listens on.", "A"),
    EnvVar("SERVICE_B_HOST", "127.0.0.1", "Address Service B binds to.", "B"),
    EnvVar("SERVICE_B_PORT", "8081", "Port Service B listens on.", "B"),
    EnvVar(
        "SERVICE_A_URL",
        "http://127.0.0.1:${SERVICE_A_PORT}",
        "Base URL B calls; the only address B ever sends requests to.",
        "B",
    ),
    EnvVar("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.", "A,B"),
    EnvVar("LOG_FORMAT", "text", "text (the document's format) or json (one object per line).", "A,B"),
    EnvVar("LOG_PROBES", "true", "Log /health, /ready and /metrics requests too.", "A,B"),
    EnvVar("MAX_MSG_BYTES", "4096", "Longest accepted msg, in UTF-8 bytes; longer gets 414.", "A,B"),
    EnvVar("DRAIN_DELAY_SECONDS", "0", "On SIGTERM, time /ready answers 503 before the listener closes.", "A,B"),
    EnvVar("DRAIN_TIMEOUT_SECONDS", "10", "On SIGTERM, longest wait for in-flight requests to finish.", "A,B"),
    EnvVar("UPSTREAM_TIMEOUT_SECONDS", "2", "Deadline for one /call-echo, retries included.", "B"),
    EnvVar("UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0.5", "Longest wait for a TCP connection to A.", "B"),
    EnvVar("UPSTREAM_MAX_IN_FLIGHT", "256", "Calls to A in flight per process; more are shed (503).", "B"),
    EnvVar("RETRY_ATTEMPTS", "3", "Attempts per call, first included; 1 switches retries off.", "B"),
    EnvVar("RETRY_BACKOFF_INITIAL_MS", "25", "Backoff ceiling before the first retry (full jitter).", "B"),
    EnvVar("RETRY_BACKOFF_MAX_MS", "250", "Largest backoff ceiling.", "B"),
    EnvVar("RETRY_BUDGET_RATIO", "0.2", "Retries allowed as a share of recent calls.", "B"),
    EnvVar("RETRY_BUDGET_MIN_RETRIES", "3", "Retries always allowed per budget window.", "B"),
    EnvVar("RETRY_BUDGET_WINDOW_SECONDS", "10", "Window the retry budget counts over.", "B"),
    EnvVar("BREAKER_FAILURE_THRESHOLD", "5", "Consecutive failures that open the circuit.", "B"),
    EnvVar("BREAKER_FAILURE_RATE", "0.5", "Failure share in the window that opens the circuit.", "B"),
    EnvVar("BREAKER_MIN_CALLS", "20", "Calls in the window before the failure rate counts.", "B"),
    EnvVar("BREAKER_WINDOW_SECONDS", "10", "Window for the failure rate.", "B"),
    EnvVar("BREAKER_RESET_SECONDS", "3", "Time open before one probe call is let through.", "B"),
    EnvVar("ADMISSION_ENABLED", "true", "Adaptive admission of /call-echo (false: only UPSTREAM_MAX_IN_FLIGHT).", "B"),
    EnvVar("ADMISSION_INITIAL_LIMIT", "32", "Concurrency limit per process at start; it adapts from there.", "B"),
    EnvVar("ADMISSION_MIN_LIMIT", "16", "Floor of the adaptive concurrency limit, per process.", "B"),
    EnvVar("ADMISSION_MAX_LIMIT", "256",
           "Cap of the adaptive limit per process (UPSTREAM_MAX_IN_FLIGHT caps it too).", "B"),
    EnvVar("ADMISSION_QUEUE_TARGET_MS", "100", "Queue time (since the request was read) above which CoDel sheds.", "B"),
    EnvVar("ADMISSION_QUEUE_INTERVAL_MS", "200", "How long queue time stays above the target before shedding.", "B"),
    EnvVar("ADMISSION_LOG_CHANGE_SHARE", "0.5", "Log the limit when it has moved by more than this share.", "B"),
    EnvVar("WEB_CONCURRENCY", "2", "gunicorn worker processes (production mode only).", "A,B"),
    EnvVar("WORKER_CONNECTIONS", "1000", "Concurrent connections per gunicorn worker (production mode).", "A,B"),
    EnvVar("FAULT_DELAY_MS", "0", "Fault injection: delay every /echo by this much (0 = off).", "A"),
    EnvVar("FAULT_DELAY_JITTER_MS", "0", "Fault injection: add a random 0..N ms to the delay.", "A"),
    EnvVar("FAULT_ERROR_RATE", "0", "Fault injection: share of /echo answered with an error.", "A"),
    EnvVar("FAULT_ERROR_STATUS", "503", "Fault injection: status of injected errors (500-599).", "A"),
)

# The longest request line production A accepts (gunicorn's limit_request_line, at its maximum);
# B checks what it would send to A against it.
MAX_REQUEST_LINE_BYTES = 8190
MAX_FAULT_DELAY_MS = 60_000  # the cap: no setting can make A sleep longer than this per request
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


class _Reader:
    """Reads declared variables from a mapping, turning bad values into one-line errors."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def raw(self, name: str) -> str:
        var = ENV_VARS[name]
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return var.default
        return value.strip()

    def _parse(self, name: str, convert: Callable[[str], T], what: str) -> T:
        text = self.raw(name)
        try:
            return convert(text)
        except (ValueError, OverflowError):
            raise SettingsError(f"{name} must be {what}, got {text!r}") from None

    def integer(self, name: str, low: int, high: int) -> int:
        value = self._parse(name, int, f"a whole number from {low} to {high}")
        if not low <= value <= high:
            raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {value}")
        return value

    def number(self, name: str, low: float, high: float) -> float:
        value = self._parse(name, float, f"a number from {low:g} to {high:g}")
        if not low <= value <= high:  # also rejects nan
            raise SettingsError(f"{name} must be a number from {low:g} to {high:g}, got {value:g}")
        return value

    def flag(self, name: str) -> bool:
        text = self.raw(name).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {text!r}")

    def choice(self, name: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
        text = self.raw(name)
        text = text.upper() if upper else text.lower()
        if text not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {text!r}")
        return text


@dataclass(frozen=True)
class ServerSettings:
    """What every service process needs: where to listen, how to log, limits and draining."""

    service: str
    host: str
    port: int
    log_level: str
    log_format: str
    log_probes: bool
    max_msg_bytes: int
    drain_delay_s: float
    drain_timeout_s: float

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FaultSettings:
    """Service A's opt-in fault injection, fixed at start-up; all zero means off."""

    delay_ms: int = 0
    delay_jitter_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 503

    @property
    def enabled(self) -> bool:
        return self.delay_ms > 0 or self.delay_jitter_ms > 0 or self.error_rate > 0


@dataclass(frozen=True)
class UpstreamSettings:
    """How B calls A: address, deadline, bulkhead, retry policy and circuit breaker."""

    url: str
    timeout_s: float = 2.0
    connect_timeout_s: float = 0.5
    max_in_flight: int = 256
    retry_attempts: int = 3
    retry_backoff_initial_s: float = 0.025
    retry_backoff_max_s: float = 0.25
    retry_budget_ratio: float = 0.2
    retry_budget_min_retries: int = 3
    retry_budget_window_s: float = 10.0
    breaker_failure_threshold: int = 5
    breaker_failure_rate: float = 0.5
    breaker_min_calls: int = 20
    breaker_window_s: float = 10.0
    breaker_reset_s: float = 3.0


@dataclass(frozen=True)
class ServiceASettings:
    server: ServerSettings
    faults: FaultSettings


@dataclass(frozen=True)
class ServiceBSettings:
    server: ServerSettings
    upstream: UpstreamSettings
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)


def _server(read: _Reader, service: str) -> ServerSettings:
    prefix = "SERVICE_A" if service == "service_a" else "SERVICE_B"
    host = read.raw(f"{prefix}_HOST")
    if any(c.isspace() for c in host) or "/" in host:
        raise SettingsError(f"{prefix}_HOST must be a host name or IP address, got {host!r}")
    return ServerSettings(
        service=service,
        host=host,
        port=read.integer(f"{prefix}_PORT", 1, 65535),
        log_level=read.choice("LOG_LEVEL", LOG_LEVELS, upper=True),
        log_format=read.choice("LOG_FORMAT", LOG_FORMATS),
        log_probes=read.flag("LOG_PROBES"),
        max_msg_bytes=read.integer("MAX_MSG_BYTES", 1, 1_000_000),
        drain_delay_s=read.number("DRAIN_DELAY_SECONDS", 0, 300),
        drain_timeout_s=read.number("DRAIN_TIMEOUT_SECONDS", 0, 600),
    )


def service_a_settings(environ: Mapping[str, str] | None = None) -> ServiceASettings:
    """Service A's settings from ``environ`` (default: the process environment)."""
    read = _Reader(os.environ if environ is None else environ)
    faults = FaultSettings(
        delay_ms=read.integer("FAULT_DELAY_MS", 0, MAX_FAULT_DELAY_MS),
        delay_jitter_ms=read.integer("FAULT_DELAY_JITTER_MS", 0, MAX_FAULT_DELAY_MS),
        error_rate=read.number("FAULT_ERROR_RATE", 0, 1),
        error_status=read.integer("FAULT_ERROR_STATUS", 500, 599),
    )
    if faults.delay_ms + faults.delay_jitter_ms > MAX_FAULT_DELAY_MS:
        raise SettingsError(
            f"FAULT_DELAY_MS + FAULT_DELAY_JITTER_MS must be at most {MAX_FAULT_DELAY_MS}, "
            f"got {faults.delay_ms + faults.delay_jitter_ms}"
        )
    return ServiceASettings(server=_server(read, "service_a"), faults=faults)


def _upstream_url(read: _Reader) -> str:
    text = read.raw("SERVICE_A_URL")
    if "${SERVICE_A_PORT}" in text:  # the default: A's own port setting, validated as such
        text = text.replace("${SERVICE_A_PORT}", str(read.integer("SERVICE_A_PORT", 1, 65535)))
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1 or parts.query or parts.fragment:
        raise SettingsError(f"SERVICE_A_URL must be an http://host[:port] URL, got {text!r}")
    return text.rstrip("/")


def service_b_settings(environ: Mapping[str, str] | None = None) -> ServiceBSettings:
    """Service B's settings from ``environ`` (default: the process environment)."""
    read = _Reader(os.environ if environ is None else environ)
    upstream = UpstreamSettings(
        url=_upstream_url(read),
        timeout_s=read.number("UPSTREAM_TIMEOUT_SECONDS", 0.01, 600),
        connect_timeout_s=read.number("UPSTREAM_CONNECT_TIMEOUT_SECONDS", 0.001, 600),
        max_in_flight=read.integer("UPSTREAM_MAX_IN_FLIGHT", 1, 100_000),
        retry_attempts=read.integer("RETRY_ATTEMPTS", 1, 10),
        retry_backoff_initial_s=read.integer("RETRY_BACKOFF_INITIAL_MS", 0, 60_000) / 1000,
        retry_backoff_max_s=read.integer("RETRY_BACKOFF_MAX_MS", 0, 60_000) / 1000,
        retry_budget_ratio=read.number("RETRY_BUDGET_RATIO", 0, 1),
        retry_budget_min_retries=read.integer("RETRY_BUDGET_MIN_RETRIES", 0, 1_000_000),
        retry_budget_window_s=read.number("RETRY_BUDGET_WINDOW_SECONDS", 0.1, 3600),
        breaker_failure_threshold=read.integer("BREAKER_FAILURE_THRESHOLD", 1, 1_000_000),
        breaker_failure_rate=read.number("BREAKER_FAILURE_RATE", 0.01, 1),
        breaker_min_calls=read.integer("BREAKER_MIN_CALLS", 1, 1_000_000),
        breaker_window_s=read.number("BREAKER_WINDOW_SECONDS", 0.1, 3600),
        breaker_reset_s=read.number("BREAKER_RESET_SECONDS", 0.01, 3600),
    )
    return ServiceBSettings(server=_server(read, "service_b"), upstream=upstream, admission=_admission(read, upstream))


def _admission(read: _Reader, upstream: UpstreamSettings) -> AdmissionSettings:
    floor = read.integer("ADMISSION_MIN_LIMIT", 1, 100_000)
    cap = read.integer("ADMISSION_MAX_LIMIT", 1, 100_000)
    if floor > cap:
        raise SettingsError(f"ADMISSION_MIN_LIMIT must be at most ADMISSION_MAX_LIMIT ({cap}), got {floor}")
    cap = min(cap, upstream.max_in_flight)  # the static in-flight cap stays the hard cap
    floor = min(floor, cap)
    return AdmissionSettings(
        enabled=read.flag("ADMISSION_ENABLED"),
        initial_limit=min(cap, max(floor, read.integer("ADMISSION_INITIAL_LIMIT", 1, 100_000))),
        min_limit=floor,
        max_limit=cap,
        queue_target_s=read.integer("ADMISSION_QUEUE_TARGET_MS", 1, 600_000) / 1000,
        queue_interval_s=read.integer("ADMISSION_QUEUE_INTERVAL_MS", 1, 600_000) / 1000,
        log_change_share=read.number("ADMISSION_LOG_CHANGE_SHARE", 0.01, 100),
    )


@dataclass(frozen=True)
class WorkerSettings:
    """gunicorn's process model, production mode only."""

    workers: int = 2
    worker_connections: int = 1000


def worker_settings(environ: Mapping[str, str] | None = None) -> WorkerSettings:
    read = _Reader(os.environ if environ is None else environ)
    return WorkerSettings(
        workers=read.integer("WEB_CONCURRENCY", 1, 64),
        worker_connections=read.integer("WORKER_CONNECTIONS", 1, 100_000),
    )


def settings_table() -> list[dict[str, Any]]:
    """Every variable as a row (name, default, services, meaning), for docs and tests."""
    return [
        {"name": v.name, "default": v.default, "services": v.services, "help": v.help}
        for v in ENV_VARS.values()
    ]


def markdown_table() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| variable | read by | default | meaning |", "| --- | --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.services} | `{v.default}` | {v.help} |" for v in ENV_VARS.values()]
    return "\n".join(rows)


if __name__ == "__main__":  # python -m echokit.settings: print the table for the README
    print(markdown_table())

"""Settings for both services: read from the environment in one place, validated at start-up.

Every variable either service reads is declared once in ``ENV_VARS`` (name, default, meaning,
parser, range and unit), and the settings objects are built from those declarations; this is
the only module that reads ``os.environ`` (gunicorn.conf.py hands it the same mapping).
docs/configuration.md, the deployment manifests and their consistency tests are checked against it.
Defaults are the design document's values: A on 127.0.0.1:8080, B on 127.0.0.1:8081, 2 s budget.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from echokit.admission import AdmissionSettings

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a value the services cannot run with; the message is one line."""


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: name, default (as text), meaning, who reads it, and how it parses.

    ``kind`` is how the text becomes a value: ``int`` and ``number`` within ``low``..``high`` (in
    ``unit``), ``flag`` (true/false), ``choice`` (one of ``choices``), ``text`` (free text, checked by
    its loader where it must be). Each loader reads a variable through its declaration, so the
    range in the docs is the range enforced.
    """

    name: str
    default: str
    help: str
    services: str  # "A", "B" or "A,B"
    kind: str = "text"
    low: float | None = None
    high: float | None = None
    unit: str = ""
    choices: tuple[str, ...] = ()

    def allowed(self) -> str:
        """The accepted values, for the docs: ``1..65535``, ``text, json``, ``true/false``."""
        if self.kind in ("int", "number") and self.low is not None and self.high is not None:
            return f"{self.low:g}..{self.high:g}"
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "flag":
            return "true/false"
        return ""


def _declare(*variables: EnvVar) -> dict[str, EnvVar]:
    return {v.name: v for v in variables}


def _int(name: str, default: str, help: str, services: str, low: int, high: int, unit: str = "") -> EnvVar:
    return EnvVar(name, default, help, services, "int", low, high, unit)


def _number(name: str, default: str, help: str, services: str, low: float, high: float, unit: str = "") -> EnvVar:
    return EnvVar(name, default, help, services, "number", low, high, unit)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
BALANCERS = ("p2c_ewma", "round_robin")
TRACE_EXPORTERS = ("console", "otlp")
OTLP_PROTOCOLS = ("http/protobuf",)  # the only OTLP exporter requirements-otel.txt installs
MAX_FAULT_DELAY_MS = 60_000  # the cap: no setting can make A sleep longer than this per request
# The longest request line production A accepts (gunicorn's limit_request_line, at its maximum);
# B checks what it would send to A against it.
MAX_REQUEST_LINE_BYTES = 8190

ENV_VARS: dict[str, EnvVar] = _declare(
    EnvVar("SERVICE_A_HOST", "127.0.0.1", "Address Service A binds to.", "A"),
    _int("SERVICE_A_PORT", "8080", "Port Service A listens on.", "A", 1, 65535),
    EnvVar("SERVICE_B_HOST", "127.0.0.1", "Address Service B binds to.", "B"),
    _int("SERVICE_B_PORT", "8081", "Port Service B listens on.", "B", 1, 65535),
    EnvVar(
        "SERVICE_A_URL",
        "http://127.0.0.1:${SERVICE_A_PORT}",
        "Base URL(s) B calls (http://host[:port]), comma-separated; every address a name resolves to is an "
        "endpoint. The only addresses B ever sends requests to.",
        "B",
    ),
    _number("SERVICE_A_RESOLVE_SECONDS", "5", "Re-resolve SERVICE_A_URL's host names this often (0 = once).", "B",
            0, 3600, "s"),
    EnvVar("UPSTREAM_BALANCER", "p2c_ewma", "p2c_ewma (power of two choices, peak EWMA) or round_robin.", "B",
           "choice", choices=BALANCERS),
    EnvVar("UPSTREAM_HEDGE_DELAY_MS", "adaptive",
           "Hedge a call unanswered after this long: adaptive (recent p95), 1..600000 ms, or off.", "B"),
    _number("UPSTREAM_HEDGE_BUDGET_RATIO", "0.1", "Hedges allowed as a share of recent calls.", "B", 0, 1),
    _int("OUTLIER_CONSECUTIVE_FAILURES", "5", "Consecutive failures that eject one endpoint of A.", "B",
         1, 1_000_000),
    _number("OUTLIER_BASE_EJECTION_SECONDS", "5", "First ejection time; each repeat adds as much.", "B",
            0.01, 3600, "s"),
    _number("OUTLIER_MAX_EJECTION_SECONDS", "60", "Longest ejection time.", "B", 0.01, 86400, "s"),
    _int("OUTLIER_MAX_EJECTED_PERCENT", "50", "Most endpoints ejected at once (at least 1, never all).", "B",
         0, 100, "%"),
    EnvVar("LOG_LEVEL", "INFO", "Lowest level logged.", "A,B", "choice", choices=LOG_LEVELS),
    EnvVar("LOG_FORMAT", "text", "text (the document's format) or json (one object per line).", "A,B", "choice",
           choices=LOG_FORMATS),
    EnvVar("LOG_PROBES", "true", "Log /health, /ready and /metrics requests too.", "A,B", "flag"),
    _int("MAX_MSG_BYTES", "4096", "Longest accepted msg (UTF-8); longer gets 414.", "A,B", 1, 1_000_000, "bytes"),
    _number("DRAIN_DELAY_SECONDS", "0", "On SIGTERM, time /ready answers 503 before the listener closes.", "A,B",
            0, 300, "s"),
    _number("DRAIN_TIMEOUT_SECONDS", "10", "On SIGTERM, longest wait for in-flight requests to finish.", "A,B",
            0, 600, "s"),
    _number("UPSTREAM_TIMEOUT_SECONDS", "2", "Deadline for one /call-echo, retries included.", "B", 0.01, 600, "s"),
    _number("UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0.5", "Longest wait for a TCP connection to A.", "B",
            0.001, 600, "s"),
    _int("UPSTREAM_MAX_IN_FLIGHT", "256", "Calls to A in flight per process; more are shed (503).", "B",
         1, 100_000, "calls"),
    _int("RETRY_ATTEMPTS", "3", "Attempts per call, first included; 1 switches retries off.", "B", 1, 10),
    _int("RETRY_BACKOFF_INITIAL_MS", "25", "Backoff ceiling before the first retry (full jitter).", "B",
         0, 60_000, "ms"),
    _int("RETRY_BACKOFF_MAX_MS", "250", "Largest backoff ceiling.", "B", 0, 60_000, "ms"),
    _number("RETRY_BUDGET_RATIO", "0.2", "Retries allowed as a share of recent calls.", "B", 0, 1),
    _int("RETRY_BUDGET_MIN_RETRIES", "3", "Retries always allowed per budget window.", "B", 0, 1_000_000),
    _number("RETRY_BUDGET_WINDOW_SECONDS", "10", "Window the retry budget counts over.", "B", 0.1, 3600, "s"),
    _int("BREAKER_FAILURE_THRESHOLD", "5",
         "Consecutive failed calls that open the circuit (on two endpoints or more, when A has several).",
         "B", 1, 1_000_000),
    _number("BREAKER_FAILURE_RATE", "0.5", "Failure share in the window that opens the circuit.", "B", 0.01, 1),
    _int("BREAKER_MIN_CALLS", "20", "Calls in the window before the failure rate counts.", "B", 1, 1_000_000),
    _number("BREAKER_WINDOW_SECONDS", "10", "Window for the failure rate.", "B", 0.1, 3600, "s"),
    _number("BREAKER_RESET_SECONDS", "3", "Time open before one probe call is let through.", "B", 0.01, 3600, "s"),
    EnvVar("ADMISSION_ENABLED", "true", "Adaptive admission of /call-echo (false: only UPSTREAM_MAX_IN_FLIGHT).",
           "B", "flag"),
    _int("ADMISSION_INITIAL_LIMIT", "64", "Concurrency limit per process at start; it adapts from there.", "B",
         1, 100_000, "requests"),
    _int("ADMISSION_MIN_LIMIT", "64", "Floor of the adaptive concurrency limit, per process.", "B",
         1, 100_000, "requests"),
    _int("ADMISSION_MAX_LIMIT", "256", "Cap of the adaptive limit per process (UPSTREAM_MAX_IN_FLIGHT caps it too).",
         "B", 1, 100_000, "requests"),
    _int("ADMISSION_QUEUE_TARGET_MS", "100", "Queue time (since the request was read) above which CoDel sheds.", "B",
         1, 600_000, "ms"),
    _int("ADMISSION_QUEUE_INTERVAL_MS", "200", "How long queue time stays above the target before shedding.", "B",
         1, 600_000, "ms"),
    _int("ADMISSION_QUEUE_WAIT_MS", "500", "Longest a request over the limit waits for a slot before a 503 "
         "(0: refused at once); the queue holds as many as the recent latency says get one in time.", "B",
         0, 600_000, "ms"),
    _int("ADMISSION_QUEUE_MAX", "1024", "Most requests waiting for a slot at once, per process.", "B",
         0, 100_000, "requests"),
    _number("ADMISSION_LOG_CHANGE_SHARE", "0.5", "Log the limit when it has moved by more than this share.", "B",
            0.01, 100),
    _int("WEB_CONCURRENCY", "2", "gunicorn worker processes (production mode only).", "A,B", 1, 64, "processes"),
    _int("WORKER_CONNECTIONS", "1000", "Concurrent connections per gunicorn worker (production mode); when all are "
         "taken and a new client waits, the longest-idle keep-alive ones are closed for it.", "A,B",
         1, 100_000, "connections"),
    _int("FAULT_DELAY_MS", "0", "Fault injection: delay every /echo by this much (0 = off).", "A",
         0, MAX_FAULT_DELAY_MS, "ms"),
    _int("FAULT_DELAY_JITTER_MS", "0", "Fault injection: add a random 0..N ms to the delay.", "A",
         0, MAX_FAULT_DELAY_MS, "ms"),
    _number("FAULT_ERROR_RATE", "0", "Fault injection: share of /echo answered with an error.", "A", 0, 1),
    _int("FAULT_ERROR_STATUS", "503", "Fault injection: status of injected errors.", "A", 500, 599),
    EnvVar(
        "PROMETHEUS_MULTIPROC_DIR", "",
        "Directory where several worker processes keep their metrics; unset, gunicorn makes a fresh one per run.",
        "A,B",
    ),
    EnvVar(
        "OTEL_TRACES_EXPORTER", "none",
        "Tracing: console, otlp (a comma list) or none; off unless one exporter is named.", "A,B",
    ),
    EnvVar("OTEL_SDK_DISABLED", "false", "Tracing: true switches it off whatever the exporter says.", "A,B", "flag"),
    EnvVar("OTEL_SERVICE_NAME", "", "Tracing: the service.name of the spans (default service_a / service_b).", "A,B"),
    EnvVar("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "Tracing: the OTLP protocol.", "A,B", "choice",
           choices=OTLP_PROTOCOLS),
    EnvVar("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "", "Tracing: the OTLP protocol for traces (default: the above).",
           "A,B"),
)


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

    def _range(self, name: str, low: float | None, high: float | None) -> tuple[float, float]:
        var = ENV_VARS[name]
        low = var.low if low is None else low
        high = var.high if high is None else high
        if low is None or high is None:
            raise TypeError(f"{name} is declared without a range")
        return low, high

    def integer(self, name: str, low: int | None = None, high: int | None = None) -> int:
        """A whole number within the declared range (or ``low``..``high`` when given)."""
        lo, hi = self._range(name, low, high)
        what = f"a whole number from {lo:g} to {hi:g}"
        value = self._parse(name, int, what)
        if not lo <= value <= hi:
            raise SettingsError(f"{name} must be {what}, got {value}")
        return value

    def number(self, name: str, low: float | None = None, high: float | None = None) -> float:
        """A number within the declared range (or ``low``..``high`` when given); never nan."""
        lo, hi = self._range(name, low, high)
        value = self._parse(name, float, f"a number from {lo:g} to {hi:g}")
        if not lo <= value <= hi:  # also rejects nan
            raise SettingsError(f"{name} must be a number from {lo:g} to {hi:g}, got {value:g}")
        return value

    def value(self, name: str) -> Any:
        """The variable parsed the way its declaration says (kind, range, choices)."""
        kind = ENV_VARS[name].kind
        if kind == "int":
            return self.integer(name)
        if kind == "number":
            return self.number(name)
        if kind == "flag":
            return self.flag(name)
        if kind == "choice":
            return self.choice(name)
        return self.raw(name)

    def fields(self, variables: Mapping[str, str]) -> dict[str, Any]:
        """Keyword arguments for a settings class: each field's value read from its variable.

        A field in seconds (``*_s``) read from a variable in milliseconds is converted.
        """
        values = {}
        for field, name in variables.items():
            value = self.value(name)
            values[field] = value / 1000 if field.endswith("_s") and ENV_VARS[name].unit == "ms" else value
        return values

    def flag(self, name: str) -> bool:
        text = self.raw(name).lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name} must be true or false, got {text!r}")

    def choice(self, name: str, choices: tuple[str, ...] | None = None, *, upper: bool = False) -> str:
        """One of the declared choices (or ``choices``), compared in their case."""
        allowed = choices or ENV_VARS[name].choices
        text = self.raw(name)
        text = text.upper() if upper or allowed[0].isupper() else text.lower()
        if text not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, got {text!r}")
        return text


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry tracing, from the standard ``OTEL_*`` variables; off unless an exporter is named.

    The SDK reads its own further variables (sampler, batch sizes, the OTLP endpoint) itself.
    """

    exporters: tuple[str, ...]
    disabled: bool
    service_name: str | None
    otlp_protocol: str

    @property
    def enabled(self) -> bool:
        return bool(self.exporters) and not self.disabled


def _tracing(read: _Reader) -> TracingSettings:
    names = [n.strip().lower() for n in read.raw("OTEL_TRACES_EXPORTER").split(",") if n.strip()]
    exporters = tuple(dict.fromkeys(n for n in names if n != "none"))  # "none,none" is no exporter at all
    unknown = [n for n in exporters if n not in TRACE_EXPORTERS]
    if unknown:
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be console, otlp or none, got {unknown[0]!r}")
    protocol = read.choice("OTEL_EXPORTER_OTLP_PROTOCOL")
    traces_protocol = read.raw("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or protocol
    if traces_protocol not in OTLP_PROTOCOLS:
        raise SettingsError(
            f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL must be one of {', '.join(OTLP_PROTOCOLS)} "
            f"(the only OTLP protocol installed), got {traces_protocol!r}"
        )
    return TracingSettings(
        exporters=exporters,
        disabled=read.flag("OTEL_SDK_DISABLED"),
        service_name=read.raw("OTEL_SERVICE_NAME") or None,
        otlp_protocol=traces_protocol,
    )


@dataclass(frozen=True)
class ServerSettings:
    """What every service process needs: where to listen, how to log, limits, draining, metrics, tracing."""

    service: str
    host: str
    port: int
    log_level: str
    log_format: str
    log_probes: bool
    max_msg_bytes: int
    drain_delay_s: float
    drain_timeout_s: float
    metrics_dir: str | None  # PROMETHEUS_MULTIPROC_DIR: several worker processes share metrics there
    tracing: TracingSettings

    @property
    def bind(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class FaultSettings:
    """Service A's opt-in fault injection, fixed at start-up; all zero means off."""

    delay_ms: int
    delay_jitter_ms: int
    error_rate: float
    error_status: int

    @property
    def enabled(self) -> bool:
        return self.delay_ms > 0 or self.delay_jitter_ms > 0 or self.error_rate > 0


@dataclass(frozen=True)
class UpstreamSettings:
    """How B calls A: addresses, balancing, deadline, bulkhead, retries, breaker, ejection, hedging.

    ``url`` is one base URL or several, comma-separated (``urls`` splits them).

    No defaults here: they are declared once, in ``ENV_VARS``; ``service_b_settings({...}).upstream``
    gives the default settings with a few changed.
    """

    url: str
    timeout_s: float
    connect_timeout_s: float
    max_in_flight: int
    retry_attempts: int
    retry_backoff_initial_s: float
    retry_backoff_max_s: float
    retry_budget_ratio: float
    retry_budget_min_retries: int
    retry_budget_window_s: float
    breaker_failure_threshold: int
    breaker_failure_rate: float
    breaker_min_calls: int
    breaker_window_s: float
    breaker_reset_s: float
    resolve_interval_s: float
    balancer: str
    hedging: bool
    hedge_delay_s: float | None  # None: adaptive (recent p95 of successful calls)
    hedge_budget_ratio: float
    outlier_consecutive_failures: int
    outlier_base_ejection_s: float
    outlier_max_ejection_s: float
    outlier_max_ejected_percent: int

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(u for u in self.url.split(",") if u)


@dataclass(frozen=True)
class ServiceASettings:
    server: ServerSettings
    faults: FaultSettings


@dataclass(frozen=True)
class ServiceBSettings:
    server: ServerSettings
    upstream: UpstreamSettings
    admission: AdmissionSettings


@dataclass(frozen=True)
class WorkerSettings:
    """gunicorn's process model, production mode only."""

    workers: int
    worker_connections: int


# Each settings field and the variable it is read from (ports, hosts and URLs need more than a parser).
_SERVER_FIELDS = {
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "log_probes": "LOG_PROBES",
    "max_msg_bytes": "MAX_MSG_BYTES",
    "drain_delay_s": "DRAIN_DELAY_SECONDS",
    "drain_timeout_s": "DRAIN_TIMEOUT_SECONDS",
}
_FAULT_FIELDS = {
    "delay_ms": "FAULT_DELAY_MS",
    "delay_jitter_ms": "FAULT_DELAY_JITTER_MS",
    "error_rate": "FAULT_ERROR_RATE",
    "error_status": "FAULT_ERROR_STATUS",
}
_UPSTREAM_FIELDS = {
    "timeout_s": "UPSTREAM_TIMEOUT_SECONDS",
    "connect_timeout_s": "UPSTREAM_CONNECT_TIMEOUT_SECONDS",
    "max_in_flight": "UPSTREAM_MAX_IN_FLIGHT",
    "retry_attempts": "RETRY_ATTEMPTS",
    "retry_backoff_initial_s": "RETRY_BACKOFF_INITIAL_MS",
    "retry_backoff_max_s": "RETRY_BACKOFF_MAX_MS",
    "retry_budget_ratio": "RETRY_BUDGET_RATIO",
    "retry_budget_min_retries": "RETRY_BUDGET_MIN_RETRIES",
    "retry_budget_window_s": "RETRY_BUDGET_WINDOW_SECONDS",
    "breaker_failure_threshold": "BREAKER_FAILURE_THRESHOLD",
    "breaker_failure_rate": "BREAKER_FAILURE_RATE",
    "breaker_min_calls": "BREAKER_MIN_CALLS",
    "breaker_window_s": "BREAKER_WINDOW_SECONDS",
    "breaker_reset_s": "BREAKER_RESET_SECONDS",
    "resolve_interval_s": "SERVICE_A_RESOLVE_SECONDS",
    "balancer": "UPSTREAM_BALANCER",
    "hedge_budget_ratio": "UPSTREAM_HEDGE_BUDGET_RATIO",
    "outlier_consecutive_failures": "OUTLIER_CONSECUTIVE_FAILURES",
    "outlier_base_ejection_s": "OUTLIER_BASE_EJECTION_SECONDS",
    "outlier_max_ejection_s": "OUTLIER_MAX_EJECTION_SECONDS",
    "outlier_max_ejected_percent": "OUTLIER_MAX_EJECTED_PERCENT",
}
_WORKER_FIELDS = {"workers": "WEB_CONCURRENCY", "worker_connections": "WORKER_CONNECTIONS"}


def _reader(environ: Mapping[str, str] | None) -> _Reader:
    # The one place the process environment is read.
    return _Reader(os.environ if environ is None else environ)


def _server(read: _Reader, service: str) -> ServerSettings:
    prefix = "SERVICE_A" if service == "service_a" else "SERVICE_B"
    host = read.raw(f"{prefix}_HOST")
    if any(c.isspace() for c in host) or "/" in host:
        raise SettingsError(f"{prefix}_HOST must be a host name or IP address, got {host!r}")
    return ServerSettings(
        service=service,
        host=host,
        port=read.integer(f"{prefix}_PORT"),
        **read.fields(_SERVER_FIELDS),
        metrics_dir=read.raw("PROMETHEUS_MULTIPROC_DIR") or None,
        tracing=_tracing(read),
    )


def service_a_settings(environ: Mapping[str, str] | None = None) -> ServiceASettings:
    """Service A's settings from ``environ`` (default: the process environment)."""
    read = _reader(environ)
    faults = FaultSettings(**read.fields(_FAULT_FIELDS))
    if faults.delay_ms + faults.delay_jitter_ms > MAX_FAULT_DELAY_MS:
        raise SettingsError(
            f"FAULT_DELAY_MS + FAULT_DELAY_JITTER_MS must be at most {MAX_FAULT_DELAY_MS}, "
            f"got {faults.delay_ms + faults.delay_jitter_ms}"
        )
    return ServiceASettings(server=_server(read, "service_a"), faults=faults)


def _upstream_url(read: _Reader) -> str:
    """SERVICE_A_URL as one URL, or several joined by commas (duplicates dropped)."""
    text = read.raw("SERVICE_A_URL")
    if "${SERVICE_A_PORT}" in text:  # the default: A's own port setting, validated as such
        text = text.replace("${SERVICE_A_PORT}", str(read.integer("SERVICE_A_PORT")))
    urls: dict[str, None] = {}
    for item in text.split(","):
        url = item.strip()
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme != "http" or not parts.hostname or port == -1 or parts.query or parts.fragment
                or "@" in parts.netloc):
            raise SettingsError(
                f"SERVICE_A_URL must be an http://host[:port] URL or a comma-separated list of them, got {url!r}"
            )
        urls.setdefault(url.rstrip("/"), None)
    return ",".join(urls)


def _hedge_delay(read: _Reader) -> tuple[bool, float | None]:
    """(hedging on, fixed delay in seconds or None for adaptive) from UPSTREAM_HEDGE_DELAY_MS."""
    text = read.raw("UPSTREAM_HEDGE_DELAY_MS").lower()
    if text == "off":
        return False, None
    if text == "adaptive":
        return True, None
    return True, read.integer("UPSTREAM_HEDGE_DELAY_MS", 1, 600_000) / 1000


def service_b_settings(environ: Mapping[str, str] | None = None) -> ServiceBSettings:
    """Service B's settings from ``environ`` (default: the process environment)."""
    read = _reader(environ)
    hedging, hedge_delay_s = _hedge_delay(read)
    upstream = UpstreamSettings(
        url=_upstream_url(read), hedging=hedging, hedge_delay_s=hedge_delay_s, **read.fields(_UPSTREAM_FIELDS)
    )
    return ServiceBSettings(server=_server(read, "service_b"), upstream=upstream, admission=_admission(read, upstream))


def _admission(read: _Reader, upstream: UpstreamSettings) -> AdmissionSettings:
    floor = read.integer("ADMISSION_MIN_LIMIT")
    cap = read.integer("ADMISSION_MAX_LIMIT")
    if floor > cap:
        raise SettingsError(f"ADMISSION_MIN_LIMIT must be at most ADMISSION_MAX_LIMIT ({cap}), got {floor}")
    cap = min(cap, upstream.max_in_flight)  # the static in-flight cap stays the hard cap
    floor = min(floor, cap)
    return AdmissionSettings(
        enabled=read.flag("ADMISSION_ENABLED"),
        initial_limit=min(cap, max(floor, read.integer("ADMISSION_INITIAL_LIMIT"))),
        min_limit=floor,
        max_limit=cap,
        queue_target_s=read.integer("ADMISSION_QUEUE_TARGET_MS") / 1000,
        queue_interval_s=read.integer("ADMISSION_QUEUE_INTERVAL_MS") / 1000,
        log_change_share=read.number("ADMISSION_LOG_CHANGE_SHARE"),
        queue_wait_s=read.integer("ADMISSION_QUEUE_WAIT_MS") / 1000,
        queue_max=read.integer("ADMISSION_QUEUE_MAX"),
    )


def worker_settings(environ: Mapping[str, str] | None = None) -> WorkerSettings:
    read = _reader(environ)
    return WorkerSettings(**read.fields(_WORKER_FIELDS))


def settings_table() -> list[dict[str, Any]]:
    """Every variable as a row (name, default, services, allowed values, unit, meaning), for docs and tests."""
    return [
        {"name": v.name, "default": v.default, "services": v.services, "allowed": v.allowed(), "unit": v.unit,
         "help": v.help}
        for v in ENV_VARS.values()
    ]


def markdown_table() -> str:
    """docs/configuration.md's table, generated so it cannot drift from the code."""
    rows = ["| variable | read by | default | allowed | unit | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for v in ENV_VARS.values():
        default = f"`{v.default}`" if v.default else "(unset)"
        rows.append(f"| `{v.name}` | {v.services} | {default} | {v.allowed()} | {v.unit} | {v.help} |")
    return "\n".join(rows)


CONFIGURATION_PAGE_INTRO = """\
# Configuration

<!-- Generated by `python -m echokit.settings > docs/configuration.md` from ENV_VARS in
src/echokit/settings.py; tests/unit/test_settings.py fails when this page and the code differ. -->

Every setting comes from the environment; the defaults are the design document's values. Both
services read their settings in one place (`echokit.settings`) at start-up, validate them and stop
with a one-line message naming the variable, e.g.
`error: SERVICE_A_PORT must be a whole number from 1 to 65535, got 'abc'`.
Under gunicorn, `gunicorn.conf.py` hands the same environment to the same loader.
"""


def configuration_page() -> str:
    """docs/configuration.md, generated so it cannot drift from the code."""
    return f"{CONFIGURATION_PAGE_INTRO}\n{markdown_table()}\n"


if __name__ == "__main__":  # python -m echokit.settings > docs/configuration.md
    print(configuration_page(), end="")

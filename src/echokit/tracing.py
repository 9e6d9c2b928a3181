"""Optional OpenTelemetry tracing for both services, switched by the settings' ``OTEL_*`` values.

Off unless ``OTEL_TRACES_EXPORTER`` names an exporter (``console`` or ``otlp``) and
``OTEL_SDK_DISABLED`` is not true (parsed once, in :mod:`echokit.settings`); while off, nothing
from OpenTelemetry is imported. Install it with ``pip install -r requirements-otel.txt``.

When on, ``instrument_app(app, service_name, settings)`` gives the process one SDK
``TracerProvider`` (resource ``service.name`` from ``OTEL_SERVICE_NAME``, else the service's name),
instruments the Flask app with OpenTelemetry's own Flask instrumentation and, for Service B, sets
:data:`outbound`: B's transport (:mod:`echokit.upstream.client`) then wraps each request to A in a
client span and sends W3C ``traceparent`` in it, so A's server span is a child of B's client span.
While tracing is off :data:`outbound` is None and the transport pays one test. Log lines get ``trace_id``
through :data:`echokit.logs.trace_id_provider`. The sampler, batch settings and the OTLP
endpoint are the SDK's own ``OTEL_*`` variables, which it reads itself.

Under gunicorn the app is built in each worker after the fork, so the provider (and the batch
processor's export thread) is created there, in the process that uses it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from echokit import logs
from echokit.context import TRACE_ID_ENVIRON
from echokit.settings import SettingsError, TracingSettings

if TYPE_CHECKING:
    from flask import Flask
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

__all__ = ["OutboundSpan", "current_trace_id", "instrument_app", "make_provider", "outbound", "uninstrument",
           "use_provider"]

# Services whose outbound HTTP client (B's transport to A) makes client spans.
CLIENT_SERVICES = frozenset({"service_b"})


class OutboundSpan(Protocol):
    """One outbound request's client span: ``headers`` to send (the propagation fields as complete
    ``Name: value\r\n`` lines), then exactly one ``finish``."""

    headers: bytes

    def finish(self, status: int | None, error: BaseException | None = None) -> None: ...


# Set while tracing is on (B only): ``outbound(url, host, port)`` starts a client span for a GET of
# ``url``. None while tracing is off, so the transport's cost is one module attribute test.
outbound: Callable[[str, str, int], OutboundSpan] | None = None

_provider: TracerProvider | None = None  # this process's provider, made on first use


def instrument_app(app: Flask, service_name: str, settings: TracingSettings) -> None:
    """Trace ``app`` (and the HTTP client of services that call others) when tracing is on."""
    if not settings.enabled:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.flask import FlaskInstrumentor
    except ImportError as exc:  # tracing asked for but not installed: say how to fix it, in one line
        raise SettingsError(
            f"OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed ({exc.name}): "
            "pip install -r requirements-otel.txt"
        ) from None

    global _provider, outbound  # noqa: PLW0603 - one provider per process is the point
    if _provider is None:
        _provider = make_provider(service_name, settings)
        trace.set_tracer_provider(_provider)  # for any code that asks the global API for a tracer
    FlaskInstrumentor.instrument_app(app, tracer_provider=_provider)  # type: ignore[no-untyped-call]
    app.before_request(_remember_trace_id)
    if service_name in CLIENT_SERVICES:
        outbound = _client_spans(_provider)
    logs.trace_id_provider = current_trace_id


def _client_spans(provider: TracerProvider) -> Callable[[str, str, int], OutboundSpan]:
    """The :data:`outbound` hook: client spans from ``provider``'s tracer, W3C context injected."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    tracer = provider.get_tracer("echokit.upstream")

    class ClientSpan:
        __slots__ = ("headers", "span")

        def __init__(self, url: str, host: str, port: int) -> None:
            # Parent: the current span (B's server span); the context sent to A names this span.
            self.span = tracer.start_span("GET", kind=SpanKind.CLIENT, attributes={
                "http.request.method": "GET", "url.full": url, "server.address": host, "server.port": port,
            })
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(self.span))
            self.headers = "".join(f"{k}: {v}\r\n" for k, v in carrier.items()).encode("latin-1")

        def finish(self, status: int | None, error: BaseException | None = None) -> None:
            span = self.span
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 400:
                    span.set_status(Status(StatusCode.ERROR))
            if error is not None:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end()

    return ClientSpan


def make_provider(service_name: str, settings: TracingSettings) -> TracerProvider:
    """A TracerProvider exporting to the exporters ``settings`` names."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    name = settings.service_name or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter_name in settings.exporters:
        if exporter_name == "console":
            # Printed as each span ends: a console exporter is for watching, so no batching delay.
            provider.add_span_processor(
                SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line_json))
            )
        else:  # otlp over http/protobuf, the one protocol the settings accept
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _one_line_json(span: ReadableSpan) -> str:
    # One span per line, so the console output interleaves cleanly with the log lines.
    return str(span.to_json(indent=None)) + "\n"


def use_provider(provider: TracerProvider | None) -> None:
    """Use ``provider`` for apps instrumented from now on (tests pass an in-memory one; None resets)."""
    global _provider  # noqa: PLW0603
    _provider = provider


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None outside a sampled span."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def _remember_trace_id() -> None:
    from flask import request

    # Runs after the Flask instrumentation's before_request started the server span. The access
    # line is written after that span ended, so it reads the id from here.
    request.environ[TRACE_ID_ENVIRON] = current_trace_id()


def uninstrument(app: Flask | None = None) -> None:
    """Undo :func:`instrument_app` for this process (tests): client spans, the log hook, and ``app``."""
    global outbound  # noqa: PLW0603
    if app is not None:
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        FlaskInstrumentor.uninstrument_app(app)  # type: ignore[no-untyped-call]
        funcs = app.before_request_funcs.get(None, [])
        if _remember_trace_id in funcs:
            funcs.remove(_remember_trace_id)
    outbound = None
    logs.trace_id_provider = None

"""OpenTelemetry tracing for both services; imported by :mod:`echokit.tracing` only when it is on.

``instrument(app, service_name)`` gives the process one SDK ``TracerProvider`` (resource
``service.name`` from ``OTEL_SERVICE_NAME``, else the service's name; exporter from
``OTEL_TRACES_EXPORTER``), instruments the Flask app with OpenTelemetry's own Flask
instrumentation and, for Service B, urllib3 (``HTTPConnectionPool.urlopen``, which B's
``EchoClient`` calls), so W3C ``traceparent`` goes B -> A and A's server span is a child of B's
client span. Log lines get ``trace_id`` through :data:`echokit.logs.trace_id_provider`.

Under gunicorn the app is built in each worker after the fork, so the provider (and the batch
processor's export thread) is created there, in the process that uses it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from flask import Flask, request
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from echokit import logs
from echokit.context import TRACE_ID_ENVIRON
from echokit.settings import SettingsError

EXPORTERS = ("console", "otlp")
# Services whose outbound HTTP client (urllib3) is instrumented.
CLIENT_SERVICES = frozenset({"service_b"})

_provider: TracerProvider | None = None  # this process's provider, made on first use
_urllib3 = URLLib3Instrumentor()


def exporter_names(environ: Any = os.environ) -> list[str]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (comma-separated, as the spec allows)."""
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    names = [n for n in names if n != "none"]
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown:
        raise SettingsError(f"OTEL_TRACES_EXPORTER must be console, otlp or none, got {unknown[0]!r}")
    return names


def _one_line_json(span: ReadableSpan) -> str:
    # One span per line, so the console output interleaves cleanly with the log lines.
    return str(span.to_json(indent=None)) + "\n"


def make_provider(service_name: str, environ: Any = os.environ) -> TracerProvider:
    """A TracerProvider exporting to what ``OTEL_TRACES_EXPORTER`` names.

    ``environ`` chooses the exporters and the service name; the sampler (``OTEL_TRACES_SAMPLER``),
    batch settings (``OTEL_BSP_*``) and the OTLP endpoint, headers and timeout
    (``OTEL_EXPORTER_OTLP_*``) are read from ``os.environ`` by the SDK itself.
    """
    name = environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for exporter_name in exporter_names(environ):
        if exporter_name == "console":
            # Printed as each span ends: a console exporter is for watching, so no batching delay.
            provider.add_span_processor(
                SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout, formatter=_one_line_json))
            )
        else:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(environ)))
    return provider


def _otlp_exporter(environ: Any) -> SpanExporter:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol and protocol != "http/protobuf":
        raise SettingsError(f"only the http/protobuf OTLP protocol is installed, got {protocol!r}")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def use_provider(provider: TracerProvider | None) -> None:
    """Use ``provider`` for apps instrumented from now on (tests pass an in-memory one; None resets)."""
    global _provider  # noqa: PLW0603 - one provider per process is the point
    _provider = provider


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None outside a sampled span."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def _remember_trace_id() -> None:
    # Runs after the Flask instrumentation's before_request started the server span. The access
    # line is written after that span ended, so it reads the id from here.
    request.environ[TRACE_ID_ENVIRON] = current_trace_id()


def instrument(app: Flask, service_name: str) -> None:
    """Trace ``app`` (and the HTTP client of services that call others) with this process's provider."""
    global _provider  # noqa: PLW0603
    if _provider is None:
        _provider = make_provider(service_name)
        trace.set_tracer_provider(_provider)  # for any code that asks the global API for a tracer
    FlaskInstrumentor.instrument_app(app, tracer_provider=_provider)  # type: ignore[no-untyped-call]
    app.before_request(_remember_trace_id)
    if service_name in CLIENT_SERVICES and not _urllib3.is_instrumented_by_opentelemetry:
        _urllib3.instrument(tracer_provider=_provider)
    logs.trace_id_provider = current_trace_id


def uninstrument(app: Flask | None = None) -> None:
    """Undo :func:`instrument` for this process (tests): urllib3, the log hook, and ``app``."""
    if app is not None:
        FlaskInstrumentor.uninstrument_app(app)  # type: ignore[no-untyped-call]
        funcs = app.before_request_funcs.get(None, [])
        if _remember_trace_id in funcs:
            funcs.remove(_remember_trace_id)
    if _urllib3.is_instrumented_by_opentelemetry:
        _urllib3.uninstrument()
    logs.trace_id_provider = None

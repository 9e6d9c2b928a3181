"""Request IDs and OpenTelemetry trace context across B -> A, with both services in this process.

A and B run as real werkzeug servers in threads and talk real HTTP to each other; spans go to an
in-memory exporter, which only sees spans of this process (the cross-process check with the
console exporter is in tests/integration/test_observability.py).
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from werkzeug.test import EnvironBuilder

from echokit import logs, tracing
from echokit.context import MAX_REQUEST_ID_LENGTH
from echokit.settings import SettingsError, service_a_settings, service_b_settings
from tests.support.requires import needs_otel

GENERATED_ID = re.compile(r"[0-9a-f]{32}\Z")
TRACING_ON = {"OTEL_TRACES_EXPORTER": "console"}  # the switch, as a service reads it


@pytest.fixture
def memory_tracing() -> Iterator[Any]:
    """Tracing switched on the standard way, with spans kept in memory; undone after the test."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)  # apps built with TRACING_ON use it instead of the console exporter
    yield exporter
    tracing.uninstrument()
    tracing.use_provider(None)


@pytest.fixture
def captured_logs() -> Iterator[Callable[[], list[str]]]:
    """The text log lines both services write during the test (their handlers, redirected)."""
    stream = io.StringIO()
    loggers = [logging.getLogger(name) for name in ("service_a", "service_b")]
    originals: list[tuple[logging.StreamHandler[Any], Any]] = []

    def redirect() -> None:
        for logger in loggers:
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler and handler.stream is not stream:  # not pytest's
                    originals.append((handler, handler.setStream(stream)))

    def lines() -> list[str]:
        redirect()
        return stream.getvalue().splitlines()

    yield lines
    for handler, original in originals:
        handler.setStream(original)


def _chain(make_a: Any, make_b: Any, serve: Any, logs_of: Callable[[], list[str]]) -> str:
    """Serve A and B (B wired to A) with tracing on and return B's URL; log capture starts once both exist."""
    a = serve(make_a(TRACING_ON))
    b = serve(make_b(a.url, {"UPSTREAM_TIMEOUT_SECONDS": "5", **TRACING_ON}))
    logs_of()  # both apps have configured their loggers by now: redirect them
    return str(b.url)


@needs_otel
def test_a_server_span_is_a_child_of_b_client_span(memory_tracing, make_a, make_b, serve, captured_logs):
    """With tracing on, B's client span and A's server span share one trace and A's parent is B's client span."""
    b_url = _chain(make_a, make_b, serve, captured_logs)
    response = requests.get(f"{b_url}/call-echo?msg=traced", timeout=5)
    assert response.status_code == 200

    spans = memory_tracing.get_finished_spans()
    by_name = {span.name: span for span in spans}
    b_server, a_server = by_name["GET /call-echo"], by_name["GET /echo"]
    b_client = next(s for s in spans if s.kind.name == "CLIENT")
    assert b_server.kind.name == "SERVER" and a_server.kind.name == "SERVER"
    assert b_client.context.trace_id == b_server.context.trace_id == a_server.context.trace_id
    assert b_client.parent is not None and b_client.parent.span_id == b_server.context.span_id
    assert a_server.parent is not None and a_server.parent.span_id == b_client.context.span_id
    assert a_server.parent.is_remote  # it came over HTTP in traceparent, not through this process's context


@needs_otel
def test_log_lines_carry_the_trace_id_when_tracing_is_on(memory_tracing, make_a, make_b, serve, captured_logs):
    """B's access line, B's outbound line and A's access line all end with the request's trace_id."""
    b_url = _chain(make_a, make_b, serve, captured_logs)
    response = requests.get(f"{b_url}/call-echo?msg=traced", timeout=5, headers={"X-Request-ID": "trace-me-1"})
    assert response.status_code == 200
    trace_id = f"{memory_tracing.get_finished_spans()[-1].context.trace_id:032x}"

    lines = [line for line in captured_logs() if "request_id=trace-me-1" in line]
    suffix = f" request_id=trace-me-1 trace_id={trace_id}"
    assert any(" INFO service_b GET /call-echo 200 " in line and line.endswith(suffix) for line in lines), lines
    assert any(" INFO service_b outbound GET " in line and line.endswith(suffix) for line in lines), lines
    assert any(" INFO service_a GET /echo 200 " in line and line.endswith(suffix) for line in lines), lines


def test_tracing_off_adds_no_trace_id_and_sends_no_traceparent(make_a, make_b, serve, captured_logs):
    """Without OTEL_TRACES_EXPORTER, lines have no trace_id and A receives no traceparent header."""
    seen: list[str | None] = []
    a_app = make_a()

    def spy(environ: dict[str, Any], start_response: Any) -> Any:
        seen.append(environ.get("HTTP_TRACEPARENT"))
        return a_app(environ, start_response)

    a = serve(spy)
    b = serve(make_b(a.url))
    captured_logs()
    assert requests.get(f"{b.url}/call-echo?msg=plain", timeout=5).status_code == 200
    assert seen == [None]
    assert logs.trace_id_provider is None
    assert not any("trace_id=" in line for line in captured_logs())


def test_tracing_switched_on_without_opentelemetry_installed_says_how_to_install_it(make_a, monkeypatch):
    """OTEL_TRACES_EXPORTER without the optional packages stops start-up with a one-line install hint."""
    # What a missing install looks like to import.
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.flask", None)
    with pytest.raises(SettingsError, match=r"pip install -r requirements-otel\.txt"):
        make_a(TRACING_ON)


@needs_otel
def test_exporter_choice_follows_otel_traces_exporter():
    """console gets a span processor that prints at once, otlp a batching one; OTEL_SERVICE_NAME names the spans."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    otlp = service_b_settings({"OTEL_TRACES_EXPORTER": "otlp"}).server.tracing
    provider = tracing.make_provider("service_b", otlp)
    processors = provider._active_span_processor._span_processors
    assert [type(p) for p in processors] == [BatchSpanProcessor]
    assert isinstance(processors[0]._batch_processor._exporter, OTLPSpanExporter)  # type: ignore[attr-defined]
    assert provider.resource.attributes["service.name"] == "service_b"
    provider.shutdown()

    named = service_a_settings({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "echo-a"}).server.tracing
    console = tracing.make_provider("service_a", named)
    assert [type(p) for p in console._active_span_processor._span_processors] == [SimpleSpanProcessor]
    assert console.resource.attributes["service.name"] == "echo-a"
    console.shutdown()


@needs_otel
def test_otlp_exporter_sends_the_spans_to_the_configured_collector(make_a, make_b, serve, monkeypatch):
    """OTEL_TRACES_EXPORTER=otlp posts the request's spans as protobuf to OTEL_EXPORTER_OTLP_ENDPOINT."""
    posts: list[tuple[str, str, bytes]] = []

    def collector(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        posts.append((environ["PATH_INFO"], environ.get("CONTENT_TYPE", ""), body))
        start_response("200 OK", [("Content-Type", "application/x-protobuf"), ("Content-Length", "0")])
        return [b""]

    otlp = {"OTEL_TRACES_EXPORTER": "otlp"}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", serve(collector).url)  # read by the exporter itself
    provider = tracing.make_provider("service_b", service_b_settings(otlp).server.tracing)
    tracing.use_provider(provider)
    try:
        a = serve(make_a(otlp))
        b = serve(make_b(a.url, otlp))
        assert requests.get(f"{b.url}/call-echo?msg=otlp", timeout=5).status_code == 200
        assert provider.force_flush(5000)
    finally:
        tracing.uninstrument()
        tracing.use_provider(None)
        provider.shutdown()
    assert posts and all(path == "/v1/traces" and ctype == "application/x-protobuf" for path, ctype, _ in posts)
    sent = b"".join(body for _, _, body in posts)
    for name in (b"GET /call-echo", b"GET /echo", b"service_b"):
        assert name in sent


# --- request IDs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "abc\nINFO service_a forged line",
        "abc\r\nX-Injected: 1",
        "x" * (10 * 1024),
        "x" * (MAX_REQUEST_ID_LENGTH + 1),
        "\x1b[31mred",
        "has space",
        'quote"d',
        "",
    ],
    ids=["newline", "crlf", "10KB", "129", "ansi", "space", "quote", "empty"],
)
def test_a_hostile_request_id_is_replaced_not_echoed(app_a, hostile, captured_logs):
    """A malformed X-Request-ID is swapped for a fresh one in the response header and the log line."""
    captured_logs()
    environ = EnvironBuilder(path="/echo", query_string="msg=hi").get_environ()
    environ["HTTP_X_REQUEST_ID"] = hostile  # set raw: the test client would refuse these values
    statuses: list[tuple[str, list[tuple[str, str]]]] = []
    body = b"".join(app_a.wsgi_app(environ, lambda status, headers, exc=None: statuses.append((status, headers))))
    assert body == b'{"echo":"hi"}'
    returned = dict(statuses[0][1])["X-Request-ID"]
    assert GENERATED_ID.match(returned)
    [line] = captured_logs()
    assert re.fullmatch(rf"\S+ \S+ INFO service_a GET /echo 200 \d+\.\d\dms request_id={returned}", line), line


def test_b_sends_its_request_id_to_a_and_both_return_it(service_a, make_b, serve, captured_logs):
    """B forwards the client's X-Request-ID to A, and both answer with it in their response headers."""
    b = serve(make_b(service_a.url))
    captured_logs()
    response = requests.get(f"{b.url}/call-echo?msg=hi", headers={"X-Request-ID": "client-chosen-7"}, timeout=5)
    assert response.headers["X-Request-ID"] == "client-chosen-7"
    direct = requests.get(f"{service_a.url}/echo?msg=hi", headers={"X-Request-ID": "client-chosen-8"}, timeout=5)
    assert direct.headers["X-Request-ID"] == "client-chosen-8"
    generated = requests.get(f"{b.url}/call-echo?msg=hi", timeout=5).headers["X-Request-ID"]
    assert GENERATED_ID.match(generated)
    lines = captured_logs()
    for request_id in ("client-chosen-7", generated):
        tagged = sorted(" ".join(line.split()[3:5]) for line in lines if line.endswith(f" request_id={request_id}"))
        assert tagged == ["service_a GET", "service_b GET", "service_b outbound"], lines

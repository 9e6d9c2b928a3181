"""Log lines: the document's text format, escaping that keeps one record on one line, and JSON lines."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from echokit.logs import JsonFormatter, SafeTextFormatter, configure_logging, escape_control

# The document's format, %(asctime)s %(levelname)s %(name)s %(message)s, as a line pattern.
TIMESTAMP = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}"
ACCESS_LINE = re.compile(
    rf"(?P<ts>{TIMESTAMP}) (?P<level>INFO) (?P<name>service_[ab]) (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d{3}) (?P<ms>\d+\.\d{2})ms request_id=(?P<rid>\S+)"
)


@pytest.fixture
def log_lines() -> Iterator[Callable[[str], list[str]]]:
    """``log_lines("service_a")``: redirect that logger's handler to memory and return its lines so far."""
    stream = io.StringIO()
    redirected: dict[str, tuple[logging.StreamHandler[Any], Any]] = {}

    def lines(name: str) -> list[str]:
        if name not in redirected:
            handler = logging.getLogger(name).handlers[0]
            assert isinstance(handler, logging.StreamHandler)
            redirected[name] = (handler, handler.setStream(stream))
        return stream.getvalue().splitlines()

    yield lines
    for handler, original in redirected.values():
        handler.setStream(original)


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("service_a", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


# --- the text format ------------------------------------------------------------------------------


def test_access_line_has_the_documents_format(app_a: Flask, log_lines: Callable[[str], list[str]]) -> None:
    """A request to A logs exactly '<asctime> INFO service_a GET /echo 200 <x.xx>ms request_id=<id>'."""
    log_lines("service_a")
    app_a.test_client().get("/echo?msg=hello", headers={"X-Request-ID": "rid-1"})
    [line] = log_lines("service_a")
    match = ACCESS_LINE.fullmatch(line)
    assert match is not None, line
    assert match.group("method", "path", "status", "rid") == ("GET", "/echo", "200", "rid-1")


def test_access_line_never_contains_the_query_string(app_a: Flask, log_lines: Callable[[str], list[str]]) -> None:
    """The logged path is the path only: the message a client echoes never lands in the access log."""
    log_lines("service_a")
    app_a.test_client().get("/echo?msg=secret-text")
    [line] = log_lines("service_a")
    assert "secret-text" not in line
    assert " GET /echo 200 " in line


def test_a_and_b_lines_share_the_request_id(
    make_b: Callable[..., Flask], service_a: Any, log_lines: Callable[[str], list[str]]
) -> None:
    """One /call-echo produces B's access and outbound lines and A's access line, all with one request_id."""
    client = make_b(service_a.url).test_client()
    log_lines("service_a")
    log_lines("service_b")
    client.get("/call-echo?msg=hello", headers={"X-Request-ID": "corr-42"})
    lines = log_lines("service_b")
    a_access = [ln for ln in lines if " INFO service_a GET /echo 200 " in ln]
    b_access = [ln for ln in lines if " INFO service_b GET /call-echo 200 " in ln]
    outbound = [ln for ln in lines if " INFO service_b outbound GET " in ln]
    assert len(a_access) == len(b_access) == len(outbound) == 1
    assert all(ln.endswith(" request_id=corr-42") for ln in a_access + b_access + outbound)
    expected = r"outbound GET http://127\.0\.0\.1:\d+/echo timeout=0\.\d\ds attempt=1 -> 200 success"
    assert re.search(expected, outbound[0])


def test_a_failed_call_is_logged_as_a_warning_with_its_cause(
    make_b: Callable[..., Flask], refused_url: str, log_lines: Callable[[str], list[str]]
) -> None:
    """When A is down, B logs a WARNING naming the URL, the exception type and the error."""
    client = make_b(refused_url, {"RETRY_ATTEMPTS": "1"}).test_client()
    log_lines("service_b")
    client.get("/call-echo?msg=hello")
    warnings = [ln for ln in log_lines("service_b") if " WARNING service_b outbound GET " in ln]
    assert len(warnings) == 1
    assert f"{refused_url}/echo" in warnings[0]
    assert "failed NewConnectionError" in warnings[0]
    assert "Connection error:" in warnings[0]


def test_probes_are_not_logged_when_log_probes_is_off(
    make_a: Callable[..., Flask], log_lines: Callable[[str], list[str]]
) -> None:
    """With LOG_PROBES=false, /health and /ready leave no line while /echo still does."""
    client = make_a({"LOG_PROBES": "false"}).test_client()
    log_lines("service_a")
    client.get("/health")
    client.get("/ready")
    client.get("/echo?msg=x")
    lines = log_lines("service_a")
    assert len(lines) == 1
    assert " GET /echo 200 " in lines[0]


@pytest.mark.parametrize(
    ("raw_path", "shown"),
    [
        ("/echo%0AFAKE%20INFO%20service_a%20GET%20/echo%20200", "/echo\\nFAKE INFO service_a GET /echo 200"),
        ("/x%0D%0Ay", "/x\\r\\ny"),
        ("/x%1B[31mred", "/x\\x1b[31mred"),
        ("/x%E2%80%A8y", "/x\\u2028y"),
        ("/x%C2%85y", "/x\\x85y"),
        ("/x%00y%7F", "/x\\x00y\\x7f"),
    ],
)
def test_control_characters_in_the_path_cannot_forge_a_line(
    app_a: Flask, log_lines: Callable[[str], list[str]], raw_path: str, shown: str
) -> None:
    """CR, LF, ESC, NUL, DEL, C1 controls and U+2028 in a request path are logged as visible escapes on one line."""
    log_lines("service_a")
    app_a.test_client().get(raw_path)
    [line] = log_lines("service_a")
    assert f" INFO service_a GET {shown} 404 " in line


def test_no_request_id_suffix_outside_a_request() -> None:
    """Lines logged outside any request (start-up, shutdown) carry no request_id suffix."""
    line = SafeTextFormatter().format(record("fault injection ON"))
    assert re.fullmatch(rf"{TIMESTAMP} INFO service_a fault injection ON", line)


def test_trace_id_follows_the_request_id() -> None:
    """With tracing on, the trace id is appended after the request id."""
    line = SafeTextFormatter().format(record("GET /echo 200 1.23ms", request_id="r1", trace_id="t" * 32))
    assert line.endswith(" GET /echo 200 1.23ms request_id=r1 trace_id=" + "t" * 32)


def test_arguments_are_escaped_like_the_message() -> None:
    """Client text passed as a %s argument is escaped too, not only the format string."""
    line = SafeTextFormatter().format(record("msg was %s", "a\nb\x1b"))
    assert line.endswith(" INFO service_a msg was a\\nb\\x1b")
    assert "\n" not in line


def test_tracebacks_stay_on_one_line_in_text_format() -> None:
    """A logged exception, whatever its message, never adds a second line in the text format."""
    formatter = SafeTextFormatter()
    try:
        raise ValueError("client said\n2024-01-01 12:00:00 INFO service_a GET /echo 200 1.00ms")
    except ValueError:
        rec = logging.LogRecord("service_a", logging.ERROR, __file__, 1, "unhandled", (), sys.exc_info())
    line = formatter.format(rec)
    assert "\n" not in line
    assert "Traceback" in line
    assert "ValueError: client said\\n2024-01-01" in line  # still readable, as a visible escape


# --- escape_control on its own ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x1b", "\\x1b"),
        ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9f", "\\x9f"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    ],
)
def test_each_unsafe_character_becomes_a_visible_escape(text: str, escaped: str) -> None:
    """Every C0/C1 control, DEL and the Unicode line separators turn into printable escapes."""
    assert escape_control(f"a{text}b") == f"a{escaped}b"


def test_ordinary_text_is_left_alone() -> None:
    """Printable ASCII, accents, CJK, emoji and backslashes pass through unchanged."""
    text = 'GET /echo "q" \\ é 日本 🙂 \u00a0'
    assert escape_control(text) == text


# --- JSON lines -------------------------------------------------------------------------------------


def test_json_access_line_has_the_request_fields(
    make_a: Callable[..., Flask], log_lines: Callable[[str], list[str]]
) -> None:
    """With LOG_FORMAT=json, each request is one JSON object with level, logger, method, path, status, latency."""
    client = make_a({"LOG_FORMAT": "json"}).test_client()
    log_lines("service_a")
    client.get("/echo?msg=hi", headers={"X-Request-ID": "json-1"})
    [line] = log_lines("service_a")
    entry = json.loads(line)
    assert set(entry) == {
        "timestamp", "level", "logger", "message", "method", "path", "status", "latency_ms", "request_id",
    }
    assert (entry["level"], entry["logger"], entry["method"], entry["path"], entry["status"]) == (
        "INFO", "service_a", "GET", "/echo", 200,
    )
    assert entry["request_id"] == "json-1"
    assert isinstance(entry["latency_ms"], float)
    assert entry["message"] == f"GET /echo 200 {entry['latency_ms']:.2f}ms"
    assert re.fullmatch(TIMESTAMP, entry["timestamp"])


def test_json_lines_stay_one_line_with_hostile_text() -> None:
    """Newlines and U+2028 in a JSON record are escaped by JSON, so the record is one line and parses back."""
    line = JsonFormatter().format(record("path %s", "/a\nb\u2028c", path="/a\nb\u2028c"))
    assert "\n" not in line
    assert json.loads(line)["path"] == "/a\nb\u2028c"


def test_json_lines_contain_no_raw_unicode_line_separator() -> None:
    """A JSON log line never contains a raw U+2028/U+2029, which some log viewers treat as a line break."""
    line = JsonFormatter().format(record("path %s", "/a\u2028b\u2029c"))
    assert "\u2028" not in line
    assert "\u2029" not in line
    assert json.loads(line)["message"] == "path /a\u2028b\u2029c"


def test_json_exceptions_are_one_field() -> None:
    """A logged exception becomes an 'exception' field of the same single-line object."""
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        rec = logging.LogRecord("service_b", logging.ERROR, __file__, 1, "unhandled", (), sys.exc_info())
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    assert "RuntimeError: boom\nsecond line" in json.loads(line)["exception"]


def test_reconfiguring_a_logger_never_doubles_lines() -> None:
    """Building several apps in one process replaces the handler instead of stacking them."""
    logger = configure_logging("echokit_test_logger")
    configure_logging("echokit_test_logger")
    assert len(logger.handlers) == 1
    assert logger.propagate is False

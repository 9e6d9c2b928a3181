"""Logging for both services: the document's text format, or one JSON object per line.

Text lines use exactly ``%(asctime)s %(levelname)s %(name)s %(message)s``; the request ID (and the
trace ID when tracing is on) follow the message as ``request_id=...`` suffixes. Anything a client
sent is escaped before it reaches a line, so a newline or an ANSI escape in a path, a header or
``msg`` can never start a second, forged record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

from echokit.context import current_request_id

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators some viewers break on.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What json.dumps(ensure_ascii=False) leaves raw: DEL, the C1 controls and U+2028/U+2029.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")

# Extra record attributes that the JSON format lifts to top-level fields.
ACCESS_FIELDS = ("method", "path", "status", "latency_ms")

# Set by echokit.tracing when OpenTelemetry is on; returns the current trace id or None.
trace_id_provider: Callable[[], str | None] | None = None


def escape_control(text: str) -> str:
    """``text`` with control characters written as visible escapes (``\\n``, ``\\x1b``, ``\\u2028``)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode()), text)


class ContextFilter(logging.Filter):
    """Stamps each record with the current request ID and trace ID (when there are any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        if trace_id_provider is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id_provider()
        return True


class SafeTextFormatter(logging.Formatter):
    """The document's format, with control characters escaped and IDs appended to the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        message = escape_control(record.message)
        request_id = getattr(record, "request_id", None)
        if request_id:
            message += f" request_id={request_id}"
        trace_id = getattr(record, "trace_id", None)
        if trace_id:
            message += f" trace_id={trace_id}"
        record.message = message
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.exc_text or record.stack_info:
            # logging appends tracebacks on their own lines; an exception message is often client
            # text, so the whole record is escaped onto one line like everything else.
            line = escape_control(line)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message and the request's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ACCESS_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        for field in ("request_id", "trace_id"):
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # DEL, C1 controls (NEL) and U+2028/U+2029 are valid raw in a JSON string, but viewers and
        # str.splitlines() break lines on some of them: write them all as \u escapes.
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(entry, ensure_ascii=False))


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler in ``log_format`` ("text" or "json") that adds request context."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else SafeTextFormatter())
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(name: str, level: str = "INFO", log_format: str = "text") -> logging.Logger:
    """Set up the service's logger (``service_a`` or ``service_b``) and return it.

    Calling it again replaces the handler instead of adding a second one, so tests that build
    several apps in one process never see doubled lines.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(make_handler(log_format))
    return logger

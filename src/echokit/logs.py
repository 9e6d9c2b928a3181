"""Logging for both services: the document's text format, or one JSON object per line.

Text lines use exactly ``%(asctime)s %(levelname)s %(name)s %(message)s``; the request ID (and the
trace ID when tracing is on) follow the message as ``request_id=...`` suffixes. Anything a client
sent is escaped before it reaches a line, so a newline or an ANSI escape in a path, a header or
``msg`` can never start a second, forged record.

The services log two lines per request on their hot path (B's access line and its outbound line),
and the stdlib's per-record machinery (caller lookup, a ``LogRecord`` with a dozen attributes, a
filter and a formatter pass, a ``%``-dict format) costs several times what the line itself does.
So a service logger is a :class:`ServiceLogger`: while its one handler is the service's own
(as :func:`configure_logging` sets it up), a plain record is formatted
straight into its line, with the timestamp formatted once per second, and written in one call.
Anything else (a traceback, a stack, a handler or filter someone added) takes the stdlib's path,
and both paths produce the same bytes: the formatters below build every line with the same methods.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from echokit.context import current_request_id
from echokit.lifecycle import os_lock, os_thread_ident

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators some viewers break on.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What json.dumps(ensure_ascii=False) leaves raw: DEL, the C1 controls and U+2028/U+2029.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")
# json.dumps(entry, ensure_ascii=False), without building a JSONEncoder for every line.
_JSON_LINE = json.JSONEncoder(ensure_ascii=False)

# The access line's message: ``GET /echo 200 0.42ms``.
ACCESS_FORMAT = "%s %s %d %.2fms"
# Extra record attributes that the JSON format lifts to top-level fields.
ACCESS_FIELDS = ("method", "path", "status", "latency_ms")
# The ``extra`` keys the direct path knows; a record with any other extra takes the stdlib's path.
_KNOWN_EXTRA = frozenset({*ACCESS_FIELDS, "request_id", "trace_id"})

# Set by echokit.tracing when OpenTelemetry is on; returns the current trace id or None.
trace_id_provider: Callable[[], str | None] | None = None


def escape_control(text: str) -> str:
    """``text`` with control characters written as visible escapes (``\\n``, ``\\x1b``, ``\\u2028``)."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode()), text)


class _SecondStamp:
    """``%(asctime)s`` as logging's default formats it (``2024-01-01 12:00:00,123``, local time),
    with the strftime part computed once per second instead of once per line."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached = (-1, "")  # (whole second, its strftime text); replaced as one tuple, so thread-safe

    def format(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._cached
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
            self._cached = cached
        return f"{cached[1]},{int(msecs):03d}"


class ContextFilter(logging.Filter):
    """Stamps each record with the current request ID and trace ID (when there are any)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id.get()
        if trace_id_provider is not None and not hasattr(record, "trace_id"):
            record.trace_id = trace_id_provider()
        return True


class LineFormatter(logging.Formatter):
    """A formatter that can also build a whole line from a record's parts, without a record.

    ``line`` is the one place each format is defined; ``format(record)`` and the direct path of
    :class:`ServiceLogger` both call it.
    """

    _stamp = _SecondStamp()  # one per process: every formatter shows the same second the same way

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt or self.converter is not time.localtime:
            return super().formatTime(record, datefmt)
        return self._stamp.format(record.created, record.msecs)

    def asctime(self) -> str:
        """Now, as ``formatTime`` shows a record made now."""
        created = time.time()
        return self._stamp.format(created, int((created - int(created)) * 1000))  # LogRecord's msecs

    def line(
        self, asctime: str, levelname: str, name: str, message: str, request_id: str | None,
        trace_id: str | None, fields: Mapping[str, Any] | None,
    ) -> str:
        raise NotImplementedError


class SafeTextFormatter(LineFormatter):
    """The document's format, with control characters escaped and IDs appended to the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def line(
        self, asctime: str, levelname: str, name: str, message: str, request_id: str | None,
        trace_id: str | None, fields: Mapping[str, Any] | None = None,
    ) -> str:
        """``<asctime> <LEVEL> <name> <escaped message>[ request_id=..][ trace_id=..]``."""
        return f"{asctime} {levelname} {name} {_safe_message(message, request_id, trace_id)}"

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = _safe_message(
            record.message, getattr(record, "request_id", None), getattr(record, "trace_id", None)
        )
        return f"{record.asctime} {record.levelname} {record.name} {record.message}"

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.exc_text or record.stack_info:
            # logging appends tracebacks on their own lines; an exception message is often client
            # text, so the whole record is escaped onto one line like everything else.
            line = escape_control(line)
        return line


def _safe_message(message: str, request_id: str | None, trace_id: str | None) -> str:
    message = escape_control(message)
    if request_id:
        message += f" request_id={request_id}"
    if trace_id:
        message += f" trace_id={trace_id}"
    return message


class JsonFormatter(LineFormatter):
    """One JSON object per line: timestamp, level, logger, message and the request's fields."""

    def line(
        self, asctime: str, levelname: str, name: str, message: str, request_id: str | None,
        trace_id: str | None, fields: Mapping[str, Any] | None, exception: str | None = None,
    ) -> str:
        entry: dict[str, Any] = {
            "timestamp": asctime,
            "level": levelname,
            "logger": name,
            "message": message,
        }
        if fields:
            for field in ACCESS_FIELDS:
                value = fields.get(field)
                if value is not None:
                    entry[field] = value
        if request_id:
            entry["request_id"] = request_id
        if trace_id:
            entry["trace_id"] = trace_id
        if exception is not None:
            entry["exception"] = exception
        # DEL, C1 controls (NEL) and U+2028/U+2029 are valid raw in a JSON string, but viewers and
        # str.splitlines() break lines on some of them: write them all as \u escapes.
        text = _JSON_LINE.encode(entry)
        if _JSON_UNSAFE.search(text) is None:
            return text
        return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

    def format(self, record: logging.LogRecord) -> str:
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            self.formatTime(record), record.levelname, record.name, record.getMessage(),
            getattr(record, "request_id", None), getattr(record, "trace_id", None), record.__dict__, exception,
        )


def _direct_formatter(handler: logging.Handler, level: int) -> LineFormatter | None:
    """The handler's formatter when a record at ``level`` may skip the stdlib's record machinery:
    the handler is the plain stderr StreamHandler :func:`make_handler` builds, with only its
    :class:`ContextFilter` (whose work the direct path does itself) and a :class:`LineFormatter`."""
    filters = handler.filters
    formatter = handler.formatter
    if (
        type(handler) is logging.StreamHandler and level >= handler.level
        and len(filters) == 1 and type(filters[0]) is ContextFilter and isinstance(formatter, LineFormatter)
    ):
        return formatter
    return None


def _context_ids(extra: Mapping[str, Any] | None) -> tuple[str | None, str | None]:
    """The request and trace IDs the handler's ContextFilter would stamp on a record with ``extra``."""
    request_id = extra["request_id"] if extra and "request_id" in extra else current_request_id.get()
    if extra and "trace_id" in extra:
        return request_id, extra["trace_id"]
    return request_id, trace_id_provider() if trace_id_provider is not None else None


# Held around one line's os.write: an OS lock, so it costs nanoseconds under gevent too, and never
# held across anything that can switch greenlets (os.write blocks the process, it does not yield).
_WRITE_LOCK = os_lock()
_fds: dict[int, tuple[io.TextIOWrapper, int]] = {}  # id(stream) -> (stream, its file descriptor)


def _stream_fd(stream: Any) -> int | None:
    """The file descriptor under ``stream`` when a line may go to it directly (a real file's text
    stream, as stderr is), else None."""
    known = _fds.get(id(stream))
    if known is not None and known[0] is stream:
        # A closed stream's descriptor number may belong to another file by now: its own write refuses.
        return None if stream.closed else known[1]
    if type(stream) is not io.TextIOWrapper:
        return None  # a StringIO, pytest's capture, a wrapper: its own write is the only way in
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # no descriptor, or closed
        return None
    stream.flush()  # what it buffered goes out before the first direct line
    if len(_fds) < 16:
        _fds[id(stream)] = (stream, fd)
    return fd


def _write(handler: logging.StreamHandler, line: str) -> None:  # type: ignore[type-arg]
    """What StreamHandler.emit does with a formatted record, in one write.

    To a real file (stderr, as the services run) the encoded line goes straight to its descriptor:
    the same bytes the text stream would write (its encoding and error handler), without the
    stream's buffer and the handler's lock, which gevent's monkey-patching makes a Python-level
    lock (together about 2.6 µs a line, measured). Whole lines per ``os.write``, so lines of
    concurrent requests never interleave: one each, or, in a gevent worker, one per turn of its
    event loop (:class:`WriteBatch`).
    """
    stream = handler.stream
    fd = _stream_fd(stream)
    if fd is None:
        with handler.lock:  # type: ignore[union-attr]  # every Handler makes its lock in __init__
            stream.write(line + handler.terminator)  # one write: lines of concurrent requests never interleave
            stream.flush()
        return
    data = (line + handler.terminator).encode(stream.encoding, stream.errors or "strict")
    batch = _batch
    with _WRITE_LOCK:
        if batch is not None:
            if batch.thread == batch.thread_ident():
                batch.add(fd, data)
                return
            batch.write_pending()  # what the loop's thread gathered goes first: lines stay in order
        _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # a pipe that took part of it: the rest, in order
        data = data[written:]
        written = os.write(fd, data)


# A batch is flushed at once, not at the end of the loop's turn, when it holds this much.
BATCH_MAX_BYTES = 64 * 1024


class WriteBatch:
    """The lines an event loop's thread logs during one turn of the loop, written together when it ends.

    A loaded gevent worker answers several connections per turn of its loop, each with one or two
    lines; one ``os.write`` per line was the worker's largest cost after ``send()`` (the benchmark
    measured about 10 % less CPU per answer of A with one write per turn). The lines are the same
    bytes in the same order; each goes out within the turn it was logged in, before the worker next
    waits for the network. Lines from other threads are written at once, after what was gathered.
    A line logged just before the process is killed (SIGKILL) may be lost with the turn's batch.

    ``schedule(callback)`` runs ``callback`` once the loop's current turn is done (gevent:
    ``loop.run_callback``); it is only called from the thread that made the batch.
    """

    def __init__(self, schedule: Callable[[Callable[[], None]], Any]) -> None:
        self.schedule = schedule
        self.thread_ident = os_thread_ident()
        self.thread = self.thread_ident()
        self.pending: dict[int, list[bytes]] = {}  # descriptor -> its lines, in order
        self.size = 0

    def add(self, fd: int, data: bytes) -> None:
        """Gather one line (the caller holds ``_WRITE_LOCK``)."""
        if not self.pending:
            self.schedule(self.flush)
        lines = self.pending.get(fd)
        if lines is None:
            self.pending[fd] = [data]
        else:
            lines.append(data)
        self.size += len(data)
        if self.size >= BATCH_MAX_BYTES:
            self.write_pending()

    def flush(self) -> None:
        """Write what was gathered (nothing, if it was written already)."""
        with _WRITE_LOCK:
            self.write_pending()

    def write_pending(self) -> None:
        """:meth:`flush`, for a caller that holds ``_WRITE_LOCK``."""
        pending, self.pending, self.size = self.pending, {}, 0
        for fd, lines in pending.items():
            with contextlib.suppress(OSError):  # a closed or broken stderr: nowhere left to say so
                _write_all(fd, b"".join(lines))


_batch: WriteBatch | None = None


def batch_writes(schedule: Callable[[Callable[[], None]], Any]) -> None:
    """From now on, gather this thread's direct log lines per turn of its event loop (see
    :class:`WriteBatch`); what is pending is also written at interpreter exit."""
    global _batch  # noqa: PLW0603 - one event loop per worker process: its batch is per process
    flush_writes()
    _batch = WriteBatch(schedule)


def flush_writes() -> None:
    """Write the lines gathered so far (the worker calls this when it stops)."""
    if _batch is not None:
        _batch.flush()


atexit.register(flush_writes)


class ServiceLogger(logging.Logger):
    """A logger whose plain records skip the stdlib's record machinery while its handler allows it.

    The lines are the stdlib path's, byte for byte; only the work to get there is less. Records with
    an exception or a stack, or any logger or handler set-up other than :func:`configure_logging`'s,
    go the stdlib way.
    """

    def _direct(self, level: int) -> tuple[logging.StreamHandler, LineFormatter] | None:  # type: ignore[type-arg]
        handlers = self.handlers
        if len(handlers) != 1 or self.filters or self.propagate or self.disabled:
            return None
        handler = handlers[0]
        formatter = _direct_formatter(handler, level)
        return None if formatter is None else (handler, formatter)  # type: ignore[return-value]

    def _log(
        self, level: int, msg: object, args: Any, exc_info: Any = None, extra: Mapping[str, object] | None = None,
        stack_info: bool = False, stacklevel: int = 1,
    ) -> None:
        direct = None if exc_info or stack_info else self._direct(level)
        if direct is None or (extra and not _KNOWN_EXTRA.issuperset(extra)):
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel + 1)
            return
        handler, formatter = direct
        try:
            message = str(msg)
            if args:
                # logging's one-mapping form: logger.info("%(a)s", {"a": 1})
                one_mapping = len(args) == 1 and isinstance(args[0], Mapping) and args[0]
                message = message % (args[0] if one_mapping else args)
            request_id, trace_id = _context_ids(extra)
            line = formatter.line(
                formatter.asctime(), logging.getLevelName(level), self.name, message, request_id, trace_id, extra
            )
            _write(handler, line)
        except Exception:  # a bad format or a broken stream: logging's own error handling
            super()._log(level, msg, args, exc_info, extra, stack_info, stacklevel + 1)

    def access(self, method: str, path: str, status: int, latency_ms: float, trace_id: str | None) -> None:
        """The request's access line, as ``info(ACCESS_FORMAT, method, path, status, latency_ms,
        extra={...})`` logs it (JSON: with those as fields), built with less work."""
        if not self.isEnabledFor(logging.INFO):
            return
        direct = self._direct(logging.INFO)
        if direct is None:
            _log_access(self, method, path, status, latency_ms, trace_id)
            return
        handler, formatter = direct
        message = f"{method} {path} {status:d} {latency_ms:.2f}ms"  # ACCESS_FORMAT, as an f-string
        json_fields = (
            {"method": method, "path": path, "status": status, "latency_ms": latency_ms}
            if isinstance(formatter, JsonFormatter) else None
        )
        line = formatter.line(
            formatter.asctime(), "INFO", self.name, message, current_request_id.get(), trace_id, json_fields
        )
        _write(handler, line)


def access_logger(logger: logging.Logger) -> Callable[[str, str, int, float, str | None], None]:
    """``access(method, path, status, latency_ms, trace_id)`` for ``logger``: the access line."""
    if isinstance(logger, ServiceLogger):
        return logger.access
    return functools.partial(_log_access, logger)


def _log_access(
    logger: logging.Logger, method: str, path: str, status: int, latency_ms: float, trace_id: str | None
) -> None:
    """The access line through the stdlib's path: the message, and the parts as fields for JSON."""
    fields = {"method": method, "path": path, "status": status, "latency_ms": latency_ms, "trace_id": trace_id}
    logger.info(ACCESS_FORMAT, method, path, status, latency_ms, extra=fields, stacklevel=2)


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
    if type(logger) is logging.Logger:
        # The registered logger object must stay the one everybody gets from getLogger(name); only
        # its class changes, to add the direct path (ServiceLogger adds no state of its own).
        logger.__class__ = ServiceLogger
    logger.setLevel(level)
    logger.propagate = False
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(make_handler(log_format))
    return logger

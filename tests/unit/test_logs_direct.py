"""The service loggers' direct path writes exactly the bytes the stdlib logging path writes."""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from echokit import logs
from echokit.context import current_request_id
from echokit.logs import ACCESS_FORMAT, ServiceLogger, configure_logging

CASES: list[tuple[str, tuple[object, ...], dict[str, object] | None]] = [
    ("%s %s %d %.2fms", ("GET", "/echo", 200, 1.234), {"method": "GET", "path": "/echo", "status": 200,
                                                        "latency_ms": 1.23, "trace_id": None}),
    ("%s %s %d %.2fms", ("GET", "/x\n2024-01-01 FAKE\u2028\x1b[31m", 404, 0.5), {"path": "/x\n"}),
    ("outbound GET %s timeout=%.2fs attempt=%d -> 200 success in %.2fms", ("http://a/echo", 1.99, 1, 0.42), None),
    ("plain message, no arguments", (), None),
    ("a literal %s with no args stays", (), None),
    ("%(a)s and %(b)d", ({"a": "mapping", "b": 2},), None),
    ("given ids %s", ("x",), {"request_id": "rid-9", "trace_id": "t" * 32}),
]


@pytest.fixture(params=["text", "json"])
def logger(request: pytest.FixtureRequest) -> Iterator[logging.Logger]:
    yield configure_logging("echokit_test_direct", "INFO", request.param)
    logging.getLogger("echokit_test_direct").handlers.clear()


@contextlib.contextmanager
def own_handler_only(logger: logging.Logger) -> Iterator[logging.StreamHandler]:  # type: ignore[type-arg]
    """The logger's own handler, with pytest's capture handlers (added to non-propagating loggers)
    taken off meanwhile: with a second handler every record would take the stdlib path."""
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    others = logger.handlers[1:]
    del logger.handlers[1:]
    try:
        yield handler
    finally:
        logger.handlers.extend(others)


def lines(logger: logging.Logger, direct: bool, msg: str, args: tuple[object, ...], extra: object) -> str:
    stream = io.StringIO()
    blocker = logging.Filter()  # lets everything through, but any logger filter means the stdlib path
    with own_handler_only(logger) as handler:
        handler.setStream(stream)
        if not direct:
            logger.addFilter(blocker)
        try:
            logger.info(msg, *args, extra=extra)  # type: ignore[arg-type]
            logger.warning(msg, *args, extra=extra)  # type: ignore[arg-type]
        finally:
            logger.removeFilter(blocker)
    return stream.getvalue()


@pytest.mark.parametrize(("msg", "args", "extra"), CASES)
@pytest.mark.parametrize("request_id", [None, "req-1"])
def test_direct_and_stdlib_paths_write_the_same_bytes(
    monkeypatch: pytest.MonkeyPatch, logger: logging.Logger, msg: str, args: tuple[object, ...],
    extra: dict[str, object] | None, request_id: str | None,
) -> None:
    """Same time, same record: the same line, in text and JSON, inside and outside a request."""
    assert isinstance(logger, ServiceLogger)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.4567)
    records: list[logging.LogRecord] = []
    make_record = logging.Logger.makeRecord

    def counted(*a: Any, **k: Any) -> logging.LogRecord:
        records.append(make_record(*a, **k))
        return records[-1]

    monkeypatch.setattr(logging.Logger, "makeRecord", counted)
    token = current_request_id.set(request_id)
    try:
        direct = lines(logger, True, msg, args, extra)
        assert records == []  # the direct path made no LogRecord
        stdlib = lines(logger, False, msg, args, extra)
        assert len(records) == 2
    finally:
        current_request_id.reset(token)
    assert direct == stdlib
    assert direct.count("\n") == 2


def test_the_trace_id_provider_is_asked_on_both_paths(monkeypatch: pytest.MonkeyPatch, logger: logging.Logger) -> None:
    """With tracing on, both paths append the provider's trace id."""
    monkeypatch.setattr(logs, "trace_id_provider", lambda: "a" * 32)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.001)
    direct = lines(logger, True, "hello %s", ("x",), None)
    assert direct == lines(logger, False, "hello %s", ("x",), None)
    assert "a" * 32 in direct


def test_the_timestamp_follows_the_clock_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-second cache never shows a stale second."""
    formatter = logs.SafeTextFormatter()
    for now in (1_700_000_000.999, 1_700_000_001.0, 1_700_000_001.5, 1_700_000_000.2):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        expected = logging.Formatter().formatTime(record)
        assert formatter.asctime() == expected == formatter.formatTime(record)


@pytest.mark.parametrize("path", ["/echo", "/x\n2024-01-01 FAKE\u2028\x1b[31m", "/caf\u00e9"])
@pytest.mark.parametrize("trace_id", [None, "b" * 32])
def test_the_access_line_is_the_stdlib_lines_bytes(
    monkeypatch: pytest.MonkeyPatch, logger: logging.Logger, path: str, trace_id: str | None
) -> None:
    """ServiceLogger.access writes what info(ACCESS_FORMAT, ..., extra=fields) writes, text or JSON."""
    assert isinstance(logger, ServiceLogger)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.4567)
    written = []
    token = current_request_id.set("rid-7")
    try:
        with own_handler_only(logger) as handler:
            for via_access in (True, False):
                stream = io.StringIO()
                handler.setStream(stream)
                if via_access:
                    logger.access("GET", path, 404, 0.5, trace_id)
                else:
                    fields = {"method": "GET", "path": path, "status": 404, "latency_ms": 0.5, "trace_id": trace_id}
                    logger.addFilter(logging.Filter())  # the stdlib path
                    logger.info(ACCESS_FORMAT, "GET", path, 404, 0.5, extra=fields)
                    logger.filters.clear()
                written.append(stream.getvalue())
    finally:
        current_request_id.reset(token)
    assert written[0] == written[1]
    assert written[0].count("\n") == 1 and "rid-7" in written[0]


def test_lines_to_a_real_file_are_the_stdlib_lines_bytes_in_order(
    monkeypatch: pytest.MonkeyPatch, logger: logging.Logger, tmp_path: Any
) -> None:
    """To a real file (stderr, as the services run) the direct path writes to the descriptor itself:
    the same bytes as the stdlib path, non-ASCII included, after whatever the stream already held."""
    assert isinstance(logger, ServiceLogger)
    monkeypatch.setattr(time, "time", lambda: 1_700_000_123.4567)
    written = []
    with own_handler_only(logger) as handler:
        for direct in (True, False):
            path = tmp_path / f"direct-{direct}.log"
            with open(path, "w", encoding="utf-8") as stream:
                handler.setStream(stream)
                stream.write("before\n")  # still in the stream's buffer: it must come out first
                if not direct:
                    logger.addFilter(logging.Filter())  # the stdlib path
                logger.access("GET", "/caf\u00e9\n2024-01-01 FAKE", 200, 0.5, None)
                logger.info("outbound GET %s -> %d", "http://a/echo", 200)
                logger.filters.clear()
                handler.setStream(io.StringIO())
            written.append(path.read_bytes())
    assert written[0] == written[1]
    lines_written = written[0].decode().splitlines()
    assert lines_written[0] == "before" and len(lines_written) == 3
    assert "caf\u00e9" in lines_written[1] and "FAKE" in lines_written[1]


def test_a_closed_stream_is_never_written_through_its_old_descriptor(logger: logging.Logger, tmp_path: Any) -> None:
    """Once the handler's file is closed, its descriptor number may be another file's: that file
    gets nothing, and the logger reports the closed stream as the stdlib does."""
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = open(tmp_path / "first.log", "w", encoding="utf-8")  # noqa: SIM115 - closed by hand below
    handler.setStream(stream)
    logs._write(handler, "to the first file")  # straight to the descriptor, which is now known
    old_fd = stream.fileno()
    stream.close()
    with open(tmp_path / "second.log", "w", encoding="utf-8") as other:
        assert other.fileno() == old_fd  # the lowest free number: the one just released
        with pytest.raises(ValueError):  # I/O on a closed file, as a TextIOWrapper says it
            logs._write(handler, "must not reach the second file")
    handler.stream = io.StringIO()  # not setStream: it would flush the closed file
    assert (tmp_path / "second.log").read_text() == ""
    assert "to the first file" in (tmp_path / "first.log").read_text()


# --- in a gevent worker: the lines of one turn of the event loop, written together when it ends ---

Callback = Callable[[], None]


class Turns:
    """A stand-in for gevent's ``loop.run_callback``: the callbacks run when the test ends the turn."""

    def __init__(self) -> None:
        self.callbacks: list[Callback] = []

    def schedule(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def end(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


@pytest.fixture
def batched(tmp_path: Path) -> Iterator[tuple[logging.Logger, Turns, Path]]:
    """A service logger writing to a real file, its lines gathered per turn of ``Turns``."""
    path = tmp_path / "service.log"
    logger = configure_logging("echokit_test_batch", "INFO", "text")
    handler = logger.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    turns = Turns()
    with open(path, "w", encoding="utf-8") as stream:
        handler.setStream(stream)
        logs.batch_writes(turns.schedule)
        try:
            yield logger, turns, path
        finally:
            logs.flush_writes()
            logs._batch = None
            handler.stream = sys.stderr
            logger.handlers.clear()


def logged(path: Path) -> list[str]:
    """The messages in the log file so far."""
    return [line.split(" echokit_test_batch ", 1)[1] for line in path.read_text().splitlines()]


def test_lines_of_one_turn_reach_the_file_together_when_the_turn_ends(batched) -> None:
    """Nothing is written while the turn runs; then every line, in the order it was logged."""
    logger, turns, path = batched
    with own_handler_only(logger):
        logger.info("first")
        logger.warning("second")
        logger.access("GET", "/echo", 200, 1.5, None)
        assert path.read_text() == ""
        turns.end()
        assert logged(path) == ["first", "second", "GET /echo 200 1.50ms"]
        logger.info("next turn")
        turns.end()
        assert logged(path)[-1] == "next turn"


def test_a_line_from_another_thread_is_written_at_once_after_what_the_turn_gathered(batched) -> None:
    """Another thread has no turn to wait for: its line goes out immediately, behind the loop's lines."""
    logger, turns, path = batched
    with own_handler_only(logger):
        logger.info("loop line")
        thread = threading.Thread(target=logger.info, args=("thread line",))
        thread.start()
        thread.join(5)
        assert logged(path) == ["loop line", "thread line"]
        turns.end()  # the turn's callback finds nothing left to write
        assert logged(path) == ["loop line", "thread line"]


def test_a_large_batch_is_written_before_its_turn_ends(batched) -> None:
    """A turn that logs more than BATCH_MAX_BYTES does not hold it all in memory."""
    logger, _turns, path = batched
    with own_handler_only(logger):
        count = logs.BATCH_MAX_BYTES // 100 + 1
        for number in range(count):
            logger.info("%04d %s", number, "x" * 100)
        written = logged(path)
        assert 0 < len(written) < count  # the first BATCH_MAX_BYTES went out; the rest waits for the turn
        assert written == [f"{n:04d} {'x' * 100}" for n in range(len(written))]


def test_what_is_gathered_is_written_when_the_process_exits(tmp_path: Path) -> None:
    """A worker that exits before its loop turns again still writes its last lines."""
    script = (
        "from echokit import logs\n"
        "from echokit.logs import configure_logging\n"
        "logger = configure_logging('service_a')\n"
        "logs.batch_writes(lambda callback: None)  # a loop that never turns again\n"
        "logger.info('GET /echo 200 0.50ms')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True)
    assert result.stderr.rstrip("\n").endswith(" INFO service_a GET /echo 200 0.50ms")

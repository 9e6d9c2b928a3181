"""The production worker's HTTP/1.1 (echokit.servers.http11), over real sockets: environ, framing, limits.

``GracefulGeventWorker.handle`` serves each connection exactly as in production, from a gevent hub
in a thread of its own (no process, no signal handlers, no monkey-patching); the tests talk raw
HTTP to it with blocking sockets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any, BinaryIO

import gevent
import gevent.pool
import gevent.server
import gevent.socket
import pytest
from gunicorn.config import Config

from echokit.context import ARRIVAL_ENVIRON
from echokit.servers import SERVER_NAME, http11
from echokit.servers.gunicorn_worker import IDLE_CLOSE_GRACE_S, GracefulGeventWorker
from echokit.settings import MAX_REQUEST_LINE_BYTES
from tests.support.live import StartResponse, WSGIApp
from tests.support.raw import CLOSE, RawAnswer, raw_request

RUN_LIMIT_S = 120  # the server thread stops by itself after this, whatever a test does


class WorkerServing:
    """The worker's ``handle`` on 127.0.0.1:<port>, its gevent loop in a thread; ``call`` runs a function there."""

    def __init__(self, app: WSGIApp, **settings: Any) -> None:
        cfg = Config()
        settings = {"keepalive": 5, "limit_request_line": MAX_REQUEST_LINE_BYTES, **settings}
        for name, value in settings.items():
            cfg.set(name, value)
        self.worker = GracefulGeventWorker(1, os.getpid(), [], None, 30, cfg, logging.getLogger("tests.http11"))
        self.worker.wsgi = app
        self.worker.serve_http11()
        self.port = 0
        self._calls: queue.SimpleQueue[tuple[Callable[[], object], threading.Event]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "the server thread did not start"

    def _run(self) -> None:
        listener = gevent.socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        server = gevent.server.StreamServer(
            listener, handle=partial(self.worker.handle, listener), spawn=gevent.pool.Pool(64)
        )
        server.start()
        self._ready.set()
        deadline = time.monotonic() + RUN_LIMIT_S
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                fn, done = self._calls.get_nowait()
            except queue.Empty:
                gevent.sleep(0.005)
                continue
            fn()
            done.set()
        server.stop(timeout=1)

    def call(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` in the server's thread (as a signal handler would in the worker); returns once it ran."""
        done = threading.Event()
        self._calls.put((fn, done))
        assert done.wait(5), f"{fn} did not run"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.worker.tmp.close()  # gunicorn's heartbeat file, made by the worker's constructor


@pytest.fixture
def serve() -> Iterator[Callable[..., WorkerServing]]:
    servers: list[WorkerServing] = []

    def start(app: WSGIApp, **settings: Any) -> WorkerServing:
        servers.append(WorkerServing(app, **settings))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


class Recorder:
    """A WSGI app that records each environ (and the body it read) and answers a JSON body with a length."""

    def __init__(self, read_body: bool = True) -> None:
        self.environs: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.read_body = read_body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        self.bodies.append(environ["wsgi.input"].read() if self.read_body else b"")
        payload = json.dumps({"path": environ["PATH_INFO"], "query": environ["QUERY_STRING"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def answer_with(status: str, headers: list[tuple[str, str]], body: Iterable[bytes]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, list(headers))
        return body

    return app


def read_answer(stream: BinaryIO, head: bool = False) -> RawAnswer:
    """One answer off a keep-alive stream: by Content-Length, chunked, or (neither) until the server closes;
    none for HEAD (``head``), 204 and 304."""
    started = time.monotonic()
    status_line = stream.readline().decode("latin-1")
    assert status_line.startswith("HTTP/"), status_line
    headers: dict[str, str] = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    if head or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = stream.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while (size := int(stream.readline().split(b";")[0], 16)) > 0:
            parts.append(stream.read(size))
            stream.readline()
        stream.readline()
        body = b"".join(parts)
    else:
        body = stream.read()
    return RawAnswer(status, headers, body, time.monotonic() - started)


def exchange(server: WorkerServing, data: bytes, answers: int) -> tuple[list[RawAnswer], bytes]:
    """Send ``data`` on one connection, read ``answers`` answers, then whatever follows until the server closes."""
    with server.connect() as sock, sock.makefile("rb") as stream:
        sock.sendall(data)
        got = [read_answer(stream, head=i == 0 and data.startswith(b"HEAD")) for i in range(answers)]
        try:
            rest = stream.read()
        except (TimeoutError, ConnectionResetError):
            rest = b"<still open>"
        return got, rest


GET = b"GET /echo?msg=hi HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
GET_CLOSE = b"GET /echo?msg=hi HTTP/1.1\r\n" + CLOSE


# --- the environ ---


def test_the_environ_is_pep_3333_with_gunicorns_header_mapping(serve: Callable[..., WorkerServing]) -> None:
    """Method, path (percent-decoded, latin-1), raw query, protocol, addresses, CONTENT_*, HTTP_* (duplicates
    joined, names with '_' dropped), a wsgi.input and the arrival time."""
    app = Recorder()
    server = serve(app)
    request = (
        b"POST /a%20b/%C3%A9?x=%20y&z=1 HTTP/1.1\r\nHost: example.test:80\r\nX-Multi: one\r\nX-Multi: two\r\n"
        b"X_Multi: spoofed\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    answer = raw_request(server.port, request)
    assert answer.status == 200
    environ = app.environs[0]
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/a b/\xc3\xa9"  # UTF-8 bytes as latin-1 characters
    assert environ["QUERY_STRING"] == "x=%20y&z=1"
    assert environ["RAW_URI"] == "/a%20b/%C3%A9?x=%20y&z=1"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", str(server.port))
    assert environ["REMOTE_ADDR"] == "127.0.0.1" and environ["REMOTE_PORT"].isdigit()
    assert environ["HTTP_HOST"] == "example.test:80"
    assert environ["HTTP_X_MULTI"] == "one,two"  # the underscore spelling never reaches the app
    assert environ["CONTENT_TYPE"] == "text/plain" and environ["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_LENGTH" not in environ and "HTTP_CONTENT_TYPE" not in environ
    assert environ["wsgi.url_scheme"] == "http" and environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.multithread"] is True and environ["wsgi.input_terminated"] is True
    assert app.bodies == [b"hello"]
    assert isinstance(environ[ARRIVAL_ENVIRON], float) and environ[ARRIVAL_ENVIRON] <= time.monotonic()


def test_absolute_form_targets_and_fragments_give_the_path_only(serve: Callable[..., WorkerServing]) -> None:
    """An absolute-form target routes by its path, as gunicorn's; a fragment is never part of path or query."""
    app = Recorder()
    server = serve(app)
    raw_request(server.port, b"GET http://elsewhere.test:9/p/q?k=v HTTP/1.1\r\n" + CLOSE)
    raw_request(server.port, b"GET /f?k=v#frag HTTP/1.1\r\n" + CLOSE)
    assert [(e["PATH_INFO"], e["QUERY_STRING"]) for e in app.environs] == [("/p/q", "k=v"), ("/f", "k=v")]


# --- connections: keep-alive, pipelining, bodies ---


def test_keep_alive_answers_many_requests_on_one_connection(serve: Callable[..., WorkerServing]) -> None:
    """HTTP/1.1 keeps the connection; each answer names the project in Server and has a Date."""
    server = serve(Recorder())
    with server.connect() as sock, sock.makefile("rb") as stream:
        for i in range(3):
            sock.sendall(b"GET /n?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            answer = read_answer(stream)
            assert (answer.status, answer.json()) == (200, {"path": "/n", "query": f"i={i}"})
            assert answer.headers["connection"] == "keep-alive"
            assert answer.headers["server"] == SERVER_NAME
            assert answer.headers["date"].endswith(" GMT")


def test_pipelined_requests_are_answered_in_order_and_close_ends_the_connection(
    serve: Callable[..., WorkerServing],
) -> None:
    """Three requests sent at once: three answers in order; the third asked to close, so the server does."""
    server = serve(Recorder())
    data = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(2))
    data += b"GET /p2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n"
    answers, rest = exchange(server, data, 3)
    assert [a.json()["path"] for a in answers] == ["/p0", "/p1", "/p2"]
    assert [a.headers["connection"] for a in answers] == ["keep-alive", "keep-alive", "close"]
    assert rest == b""


def test_http_10_closes_unless_it_asks_for_keep_alive(serve: Callable[..., WorkerServing]) -> None:
    """HTTP/1.0: the answer is HTTP/1.0 and closes; with Connection: keep-alive the connection stays."""
    server = serve(Recorder())
    answers, rest = exchange(server, b"GET /old HTTP/1.0\r\n\r\n", 1)
    assert answers[0].headers["connection"] == "close" and rest == b""
    with server.connect() as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        assert read_answer(stream).headers["connection"] == "keep-alive"
        sock.sendall(b"GET /b HTTP/1.0\r\n\r\n")
        assert read_answer(stream).json()["path"] == "/b"


def test_request_bodies_by_length_and_chunked_are_read_and_an_unread_one_is_skipped(
    serve: Callable[..., WorkerServing],
) -> None:
    """The app reads exactly its body (Content-Length or chunked, split across reads); a body the app
    leaves unread is drained before the next request on the connection, never parsed as one."""
    reading = Recorder()
    server = serve(reading)
    with server.connect() as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        time.sleep(0.05)  # the rest of the body in a later read
        sock.sendall(b" world")
        assert read_answer(stream).status == 200
        sock.sendall(b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        sock.sendall(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        assert read_answer(stream).status == 200
    assert reading.bodies == [b"hello world", b"hello world"]
    assert "HTTP_X_TRAILER" not in reading.environs[1]

    ignoring = Recorder(read_body=False)
    server = serve(ignoring)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled) + GET
    answers, _ = exchange(server, data + b"GET /last HTTP/1.1\r\n" + CLOSE, 3)
    assert [a.json()["path"] for a in answers] == ["/first", "/echo", "/last"]


def test_wsgi_input_reads_by_size_and_by_line_and_stops_at_the_end_of_the_body(
    serve: Callable[..., WorkerServing],
) -> None:
    """read(n), readline(), iteration and readlines() see the body exactly, never the next request."""
    seen: list[object] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        stream = environ["wsgi.input"]
        seen.append((stream.read(3), stream.readline(), stream.readline(2), list(stream), stream.read(),
                     stream.readlines()))
        start_response("200 OK", [("Content-Length", "0")])
        return []

    server = serve(app)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\nabcdef\nghij\nkl\nmno\n"
    answers, _ = exchange(server, request + GET_CLOSE, 2)
    assert [a.status for a in answers] == [200, 200]
    assert seen[0] == (b"abc", b"def\n", b"gh", [b"ij\n", b"kl\n", b"mno\n"], b"", [])


def test_expect_100_continue_gets_the_interim_answer_before_the_body_is_sent(
    serve: Callable[..., WorkerServing],
) -> None:
    """A client that waits for 100 Continue gets it, then sends its body and gets the final answer."""
    app = Recorder()
    server = serve(app)
    with server.connect() as sock, sock.makefile("rb") as stream:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert stream.readline() == b"HTTP/1.1 100 Continue\r\n" and stream.readline() == b"\r\n"
        sock.sendall(b"data")
        assert read_answer(stream).status == 200
    assert app.bodies == [b"data"]
    answer = raw_request(server.port, b"POST /up HTTP/1.1\r\nExpect: something-else\r\n" + CLOSE)
    assert answer.status == 417 and answer.json()["error"] == "Expectation Failed"


# --- answers ---


def test_a_list_body_goes_out_in_one_send_with_the_head() -> None:
    """Status line, headers and body of a list body (the admission gate's, say) go out in one send."""
    sent: list[bytes] = []

    class Recording:
        def __init__(self) -> None:
            self.reads = [GET, b""]

        def recv(self, size: int) -> bytes:
            return self.reads.pop(0)

        def send(self, data: bytes) -> int:
            sent.append(data)
            return len(data)

        sendall = send

    config = http11.ServerConfig(Config(), logging.getLogger("tests.http11"), None, None)
    conn = http11.Connection(Recording(), ("127.0.0.1", 1), ("127.0.0.1", 2), config)
    request = conn.next_request()
    assert request is not None
    app = answer_with("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")], [b"{}"])
    assert conn.respond(request, app, must_close=False) is True
    assert len(sent) == 1
    head, _, body = sent[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nServer: distributed-echo-system\r\nDate: ")
    assert b"\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: 2" in head
    assert body == b"{}"
    assert conn.next_request() is None  # EOF


def test_framing_follows_the_body_the_app_gives(serve: Callable[..., WorkerServing]) -> None:
    """No length: chunked on HTTP/1.1, close-delimited on 1.0; a longer body is cut at its Content-Length;
    HEAD, 204 and 304 carry no body (204 no Content-Length); hop-by-hop fields from the app are dropped."""

    def generated() -> Iterator[bytes]:
        yield b"part one, "
        yield b""
        yield b"part two"

    cases: list[tuple[WSGIApp, bytes, int, dict[str, str | None], bytes]] = [
        (answer_with("200 OK", [], generated()), GET, 2, {"transfer-encoding": "chunked"}, b"part one, part two"),
        (answer_with("200 OK", [], [b"old"]), b"GET / HTTP/1.0\r\n\r\n", 1, {"connection": "close"}, b"old"),
        (answer_with("200 OK", [("Content-Length", "3")], [b"abcdef"]), GET, 2, {"content-length": "3"}, b"abc"),
        (answer_with("200 OK", [("Content-Length", "3")], [b"abc"]), b"HEAD / HTTP/1.1\r\n\r\n", 2,
         {"content-length": "3"}, b""),
        (answer_with("204 No Content", [("Content-Length", "0")], []), GET, 2, {"content-length": None}, b""),
        (answer_with("200 OK", [("Content-Length", "0"), ("Connection", "close"), ("Server", "other"),
                                ("Transfer-Encoding", "gzip")], []), GET, 2,
         {"connection": "keep-alive", "server": SERVER_NAME, "transfer-encoding": None}, b""),
    ]
    for app, request, answers, headers, body in cases:
        server = serve(app)
        # A second request after the first: the first answer's framing must let the client find its end.
        got, _ = exchange(server, request + (GET_CLOSE if answers == 2 else b""), answers)
        for name, value in headers.items():
            assert got[0].headers.get(name) == value, (request, got[0].headers)
        assert got[0].body == body
        if answers == 2:
            assert got[1].status == got[0].status  # found where the first answer ended


def test_app_errors_are_a_json_500_and_never_a_traceback(
    serve: Callable[..., WorkerServing], caplog: pytest.LogCaptureFixture
) -> None:
    """An exception out of the app, or a header value that would split the answer, is a JSON 500 that closes."""

    def broken(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("secret internals")

    splitting = answer_with("200 OK", [("X-Bad", "a\r\nSet-Cookie: x=1")], [b"body"])
    for app in (broken, splitting):
        answer = raw_request(serve(app).port, GET)
        assert answer.status == 500
        assert answer.json() == {"error": "Internal Server Error"}
        assert answer.headers["connection"] == "close"
        assert b"secret" not in answer.body and b"Set-Cookie" not in answer.body
    assert "Error handling request" in caplog.text


# --- what gunicorn refuses, refused the same way ---

REFUSED: dict[str, tuple[bytes, int]] = {
    "garbage": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n", 400),
    "HTTP/0.9": (b"GET /echo\r\n\r\n", 400),
    "HTTP/2.0 in an HTTP/1 request line": (b"GET / HTTP/2.0\r\n" + CLOSE, 400),
    "bare LF": (b"GET / HTTP/1.1\nHost: x\n\n", 400),
    "raw UTF-8 in the target": ("GET /é HTTP/1.1\r\n".encode() + CLOSE, 400),
    "two Host headers": (b"GET / HTTP/1.1\r\nHost: a\r\n" + CLOSE, 400),
    "Content-Length and Transfer-Encoding": (b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n"
                                             + CLOSE, 400),
    "chunked HTTP/1.0": (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "unknown transfer coding": (b"POST / HTTP/1.1\r\nTransfer-Encoding: magic\r\n" + CLOSE, 501),
    "obsolete line folding": (b"GET / HTTP/1.1\r\nX-A: 1\r\n  folded\r\n" + CLOSE, 400),
    "asterisk-form GET": (b"GET * HTTP/1.1\r\n" + CLOSE, 400),
    "request line over the limit": (b"GET /" + b"a" * MAX_REQUEST_LINE_BYTES + b" HTTP/1.1\r\n" + CLOSE, 414),
    "a header field over 8190 bytes": (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 8190 + b"\r\n" + CLOSE, 431),
    "more than 100 header fields": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + CLOSE,
                                    431),
}


@pytest.mark.parametrize("label", list(REFUSED))
def test_refused_requests_get_gunicorns_json_answer_and_close(serve: Callable[..., WorkerServing], label: str) -> None:
    """What gunicorn's parser refuses gets the same status, a JSON body with error and details, and a close."""
    app = Recorder()
    server = serve(app, limit_request_fields=100, limit_request_field_size=8190)
    data, status = REFUSED[label]
    answer = raw_request(server.port, data, timeout=5)
    assert answer.status == status, answer.body
    assert answer.headers["content-type"] == "application/json" and answer.headers["connection"] == "close"
    body = answer.json()
    assert isinstance(body["error"], str) and isinstance(body["details"], str)
    assert app.environs == []


def test_the_request_line_limit_is_exact_and_named(serve: Callable[..., WorkerServing]) -> None:
    """A request line of exactly MAX_REQUEST_LINE_BYTES is served; one byte more is a 414 naming both sizes."""
    server = serve(Recorder())
    fits = b"GET /" + b"a" * (MAX_REQUEST_LINE_BYTES - len("GET / HTTP/1.1")) + b" HTTP/1.1\r\n"
    assert len(fits) - 2 == MAX_REQUEST_LINE_BYTES
    assert raw_request(server.port, fits + CLOSE).status == 200
    over = fits.replace(b"/a", b"/aa", 1)
    answer = raw_request(server.port, over + CLOSE)
    assert answer.status == 414
    assert answer.json()["details"] == f"Request Line is too large ({MAX_REQUEST_LINE_BYTES + 1} > 8190)"


def test_a_head_that_never_ends_is_refused_at_gunicorns_buffer_bound(serve: Callable[..., WorkerServing]) -> None:
    """A field that never ends (llhttp holds it until it does) is a 431 once the head passes gunicorn's bound
    (fields x (field size + 2) + 4, plus the request line): here 1 x 102 + 4 + 8190 bytes."""
    server = serve(Recorder(), limit_request_fields=1, limit_request_field_size=100)
    with server.connect() as sock, sock.makefile("rb") as stream:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Endless: " + b"a" * 9000)
        answer = read_answer(stream)
    assert answer.status == 431
    assert answer.json()["details"] == "Error parsing headers: 'max buffer headers'"


def test_a_bad_request_after_a_good_one_is_refused_after_the_good_one_is_answered(
    serve: Callable[..., WorkerServing],
) -> None:
    """Pipelined: the valid request's answer first, then the 400 for the malformed one, then the close."""
    server = serve(Recorder())
    answers, rest = exchange(server, GET + b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 2)
    assert [a.status for a in answers] == [200, 400]
    assert rest == b""


# --- time: slow clients, idle connections, draining ---


def test_a_silent_or_slow_client_is_dropped_after_the_keep_alive_timeout(serve: Callable[..., WorkerServing]) -> None:
    """A connection that sends nothing, or half a head, is closed after ``keepalive`` seconds, not held."""
    server = serve(Recorder(), keepalive=1)
    with server.connect(timeout=10) as silent, server.connect(timeout=10) as partial_head:
        partial_head.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for sock in (silent, partial_head):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""  # closed (a timeout here would raise instead)


def test_the_keep_alive_timeout_counts_from_each_answer_not_from_the_connection(
    serve: Callable[..., WorkerServing],
) -> None:
    """A client that sends its next request within ``keepalive`` seconds of each answer keeps its
    connection for longer than ``keepalive`` in all: every wait for a next request gets the full time."""
    server = serve(Recorder(), keepalive=1)
    with server.connect(timeout=5) as sock, sock.makefile("rb") as stream:
        started = time.monotonic()
        for _ in range(6):  # 6 requests 0.3 s apart: 1.5 s on one connection, each gap well inside 1 s
            sock.sendall(GET)
            assert read_answer(stream).headers["connection"] == "keep-alive"
            time.sleep(0.3)  # the idle gap under test, not a wait for a condition
        assert time.monotonic() - started > 1.5
        sock.sendall(GET)
        assert read_answer(stream).status == 200  # still the same connection


def _hub_busy_while(server: WorkerServing, seconds: float, send: Callable[[], object]) -> None:
    """Keep the worker's loop from running for ``seconds`` (a blocking call in the hub, as a CPU-bound
    turn would), and ``send`` while it is stopped: the loop's next turn finds that input and the
    expired keep-alive timer together."""
    stopped = threading.Event()

    def block() -> None:
        stopped.set()
        time.sleep(seconds)  # not gevent's sleep: nothing else in that thread runs meanwhile

    blocker = threading.Thread(target=server.call, args=(block,))
    blocker.start()
    assert stopped.wait(5), "the worker's loop did not stop"
    send()
    blocker.join(timeout=seconds + 5)


def test_a_request_waiting_when_the_keep_alive_runs_out_is_answered_not_reset(
    serve: Callable[..., WorkerServing],
) -> None:
    """A next request already at the server when its keep-alive time runs out (the worker was busy) is
    answered on that connection, not dropped with a reset."""
    server = serve(Recorder(), keepalive=1)
    with server.connect(timeout=5) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET)
        assert read_answer(stream).status == 200
        _hub_busy_while(server, 1.5, lambda: sock.sendall(GET))
        assert read_answer(stream).status == 200


def test_a_next_head_begun_as_the_keep_alive_runs_out_gets_one_more_keep_alive_at_most(
    serve: Callable[..., WorkerServing],
) -> None:
    """A client that had begun its next request when the keep-alive ran out, and sends no more, is closed
    one keep-alive time later: the allowance is given once, not each time the time runs out."""
    server = serve(Recorder(), keepalive=1)
    with server.connect(timeout=10) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET)
        assert read_answer(stream).status == 200
        _hub_busy_while(server, 1.5, lambda: sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: "))
        resumed = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""  # closed (a timeout here would raise instead)
        assert time.monotonic() - resumed < 1 + 1.5  # one more keep-alive, with room for a busy machine


def test_a_stopping_worker_closes_idle_connections_and_says_close_on_busy_ones(
    serve: Callable[..., WorkerServing],
) -> None:
    """After _stop_accepting: an idle keep-alive connection is closed once IDLE_CLOSE_GRACE_S has passed,
    and a connection that sends its next request in that time is answered with Connection: close."""
    server = serve(Recorder())
    with server.connect() as idle, idle.makefile("rb") as idle_stream, server.connect() as busy, \
            busy.makefile("rb") as busy_stream:
        for sock, stream in ((idle, idle_stream), (busy, busy_stream)):
            sock.sendall(GET)
            assert read_answer(stream).headers["connection"] == "keep-alive"
        server.call(server.worker._stop_accepting)
        busy.sendall(GET)
        assert read_answer(busy_stream).headers["connection"] == "close"
        idle.settimeout(IDLE_CLOSE_GRACE_S + 5)
        assert idle.recv(100) == b""


def test_a_connection_answering_when_the_worker_stops_is_closed_once_idle(
    serve: Callable[..., WorkerServing],
) -> None:
    """SIGTERM while a keep-alive answer is on its way (the answer still says keep-alive): the connection
    is closed after IDLE_CLOSE_GRACE_S of idling, not held for the whole keep-alive timeout."""
    worker: list[GracefulGeventWorker] = []

    def stops_the_worker(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        worker[0]._stop_accepting()  # as the signal handler would, while this request is in flight
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    server = serve(stops_the_worker, keepalive=30)
    worker.append(server.worker)
    with server.connect(timeout=IDLE_CLOSE_GRACE_S + 5) as sock, sock.makefile("rb") as stream:
        sock.sendall(GET)
        assert read_answer(stream).headers["connection"] == "keep-alive"
        assert stream.read() == b""  # closed (a timeout would raise)


def test_after_max_requests_the_worker_stops_and_the_answer_closes(serve: Callable[..., WorkerServing]) -> None:
    """max_requests: the request that reaches it is answered with Connection: close and the worker stops."""
    server = serve(Recorder(), max_requests=2)
    answers, rest = exchange(server, GET + GET, 2)
    assert [a.headers["connection"] for a in answers] == ["keep-alive", "close"]
    assert rest == b"" and server.worker.alive is False


def test_a_client_that_disconnects_mid_request_is_not_an_error(
    serve: Callable[..., WorkerServing], caplog: pytest.LogCaptureFixture
) -> None:
    """Half a head, a body cut short, or a reset: the worker just closes the connection, nothing logged above debug."""
    server = serve(Recorder())
    for data in (b"GET / HTTP/1.1\r\nHost:", b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort"):
        with server.connect() as sock:
            sock.sendall(data)
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        sock.sendall(b"GET / HTTP/1.1\r\n")
    assert raw_request(server.port, GET.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")).status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_configurations_http11_does_not_speak_are_left_to_gunicorn() -> None:
    """TLS, HTTP/2, the PROXY protocol and per-request hooks keep gunicorn's own connection handling."""

    def worker(**settings: Any) -> GracefulGeventWorker:
        cfg = Config()
        for name, value in settings.items():
            cfg.set(name, value)
        made = GracefulGeventWorker(1, os.getpid(), [], None, 30, cfg, logging.getLogger("tests.http11"))
        made.tmp.close()
        return made

    assert not worker()._gunicorn_serves()
    assert worker(proxy_protocol="v1")._gunicorn_serves()
    assert worker(http_protocols="h2,h1")._gunicorn_serves()
    assert worker(pre_request=lambda worker, req: None)._gunicorn_serves()

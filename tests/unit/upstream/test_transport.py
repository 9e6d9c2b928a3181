"""B's own HTTP/1.1 transport: the strict response parser, keep-alive, chunked bodies, stale
connections and caps, against raw loopback servers that answer exactly the bytes a test scripts."""

from __future__ import annotations

import dataclasses
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from echokit.settings import service_b_settings
from echokit.upstream import BAD_RESPONSE, EchoClient, UpstreamError
from echokit.upstream.transport import (
    MAX_BODY_BYTES,
    ConnectionPool,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
    _parse_head,
)
from tests.support.live import serving

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n" + b'{"echo":"hello"}'


class RawServer(socketserver.ThreadingTCPServer):
    """Answers the n-th request (counted over all connections) with ``script[n]`` (the last repeats).

    An answer is bytes, or a callable given the socket (to close, stall or split its answer).
    After answering, the connection stays open for the next request unless ``close_after`` is set.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, script: list[bytes | Callable[[socket.socket], None]], close_after: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), RawHandler)
        self.script = script
        self.close_after = close_after
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[bytes] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class RawHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: RawServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.settimeout(5)
        with server.lock:
            server.connections += 1
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
            request, _, buf = buf.partition(b"\r\n\r\n")
            with server.lock:
                server.requests.append(request)
                answer = server.script[min(len(server.requests) - 1, len(server.script) - 1)]
            if callable(answer):
                answer(sock)
                return
            sock.sendall(answer)
            if server.close_after:
                return


@pytest.fixture
def raw_server() -> Iterator[Callable[..., RawServer]]:
    stack: list[object] = []

    def start(script: list[bytes | Callable[[socket.socket], None]], close_after: bool = False) -> RawServer:
        context = serving(RawServer(script, close_after))
        server = context.__enter__()
        stack.append(context)
        return server

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


def pool_for(server: RawServer, maxsize: int = 4) -> ConnectionPool:
    return ConnectionPool("127.0.0.1", server.port, maxsize, f"127.0.0.1:{server.port}", "")


def get(pool: ConnectionPool, timeout_s: float = 2.0) -> tuple[int, bytes]:
    return pool.request("/echo?msg=hello", b"X-Request-Timeout-Ms: 2000\r\n", 0.5, timeout_s)


# --- the parser on its own ---------------------------------------------------------------------


def test_a_plain_head_parses_to_status_keep_alive_and_length():
    """HTTP/1.1 keeps the connection by default; HTTP/1.0 and Connection: close do not."""
    assert _parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5") == (200, True, 5, False)
    closing = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 2"
    assert _parse_head(closing)[:2] == (503, False)
    assert _parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 5")[:2] == (200, False)
    assert _parse_head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 5")[:2] == (200, True)
    assert _parse_head(b"HTTP/1.1 200\r\ntransfer-encoding: chunked") == (200, True, None, True)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/2 200 OK",
        b"ICY 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.1 200 OK\nContent-Length: 5",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\rX: y",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded",
        b"HTTP/1.1 200 OK\r\nContent-Length : 5",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked",
    ],
)
def test_anything_but_a_clean_http_1_head_is_refused(head):
    """Versions other than 1.x, interim statuses, bare CR/LF, folding, ambiguous framing: ResponseError."""
    with pytest.raises(ResponseError):
        _parse_head(head)


# --- over real sockets ---------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_and_sends_the_precomputed_request(raw_server):
    """Two calls, one connection; the request is the GET line, Host, and the caller's header lines."""
    server = raw_server([OK])
    pool = pool_for(server)
    assert get(pool) == (200, b'{"echo":"hello"}')
    assert get(pool) == (200, b'{"echo":"hello"}')
    assert server.connections == 1
    lines = server.requests[0].split(b"\r\n")
    assert lines[0] == b"GET /echo?msg=hello HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}".encode() in lines
    assert b"X-Request-Timeout-Ms: 2000" in lines
    pool.close()


def test_connection_close_is_honoured(raw_server):
    """An answer with Connection: close is read, and the next call opens a new connection."""
    closing = OK.replace(b"Content-Length", b"Connection: close\r\nContent-Length")
    server = raw_server([closing], close_after=True)
    pool = pool_for(server)
    assert get(pool)[0] == 200
    assert pool.pool.queue == []
    assert get(pool)[0] == 200
    assert server.connections == 2


def test_a_chunked_body_is_decoded(raw_server):
    """Transfer-Encoding: chunked is accepted and decoded strictly, split across packets or not."""

    def split(sock: socket.socket) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"echo\":")
        time.sleep(0.02)
        sock.sendall(b"\r\n8;ext=1\r\n\"hello\"}\r\n0\r\n\r\n")

    server = raw_server([split])
    assert get(pool_for(server)) == (200, b'{"echo":"hello"}')


def test_a_body_split_over_several_packets_is_read_whole(raw_server):
    def slow(sock: socket.socket) -> None:
        sock.sendall(OK[:20])
        time.sleep(0.02)
        sock.sendall(OK[20:-3])
        time.sleep(0.02)
        sock.sendall(OK[-3:])

    assert get(pool_for(raw_server([slow]))) == (200, b'{"echo":"hello"}')


def test_a_body_over_the_cap_is_refused_before_it_is_read(raw_server):
    server = raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1)])
    with pytest.raises(ResponseError, match="larger than"):
        get(pool_for(server))


def test_a_stale_keep_alive_connection_is_retried_once_at_once(raw_server):
    """A closes a kept-alive connection while it is idle: the next call still succeeds, on a new one."""

    def answer_then_close(sock: socket.socket) -> None:
        sock.sendall(OK)  # keep-alive for B, but A closes it right after (its keep-alive timeout)

    server = raw_server([answer_then_close, OK])
    pool = pool_for(server)
    assert get(pool)[0] == 200
    time.sleep(0.05)  # the close reaches B's idle connection
    assert get(pool) == (200, b'{"echo":"hello"}')
    assert server.connections == 2
    assert len(server.requests) == 2  # the stale connection saw no request: A answered each once


def test_a_fresh_connection_closed_without_an_answer_is_an_error_after_sending(raw_server):
    """No silent resend on a new connection: the caller learns the request was sent (retry with backoff)."""
    server = raw_server([lambda sock: None])
    with pytest.raises(ProtocolError) as caught:
        get(pool_for(server))
    assert caught.value.sent
    assert "closed connection without response" in str(caught.value)


def test_reads_end_at_the_deadline(raw_server):
    server = raw_server([lambda sock: time.sleep(1.0)])
    started = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        get(pool_for(server), timeout_s=0.2)
    assert time.monotonic() - started < 0.9


def test_the_pool_never_waits_and_keeps_at_most_its_size(raw_server):
    """Beyond the pool size a fresh connection is opened (no queueing) and closed after use."""

    def slow_ok(sock: socket.socket) -> None:
        time.sleep(0.1)
        sock.sendall(OK)

    server = raw_server([slow_ok])
    pool = pool_for(server, maxsize=1)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(get(pool)[0])) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results == [200, 200, 200]
    assert server.connections == 3
    assert len(pool.pool.queue) == 1


def test_garbage_from_a_is_a_502_invalid_response(raw_server):
    """Bytes that are not HTTP make B answer 502 'Invalid response from Service A', not retried."""
    server = raw_server([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"])
    settings = dataclasses.replace(
        service_b_settings({"SERVICE_A_URL": f"http://127.0.0.1:{server.port}"}).upstream, timeout_s=1.0
    )
    client = EchoClient(settings)
    try:
        with pytest.raises(UpstreamError) as caught:
            client.echo("hello")
    finally:
        client.close()
    assert (caught.value.status, caught.value.error, caught.value.outcome) == (502, BAD_RESPONSE, "bad_response")
    assert len(server.requests) == 1


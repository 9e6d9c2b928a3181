"""Hostile and oversized input over raw sockets, against real processes in both server modes.

Every case must end in a 4xx whose body is JSON with an ``error`` string, promptly: never a 5xx,
an HTML page or a hang. Limits (see docs/testing.md, Limits): MAX_MSG_BYTES (default 4096
UTF-8 bytes) -> 414; gunicorn's limit_request_line 8190 -> 414, limit_request_field_size 8190 and
limit_request_fields 100 -> 431, keepalive 5 s = how long a silent client may hold a connection.
The development server's own limits are http.server's: 65536-byte lines, 100 headers.
"""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import quote

import pytest

from echokit.settings import MAX_REQUEST_LINE_BYTES
from tests.support.raw import CLOSE, RawAnswer, raw_request

HEADER_TIMEOUT_S = 5.0  # gunicorn.conf.py keepalive; the proposed dev-server handler timeout
MARGIN_S = 3.0  # scheduling slack on a busy 2-core machine


def assert_json_4xx(answer: RawAnswer, expected: int | set[int], label: str) -> dict[str, Any]:
    statuses = {expected} if isinstance(expected, int) else expected
    assert answer.status in statuses, f"{label}: got {answer.status} {answer.body[:200]!r}"
    assert answer.headers.get("content-type", "").startswith("application/json"), f"{label}: {answer.headers}"
    body = answer.json()
    assert isinstance(body.get("error"), str) and body["error"], f"{label}: {body}"
    assert answer.elapsed_s < HEADER_TIMEOUT_S, f"{label}: took {answer.elapsed_s:.1f}s"
    return body


def get(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\n".encode("latin-1") + extra + CLOSE


# Malformed requests gunicorn answers itself, before any app code runs: request bytes, expected status(es).
MALFORMED: dict[str, tuple[bytes, int | set[int]]] = {
    "TLS handshake bytes": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n", 400),
    "HTTP/0.9 request line": (b"GET /echo\r\n\r\n", 400),
    "unknown HTTP version": (get("/echo").replace(b"HTTP/1.1", b"HTTP/9.9", 1), {400, 505}),
    "NUL in request target": (get("/ec\x00ho"), {400, 404}),
    "raw ESC in request target": (get("/e\x1bcho"), {400, 404}),
    "Content-Length and Transfer-Encoding": (get("/echo", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400),
    "non-numeric Content-Length": (get("/echo", b"Content-Length: abc\r\n"), 400),
    "negative Content-Length": (get("/echo", b"Content-Length: -1\r\n"), 400),
    "space in header name": (get("/echo", b"Bad Header: x\r\n"), 400),
    "header line without colon": (get("/echo", b"NoColon\r\n"), 400),
    "two Host headers": (get("/echo", b"Host: other\r\n"), 400),
    "bare LF line endings": (b"GET /echo?msg=x HTTP/1.1\nHost: x\nConnection: close\n\n", 400),
    "raw UTF-8 bytes in request target": ("GET /echo?msg=héllo HTTP/1.1\r\n".encode() + CLOSE, 400),
}

MSG_CASES = {  # query string -> (status, error)
    "msg=%zz": (400, "Invalid percent-encoding in 'msg' parameter"),
    "msg=abc%": (400, "Invalid percent-encoding in 'msg' parameter"),
    "msg=%e2%82": (400, "Invalid UTF-8 in 'msg' parameter"),
    "msg=%ff": (400, "Invalid UTF-8 in 'msg' parameter"),
    "msg=%c0%af": (400, "Invalid UTF-8 in 'msg' parameter"),  # overlong encoding of '/'
    "msg=%ed%a0%80": (400, "Invalid UTF-8 in 'msg' parameter"),  # a UTF-16 surrogate
}


def test_gunicorn_answers_malformed_requests_with_json_400(pair):
    """Each malformed request gets a prompt JSON 4xx from gunicorn (A and B alike), never a 5xx or a hang."""
    a, b = pair("gunicorn")
    for label, (data, expected) in MALFORMED.items():
        for service in (a, b):
            assert_json_4xx(raw_request(service.port, data), expected, f"{service.name}: {label}")
    assert a.proc.poll() is None and b.proc.poll() is None


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_server_size_limits_answer_json_414_and_431(pair, mode):
    """An over-long request line gets 414, an over-long header or too many headers 431: JSON, at once."""
    a, _ = pair(mode)
    line = 9000 if mode == "gunicorn" else 70_000
    answer = raw_request(a.port, get("/echo?msg=" + "a" * line))
    body = assert_json_4xx(answer, 414, "request line")
    if mode == "gunicorn":
        assert f"> {MAX_REQUEST_LINE_BYTES})" in body["details"], body  # names the limit
    big_header = b"X-Big: " + b"a" * line + b"\r\n"
    assert_json_4xx(raw_request(a.port, get("/health", big_header)), 431, "header field size")
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    assert_json_4xx(raw_request(a.port, get("/health", many)), 431, "header count")
    assert a.get("/health").status_code == 200


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_msg_limit_is_configurable_and_named_in_the_414(chain, mode):  # own processes: its own setting
    """MAX_MSG_BYTES sets the limit: one byte over gets a JSON 414 naming it, from A and from B."""
    a, b = chain(mode=mode, a_env={"MAX_MSG_BYTES": "16"}, b_env={"MAX_MSG_BYTES": "16"})
    expected = {"error": "'msg' parameter too long: 17 bytes, the limit is 16"}
    for service, path in ((a, "/echo"), (b, "/call-echo")):
        ok = service.get(f"{path}?msg=" + quote("é" * 8))  # exactly 16 bytes
        assert ok.status_code == 200, ok.text
        over = service.get(f"{path}?msg=" + quote("é" * 8 + "a"))
        assert over.status_code == 414
        assert over.json() == expected


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_invalid_percent_encoding_and_utf8_get_json_400(pair, mode):
    """Invalid percent-encoding or invalid UTF-8 in msg gets a JSON 400 saying which, from A and from B."""
    a, b = pair(mode)

    def outbound_calls() -> int:  # B is shared by the session: count only the calls made from here on
        return sum("outbound GET" in line for line in b.log_lines())

    before = outbound_calls()
    for query, (status, error) in MSG_CASES.items():
        for service, path in ((a, "/echo"), (b, "/call-echo")):
            answer = raw_request(service.port, get(f"{path}?{query}"))
            assert answer.status == status, (service.name, query, answer.body)
            assert answer.json() == {"error": error}
    assert outbound_calls() == before, "B never called A with a bad msg"


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_non_get_methods_get_json_405_with_allow(pair, mode):
    """Every method but GET/HEAD on every route (OPTIONS too) gets a JSON 405 naming the allowed methods."""
    a, b = pair(mode)
    routes = [(a, ["/echo", "/health", "/ready", "/metrics", "/openapi.json"]), (b, ["/call-echo", "/health"])]
    count = 0
    for service, paths in routes:
        for path in paths:
            for method in ("POST", "PUT", "DELETE", "PATCH", "TRACE", "OPTIONS"):
                request = f"{method} {path} HTTP/1.1\r\nContent-Length: 0\r\n".encode() + CLOSE
                answer = raw_request(service.port, request)
                assert_json_4xx(answer, 405, f"{method} {path}")
                assert sorted(m.strip() for m in answer.headers["allow"].split(",")) == ["GET", "HEAD"]
                count += 1
    assert count == 42


def test_large_body_is_never_read_into_memory(pair):
    """A 1 MB body on POST gets the JSON 405 without the server reading it; the service stays healthy."""
    a, _ = pair("gunicorn")
    data = b"POST /echo HTTP/1.1\r\nContent-Length: 1000000\r\n" + CLOSE + b"a" * 1_000_000
    assert_json_4xx(raw_request(a.port, data), {405, 413}, "1 MB body")
    assert a.get("/health").status_code == 200


def open_idle_connections(port: int, silent: int, partial: int) -> list[socket.socket]:
    """``silent`` connections that send nothing and ``partial`` ones that stop in the middle of the headers."""
    socks = []
    for i in range(silent + partial):
        sock = socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT_S + MARGIN_S + 2)
        if i >= silent:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(sock)
    return socks


def assert_dropped_within_header_timeout(socks: list[socket.socket], opened_at: float) -> float:
    """Each socket is closed by the server (EOF or reset) within the header timeout plus margin."""
    latest = 0.0
    for sock in socks:
        try:
            data = sock.recv(1024)  # blocks until the server closes, or the socket timeout
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail(f"a slow client was still connected {time.monotonic() - opened_at:.1f}s after connecting")
        finally:
            sock.close()
        assert data == b"" or data.startswith(b"HTTP/1.1 4"), data[:100]
        latest = max(latest, time.monotonic() - opened_at)
    assert latest <= HEADER_TIMEOUT_S + MARGIN_S, f"held for {latest:.1f}s"
    return latest


def slowloris(service) -> float:
    opened_at = time.monotonic()
    socks = open_idle_connections(service.port, silent=40, partial=10)
    try:
        # While 50 slow clients hold connections, a normal request is still answered promptly.
        started = time.monotonic()
        assert service.get("/health", timeout=3).status_code == 200
        assert time.monotonic() - started < 2.0
        return assert_dropped_within_header_timeout(socks, opened_at)
    finally:
        for sock in socks:
            sock.close()


def test_slow_clients_are_dropped_after_the_header_timeout_under_gunicorn(pair):
    """50 clients that send nothing or half a request neither block others nor stay past gunicorn's 5 s."""
    a, _ = pair("gunicorn")
    held = slowloris(a)
    print(f"\n[limits] gunicorn dropped 50 slow clients after at most {held:.1f}s")


def test_slow_clients_are_dropped_after_the_header_timeout_under_the_dev_server(pair):
    """Under ``python service_a/app.py`` too, a silent client is dropped after the header timeout."""
    a, _ = pair("dev")
    held = slowloris(a)
    print(f"\n[limits] dev server dropped 50 slow clients after at most {held:.1f}s")


def test_dev_server_answers_unparseable_request_lines_with_a_status_line(pair):
    """The dev server answers garbage, an unknown HTTP version and HTTP/0.9 with a real JSON 4xx/505."""
    a, _ = pair("dev")
    for label in ("TLS handshake bytes", "unknown HTTP version", "HTTP/0.9 request line",
                  "raw UTF-8 bytes in request target"):
        data, expected = MALFORMED[label]
        answer = raw_request(a.port, data, timeout=HEADER_TIMEOUT_S + MARGIN_S)
        assert_json_4xx(answer, expected if isinstance(expected, set) else {expected, 505}, label)


def test_b_refuses_a_msg_too_long_for_a_request_line_to_a_with_414(pair):
    """A msg B accepts but must percent-encode beyond A's request-line limit gets B's 414, not a 502."""
    _, b = pair("gunicorn")
    answer = raw_request(b.port, get("/call-echo?msg=" + "[" * 4000))  # raw '[' is legal; B must encode it
    body = assert_json_4xx(answer, 414, "msg too long once encoded")
    assert "limit" in body.get("details", body["error"])

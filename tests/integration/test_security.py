"""Security checks against real processes: log injection, SSRF, fault-injection switch, information leaks."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.support.harness import ServiceProcess
from tests.support.raw import CLOSE, raw_request

# Not escaped by json.dumps(ensure_ascii=False): DEL, C1 controls (NEL = U+0085) and U+2028/U+2029,
# on which str.splitlines() and some viewers break lines.
JSON_RAW_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")
LOG_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ ")
# What a response must never name: the frameworks, the language, or a traceback.
LEAKS = re.compile(r"traceback|werkzeug|flask|python|gunicorn|gevent|File \"", re.IGNORECASE)
HOSTILE = ["line1\r\nline2", "\n2026-01-01 00:00:00,000 INFO service_a GET /forged 200 0.01ms", "\x1b[31mred\x1b[0m",
           "\x1b]0;title\x07", "tab\there", "nul\x00byte", "\u2028sep\u2029", "\x85next-line", "\x7fdel"]


class Decoy:
    """A TCP listener on loopback that counts connections: proof of where B did (not) connect."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if close() is never called
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def decoy() -> Iterator[Decoy]:
    listener = Decoy()
    yield listener
    listener.close()


def assert_log_is_safe(service: ServiceProcess, json_format: bool = False) -> None:
    """Every line is one whole record and nothing a client sent put a raw control character in it."""
    lines = service.log_text().split("\n")[:-1]  # records end in "\n"; split on nothing else
    assert lines
    for line in lines:
        if json_format:
            assert isinstance(json.loads(line), dict), f"not one JSON record: {line!r}"
        else:
            assert LOG_RECORD_START.match(line), f"split record: {line!r}"
            assert not JSON_RAW_UNSAFE.search(line), f"raw control character: {line!r}"
        assert not re.search("[\x00-\x08\x0b-\x1f]", line), f"raw control character: {line!r}"
    assert "/forged 200" not in "\n".join(line for line in lines if line.startswith("2026-01-01"))


@pytest.mark.parametrize(("mode", "log_format"), [("gunicorn", "text"), ("dev", "text"), ("gunicorn", "json")])
def test_control_characters_from_clients_are_escaped_in_logs(pair, chain, mode, log_format):
    """CR/LF, ANSI escapes and other controls in path, msg and headers never start a forged log line."""
    if log_format == "text":
        a, b = pair(mode)
    else:
        a, b = chain(mode=mode, a_env={"LOG_FORMAT": log_format}, b_env={"LOG_FORMAT": log_format})
    for text in HOSTILE:
        encoded = quote(text, safe="")
        assert b.get(f"/call-echo?msg={encoded}").json() == {"msg": text, "echo_response": {"echo": text}}
        assert a.get(f"/{encoded}").status_code == 404  # the path is logged: escaped
        assert b.get(f"/nope/{encoded}").status_code == 404
        # A header a client controls: the request ID. Invalid ones are replaced, never logged or echoed.
        bad_id = "id-" + text.replace("\r", "").replace("\n", "").replace("\x00", "")
        answer = raw_request(b.port, b"GET /health HTTP/1.1\r\nX-Request-ID: " + bad_id.encode() + b"\r\n" + CLOSE)
        assert answer.status in (200, 400)
        if answer.status == 200 and not re.fullmatch(r"[A-Za-z0-9._:~+/=-]{1,128}", bad_id):
            assert re.fullmatch("[0-9a-f]{32}", answer.headers["x-request-id"]), answer.headers
    # Header values with raw CR/LF can only reach a server as a split header: gunicorn refuses, the app never sees it.
    raw_request(a.port, b"GET /health HTTP/1.1\r\nX-Request-ID: a\rb\r\n" + CLOSE)
    b.wait_for_log("/nope/")
    a.wait_for_log(" 404 ")
    for service in (a, b):
        assert_log_is_safe(service, json_format=log_format == "json")
    if log_format == "text":
        assert "GET /line1\\r\\nline2 404" in a.log_text()
        assert "GET /\\x1b[31mred\\x1b[0m 404" in a.log_text()


SSRF_ATTEMPTS = [
    # (description, request bytes builder given the decoy port)
    ("msg is a URL", lambda p: f"GET /call-echo?msg={quote(f'http://127.0.0.1:{p}/echo', safe='')} HTTP/1.1\r\n"),
    ("msg with @host", lambda p: f"GET /call-echo?msg=@127.0.0.1:{p} HTTP/1.1\r\n"),
    ("msg with path traversal", lambda p: "GET /call-echo?msg=../../admin%3F HTTP/1.1\r\n"),
    ("msg with encoded CRLF and Host", lambda p: f"GET /call-echo?msg=x%0d%0aHost:%20127.0.0.1:{p} HTTP/1.1\r\n"),
    ("msg with second query", lambda p: f"GET /call-echo?msg=x%26url%3Dhttp://127.0.0.1:{p} HTTP/1.1\r\n"),
    ("two msg parameters", lambda p: f"GET /call-echo?msg=x&msg=http://127.0.0.1:{p} HTTP/1.1\r\n"),
    ("url parameter", lambda p: f"GET /call-echo?msg=x&url=http://127.0.0.1:{p}&target=127.0.0.1:{p} HTTP/1.1\r\n"),
    ("absolute-form target", lambda p: f"GET http://127.0.0.1:{p}/call-echo?msg=x HTTP/1.1\r\n"),
    ("Host header", lambda p: f"GET /call-echo?msg=x HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n"),
    ("forwarding headers", lambda p: (
        f"GET /call-echo?msg=x HTTP/1.1\r\nX-Forwarded-Host: 127.0.0.1:{p}\r\nForwarded: host=127.0.0.1:{p}\r\n"
        f"X-Original-URL: http://127.0.0.1:{p}/\r\nX-Rewrite-URL: http://127.0.0.1:{p}/\r\n")),
    ("Referer and Origin", lambda p: f"GET /call-echo?msg=x HTTP/1.1\r\nReferer: http://127.0.0.1:{p}/\r\nOrigin: http://127.0.0.1:{p}\r\n"),
]


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_b_only_ever_calls_its_configured_a(pair, decoy, mode):
    """Whatever URL, host or header a client puts in its request, B connects to its SERVICE_A_URL only."""
    a, b = pair(mode)
    for label, build in SSRF_ATTEMPTS:
        head = build(decoy.port)
        data = head.encode() + (b"Connection: close\r\n\r\n" if "Host:" in head else CLOSE)
        answer = raw_request(b.port, data)
        assert answer.status in (200, 400), f"{label}: {answer.status} {answer.body[:200]!r}"
        if answer.status == 200:
            body = answer.json()
            assert body["echo_response"] == {"echo": body["msg"]}, label  # msg travelled as data, unchanged
    assert decoy.connections == 0, f"B connected to the decoy {decoy.connections} times"
    outbound = [line for line in b.log_lines() if "outbound GET" in line]
    assert len(outbound) >= len(SSRF_ATTEMPTS) - 2  # (includes other tests' calls on the shared B)
    assert all(f"outbound GET {a.url}/echo " in line for line in outbound), outbound


def test_fault_injection_is_off_unless_enabled_at_start_up(pair, services):
    """A without FAULT_* never injects, whatever a request asks; with FAULT_ERROR_RATE=1 at start-up it does."""
    a, _ = pair("gunicorn")
    tricks = ["/echo?msg=x&fault=1&delay_ms=5000&error_rate=1", "/echo?msg=x&FAULT_ERROR_RATE=1"]
    headers = {"X-Fault-Delay-Ms": "5000", "X-Fault-Error-Rate": "1", "X-Debug": "1", "X-Request-Timeout-Ms": "1000"}
    for _ in range(20):
        for path in tricks:
            started = time.monotonic()
            response = a.get(path, headers=headers)
            assert response.status_code == 200 and response.json() == {"echo": "x"}
            assert time.monotonic() - started < 2.0
    assert "fault injection ON" not in a.log_text()
    faulty = services("a", mode="dev", env={"FAULT_ERROR_RATE": "1", "FAULT_ERROR_STATUS": "503"})
    assert faulty.get("/echo?msg=x").status_code == 503
    faulty.wait_for_log("fault injection ON")


def collect_answers(a: ServiceProcess, b: ServiceProcess) -> list[tuple[str, dict[str, str], bytes]]:
    """Answers to ordinary and hostile requests of every kind, as (label, headers, body)."""
    answers = []
    for service, paths in ((a, ["/health", "/ready", "/echo?msg=x", "/echo?msg=%zz", "/echo?msg=%ff", "/nope"]),
                           (b, ["/health", "/ready", "/call-echo?msg=x", "/call-echo", "/call-echo?msg=%zz", "/x"])):
        for path in [*paths, "/echo?msg=" + "a" * 5000]:
            response = service.get(path)
            answers.append((f"{service.name} GET {path[:40]}", dict(response.headers), response.content))
        for data in (b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n" + CLOSE,
                     b"GET /echo?msg=" + b"a" * 70000 + b" HTTP/1.1\r\n" + CLOSE,
                     b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n" + CLOSE,
                     b"GET /health HTTP/1.1\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + CLOSE,
                     b"GET /health HTTP/1.1\r\nContent-Length: abc\r\n" + CLOSE):
            answer = raw_request(service.port, data)
            answers.append((f"{service.name} raw {data[:30]!r}", answer.headers, answer.body))
    return answers


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_no_stack_trace_framework_or_version_in_any_body(pair, mode):
    """No answer body (errors included) names a framework, the language or a version, or carries a traceback."""
    a, b = pair(mode)
    answers = collect_answers(a, b)
    for label, headers, body in answers:
        text = body.decode("utf-8", "replace")
        assert not LEAKS.search(text), f"{label}: {text[:300]}"
        server = {k.lower(): v for k, v in headers.items()}.get("server", "")
        assert not re.search(r"\d", server), f"{label}: Server header carries a version: {server!r}"
        assert not re.search("werkzeug|python|flask", server, re.IGNORECASE), f"{label}: Server {server!r}"
    print(f"\n[security] {mode}: {len(answers)} answers scanned")


def test_gunicorn_server_header_names_no_framework(pair):
    """Under gunicorn the Server header is the project's name, as under the dev server, not 'gunicorn'."""
    a, _ = pair("gunicorn")
    assert a.get("/health").headers.get("Server", "distributed-echo-system") == "distributed-echo-system"


def test_json_log_records_carry_no_raw_unicode_line_separators(services):
    """In JSON log format too, a client's DEL, NEL or U+2028 is escaped, so no line-splitting reader breaks a record."""
    a = services("a", mode="dev", env={"LOG_FORMAT": "json"})
    assert a.get("/" + quote("\u2028x\u2029y\x85z\x7f", safe="")).status_code == 404
    a.wait_for_log("x")
    assert not JSON_RAW_UNSAFE.search(a.log_text())

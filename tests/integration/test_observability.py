"""One request followed across real A and B processes: request ID, trace context, logs, metrics.

Each test stops its services with one SIGTERM to each gunicorn master at the end (the fixture's
cleanup would otherwise do it, more slowly), and sends every request on its own connection: an idle
keep-alive connection holds a gevent worker's graceful exit for the 5 s keep-alive time.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from tests.support.harness import ServiceProcess
from tests.support.metrics import metric

# The document's access line, exactly, then our suffixes.
TS = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
LATENCY = r"\d+\.\d\dms"
GENERATED_ID = re.compile(r"[0-9a-f]{32}\Z")
JSON_FIELDS = {"timestamp", "level", "logger", "message"}
ACCESS_FIELDS = {"method", "path", "status", "latency_ms", "request_id"}


def fetch(service: ServiceProcess, path: str, headers: dict[str, str] | None = None) -> requests.Response:
    """GET on a connection of its own that the server closes, so no idle keep-alive delays stop()."""
    return requests.get(service.url + path, headers={"Connection": "close", **(headers or {})}, timeout=5)


def stop(*services: ServiceProcess) -> None:
    """SIGTERM every service at once, then wait for each (faster than stopping them in turn)."""
    for service in services:
        if service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
    for service in services:
        service.proc.wait(timeout=15)


def wait_for_lines(service: ServiceProcess, pattern: str, count: int = 1, timeout: float = 10.0) -> list[str]:
    """The log lines matching ``pattern`` (a regex, searched), once there are ``count`` of them."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in service.log_lines() if regex.search(line)]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) >= count, f"{count} lines matching {pattern!r} expected:\n{service.log_text()}"
            return found
        time.sleep(0.05)


def raw_get(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 request over a plain socket, so header values go out exactly as given."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return int(head[0].split()[1]), {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}


def test_one_request_id_appears_in_every_line_and_header_of_both_services(chain):
    """The client's X-Request-ID (or B's own) is in B's access and outbound lines, A's access line and the headers."""
    a, b = chain(mode="gunicorn")
    try:
        response = fetch(b, "/call-echo?msg=hello", headers={"X-Request-ID": "order-42"})
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == "order-42"
        assert fetch(a, "/echo?msg=x", headers={"X-Request-ID": "direct-7"}).headers["X-Request-ID"] == "direct-7"
        wait_for_lines(b, rf"^{TS} INFO service_b GET /call-echo 200 {LATENCY} request_id=order-42$")
        outbound = rf"^{TS} INFO service_b outbound GET {a.url}/echo .* -> 200 success in .* request_id=order-42$"
        wait_for_lines(b, outbound)
        wait_for_lines(a, rf"^{TS} INFO service_a GET /echo 200 {LATENCY} request_id=order-42$")

        generated = fetch(b, "/call-echo?msg=hello").headers["X-Request-ID"]
        assert GENERATED_ID.match(generated)
        for service, count in ((b, 2), (a, 1)):
            assert len(wait_for_lines(service, rf" request_id={generated}$", count)) == count

        # Too long for the validator, short enough for gunicorn: replaced, never echoed or logged.
        too_long = "L" * 200
        status, headers = raw_get(b.port, "/call-echo?msg=hi", {"X-Request-ID": too_long})
        assert status == 200 and GENERATED_ID.match(headers["x-request-id"])
        wait_for_lines(a, rf" request_id={headers['x-request-id']}$")
        # 10 KB is past gunicorn's header-field limit: refused before the app, in JSON, not echoed.
        status, headers = raw_get(b.port, "/call-echo?msg=hi", {"X-Request-ID": "H" * 10240})
        assert status == 431 and "x-request-id" not in headers
        assert too_long not in b.log_text() + a.log_text()
        # Probes are logged by default (LOG_PROBES=true): gunicorn's health checks left lines.
        assert any(re.search(rf"INFO service_a GET /health 200 {LATENCY} request_id=", x) for x in a.log_lines())
    finally:
        stop(b, a)


def test_dev_server_replaces_a_10kb_id_and_can_leave_probes_out_of_the_log(services):
    """Under the dev server a 10 KB X-Request-ID is replaced, and LOG_PROBES=false drops probe lines only."""
    a = services("a", mode="dev", env={"LOG_PROBES": "false"})
    try:
        for path in ("/health", "/ready", "/metrics"):
            assert fetch(a, path).status_code == 200
        status, headers = raw_get(a.port, "/echo?msg=hi", {"X-Request-ID": "H" * 10240})
        assert status == 200 and GENERATED_ID.match(headers["x-request-id"])
        wait_for_lines(a, rf"^{TS} INFO service_a GET /echo 200 {LATENCY} request_id={headers['x-request-id']}$")
        access = [line for line in a.log_lines() if re.search(rf" {LATENCY} request_id=", line)]
        assert len(access) == 1, a.log_text()  # /health, /ready, /metrics and the start-up polls: none
        assert "HHHH" not in a.log_text()
    finally:
        stop(a)


def _spans(service: ServiceProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in service.log_lines() if line.startswith('{"name": ')]


def test_console_tracing_links_b_client_span_to_a_server_span_across_processes(chain):
    """With OTEL_TRACES_EXPORTER=console, A's server span is a child of B's client span, and logs carry the trace id."""
    otel = {"OTEL_TRACES_EXPORTER": "console"}
    a, b = chain(mode="gunicorn", a_env=otel, b_env=otel, workers=1)
    try:
        response = fetch(b, "/call-echo?msg=traced", headers={"X-Request-ID": "traced-1"})
        assert response.status_code == 200
        access_b = wait_for_lines(b, r"GET /call-echo 200 .* request_id=traced-1 trace_id=[0-9a-f]{32}$")[0]
        trace_id = access_b.rsplit("trace_id=", 1)[1]
        wait_for_lines(a, r'"name": "GET /echo"')
        wait_for_lines(b, r'"name": "GET /call-echo"')

        client = next(s for s in _spans(b) if s["kind"] == "SpanKind.CLIENT")
        b_server = next(s for s in _spans(b) if s["name"] == "GET /call-echo")
        a_server = next(s for s in _spans(a) if s["name"] == "GET /echo")
        assert client["context"]["trace_id"] == a_server["context"]["trace_id"] == f"0x{trace_id}"
        assert a_server["parent_id"] == client["context"]["span_id"]
        assert client["parent_id"] == b_server["context"]["span_id"]
        assert a_server["resource"]["attributes"]["service.name"] == "service_a"
        assert client["resource"]["attributes"]["service.name"] == "service_b"
        for service, pattern in ((b, "outbound GET "), (a, "GET /echo 200 ")):
            wait_for_lines(service, rf"{pattern}.* request_id=traced-1 trace_id={trace_id}$")
    finally:
        stop(b, a)


def test_json_log_mode_writes_one_object_per_line_with_the_request_fields(chain):
    """LOG_FORMAT=json: every line of both services (gunicorn's and spans too) is JSON, access lines with all fields."""
    env = {"LOG_FORMAT": "json", "OTEL_TRACES_EXPORTER": "console"}
    a, b = chain(mode="gunicorn", a_env=env, b_env=env, workers=1)
    try:
        assert fetch(b, "/call-echo?msg=json", headers={"X-Request-ID": "json-1"}).status_code == 200
        wait_for_lines(b, r'"request_id": "json-1"', 2)
        wait_for_lines(a, r'"request_id": "json-1"')
    finally:
        stop(b, a)
    records = {name: [json.loads(line) for line in s.log_lines()] for name, s in (("a", a), ("b", b))}
    for name, lines in records.items():
        logs = [r for r in lines if "logger" in r]
        assert logs and all(r.keys() >= JSON_FIELDS for r in logs), name
        assert any(r["logger"] == "gunicorn.error" for r in logs)  # gunicorn's own lines are JSON too
    [b_access] = [r for r in records["b"] if r.get("path") == "/call-echo"]
    [b_outbound] = [r for r in records["b"] if r.get("message", "").startswith("outbound GET ")]
    [a_access] = [r for r in records["a"] if r.get("path") == "/echo"]
    assert ACCESS_FIELDS | JSON_FIELDS | {"trace_id"} <= b_access.keys()
    assert ACCESS_FIELDS | JSON_FIELDS | {"trace_id"} <= a_access.keys()
    assert (b_access["method"], b_access["status"], b_access["level"]) == ("GET", 200, "INFO")
    assert isinstance(b_access["latency_ms"], float) and b_access["message"].startswith("GET /call-echo 200 ")
    assert b_access["request_id"] == b_outbound["request_id"] == a_access["request_id"] == "json-1"
    assert b_access["trace_id"] == b_outbound["trace_id"] == a_access["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", a_access["trace_id"])


def _stale_counter(directory: Path) -> None:
    """A leftover worker file from an earlier run that claims 1000 /echo requests."""
    directory.mkdir()
    stale = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key("http_requests", "http_requests_total", ["method", "route", "status"], ["GET", "/echo", "200"], "")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()


def _served_by(directory: Path, route: str) -> dict[str, float]:
    """Requests on ``route`` per worker pid, from each worker's own multiprocess file."""
    served: dict[str, float] = {}
    for path in directory.glob("counter_*.db"):
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _metric, sample, labels, _help = json.loads(key)
            if sample == "http_requests_total" and labels.get("route") == route:
                served[path.stem] = served.get(path.stem, 0.0) + value
    return served


def test_metrics_count_exactly_across_two_gunicorn_workers(chain, tmp_path):
    """N requests served by 2 gunicorn workers each read back as exactly N from /metrics, stale files ignored."""
    a_dir, b_dir = tmp_path / "metrics-a", tmp_path / "metrics-b"
    _stale_counter(a_dir)
    a, b = chain(
        mode="gunicorn", workers=2,
        a_env={"PROMETHEUS_MULTIPROC_DIR": str(a_dir)}, b_env={"PROMETHEUS_MULTIPROC_DIR": str(b_dir)},
    )
    try:
        sent, deadline = 0, time.monotonic() + 15
        # A new connection per request lets the kernel hand each one to either worker; go on
        # until both of B's workers have served some (bounded in count and time).
        while sent < 40 or (len(_served_by(b_dir, "/call-echo")) < 2 and sent < 400 and time.monotonic() < deadline):
            response = fetch(b, f"/call-echo?msg=n{sent}")
            assert response.status_code == 200
            sent += 1
        per_worker = _served_by(b_dir, "/call-echo")
        assert len(per_worker) == 2 and all(count > 0 for count in per_worker.values()), per_worker

        b_text = fetch(b, "/metrics").text
        a_text = fetch(a, "/metrics").text
        assert metric(b_text, "http_requests_total", method="GET", route="/call-echo", status="200") == sent
        assert metric(b_text, "http_request_duration_seconds_count", route="/call-echo", status="200") == sent
        assert metric(b_text, "upstream_requests_total", outcome="success") == sent
        assert metric(b_text, "upstream_requests_total") == sent
        assert metric(a_text, "http_requests_total", method="GET", route="/echo", status="200") == sent
        assert metric(a_text, "http_request_duration_seconds_bucket", route="/echo", le="+Inf") == sent
        assert metric(b_text, "circuit_breaker_state", state="closed") == 1
        assert metric(b_text, "http_requests_in_flight") == 1  # the scrape itself, whichever worker answers
    finally:
        stop(b, a)

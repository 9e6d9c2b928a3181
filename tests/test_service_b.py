"""Service B as a client sees it: the document's examples through a real A, and every way A can fail."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from echokit.resilience.clock import ManualClock
from echokit.settings import service_b_settings
from echokit.upstream import EchoClient
from service_b.app import create_app as create_service_b
from tests.support.waiting import wait_until

# Slack for "B answered at its deadline, not at A's pace": generous for a loaded machine, yet far below
# the slow A's delay of ten budgets.
SLACK_S = 1.2

UNAVAILABLE = "Service A unavailable"


def body(response: Any) -> str:
    return response.get_data(as_text=True)


# --- the document's examples -------------------------------------------------------------------


def test_health_answers_the_documents_body(client_b: FlaskClient) -> None:
    """GET /health on B answers 200 with exactly {"status":"ok"}."""
    response = client_b.get("/health")
    assert response.status_code == 200
    assert body(response) == '{"status":"ok"}'


def test_call_echo_answers_the_documents_body_through_a_real_a(client_b: FlaskClient) -> None:
    """GET /call-echo?msg=hello answers 200 with exactly the document's body, via a real A."""
    response = client_b.get("/call-echo?msg=hello")
    assert response.status_code == 200
    assert body(response) == '{"msg":"hello","echo_response":{"echo":"hello"}}'
    assert response.mimetype == "application/json"


@pytest.mark.parametrize("url", ["/call-echo", "/call-echo?msg=", "/call-echo?msg", "/call-echo?other=x"])
def test_missing_or_empty_msg_is_the_documents_400(client_b: FlaskClient, url: str) -> None:
    """A missing or empty msg answers 400 {"error":"Missing 'msg' parameter"}."""
    response = client_b.get(url)
    assert response.status_code == 400
    assert body(response) == '{"error":"Missing \'msg\' parameter"}'


@pytest.mark.parametrize(
    "msg",
    [
        "hello world", "héllo ✓ 日本語 🙂", "a&b=c", "#frag?q", "100% %41 %zz", "1+1=2",
        "it's \"q\"", "<b>x</b>", '{"echo":"x"}', "tab\tline\nbreak", "/:@!$'()*,;?~", "z" * 3000,
    ],
)
def test_hard_messages_survive_the_trip_through_a(client_b: FlaskClient, msg: str) -> None:
    """Whatever B receives is what it sends A and what comes back, byte for byte."""
    response = client_b.get("/call-echo?msg=" + quote(msg, safe=""))
    assert response.status_code == 200
    assert response.get_json() == {"msg": msg, "echo_response": {"echo": msg}}


def test_invalid_msg_is_rejected_before_calling_a(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any]
) -> None:
    """Undecodable or too long msg values are refused by B itself; A never sees them."""
    fake, server = scripted_a()
    client = make_b(server.url, {"MAX_MSG_BYTES": "5"}).test_client()
    assert client.get("/call-echo?msg=%ZZ").status_code == 400
    assert client.get("/call-echo?msg=%FF").status_code == 400
    too_long = client.get("/call-echo?msg=abcdef")
    assert too_long.status_code == 414
    assert too_long.get_json() == {"error": "'msg' parameter too long: 6 bytes, the limit is 5"}
    assert fake.hits == 0


# --- A is down, slow or misbehaving --------------------------------------------------------------


def test_refused_connection_is_a_503_with_connection_error_details(
    make_b: Callable[..., Flask], refused_url: str
) -> None:
    """With nothing listening at A's address, B answers 503 'Service A unavailable' + 'Connection error: ...'."""
    response = make_b(refused_url).test_client().get("/call-echo?msg=hello")
    assert response.status_code == 503
    data = response.get_json()
    assert set(data) == {"error", "details"}
    assert data["error"] == UNAVAILABLE
    assert data["details"].startswith("Connection error:")
    assert "Connection refused" in data["details"]


def test_hung_a_is_a_503_timeout_at_bs_deadline(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any], b_budget_s: float
) -> None:
    """When A never answers, B gives up at its budget and answers 503 saying A timed out."""
    fake, server = scripted_a()
    fake.hang()
    client = make_b(server.url).test_client()
    started = time.monotonic()
    response = client.get("/call-echo?msg=hello")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.get_json() == {
        "error": UNAVAILABLE,
        "details": f"Timeout: Service A did not answer within {b_budget_s:g}s",
    }
    assert elapsed < b_budget_s + SLACK_S


def test_slow_real_a_is_a_503_within_bs_budget(client_b_slow: FlaskClient, b_budget_s: float) -> None:
    """A real A delayed 10x past B's budget yields a 503 at B's deadline, not after A's delay."""
    started = time.monotonic()
    response = client_b_slow.get("/call-echo?msg=hello")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    data = response.get_json()
    assert data["error"] == UNAVAILABLE
    # A abandons the work at the same deadline with a 504, racing B's own read timeout: whichever
    # wins, the client must read the same timeout message.
    assert data["details"] == f"Timeout: Service A did not answer within {b_budget_s:g}s"
    assert elapsed < b_budget_s + SLACK_S


@pytest.fixture
def client_b_slow(make_b: Callable[..., Flask], slow_service_a: Any) -> FlaskClient:
    return make_b(slow_service_a.url).test_client()


@pytest.mark.parametrize(
    ("a_status", "b_status", "error"),
    [
        (500, 503, UNAVAILABLE),
        (503, 503, UNAVAILABLE),
        (502, 503, UNAVAILABLE),
        (404, 502, "Invalid response from Service A"),
        (400, 502, "Invalid response from Service A"),
    ],
)
def test_error_status_from_a_is_a_json_error(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any], a_status: int, b_status: int, error: str
) -> None:
    """A 5xx from A is 'Service A unavailable' (503); any other non-200 is 'Invalid response' (502)."""
    _, server = scripted_a([a_status])
    response = make_b(server.url).test_client().get("/call-echo?msg=hello")
    assert response.status_code == b_status
    assert response.get_json() == {"error": error, "details": f"Service A answered HTTP {a_status}"}


@pytest.mark.parametrize(
    "a_body",
    [b"<html>oops</html>", b"", b'{"echo": 5}', b'["hello"]', b'{"other":"hello"}', b'{"echo":"hel'],
)
def test_unusable_body_from_a_is_a_502(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any], a_body: bytes
) -> None:
    """A 200 from A whose body is not {"echo": "<text>"} JSON makes B answer 502 'Invalid response'."""
    _, server = scripted_a([200], body=a_body)
    response = make_b(server.url).test_client().get("/call-echo?msg=hello")
    assert response.status_code == 502
    assert response.get_json() == {
        "error": "Invalid response from Service A",
        "details": "Service A's body is not the expected {\"echo\": ...} JSON",
    }


def test_retryable_503_is_retried_within_the_attempt_limit(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any]
) -> None:
    """A 503 then a 200 from A gives the client a 200: B retried once."""
    fake, server = scripted_a([503, 200])
    response = make_b(server.url).test_client().get("/call-echo?msg=hello")
    assert response.status_code == 200
    assert response.get_json() == {"msg": "hello", "echo_response": {"echo": "hello"}}
    assert fake.hits == 2


def test_persistent_503_stops_at_retry_attempts(make_b: Callable[..., Flask], scripted_a: Callable[..., Any]) -> None:
    """A that always answers 503 is tried RETRY_ATTEMPTS times per call, never more."""
    fake, server = scripted_a([503])
    client = make_b(server.url, {"RETRY_ATTEMPTS": "3"}).test_client()
    assert client.get("/call-echo?msg=hello").status_code == 503
    assert fake.hits == 3


def test_non_retryable_500_is_tried_once(make_b: Callable[..., Flask], scripted_a: Callable[..., Any]) -> None:
    """A 500 from A is not retried: the error may not be transient and /echo gains nothing by it."""
    fake, server = scripted_a([500, 200])
    assert make_b(server.url).test_client().get("/call-echo?msg=hello").status_code == 503
    assert fake.hits == 1


# --- circuit breaker, readiness, load shedding ----------------------------------------------------


def test_open_circuit_fails_fast_with_retry_after(make_b: Callable[..., Flask], scripted_a: Callable[..., Any]) -> None:
    """After BREAKER_FAILURE_THRESHOLD failures, B answers 503 + Retry-After without calling A."""
    fake, server = scripted_a([500])
    env = {"BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_RESET_SECONDS": "3", "RETRY_ATTEMPTS": "1"}
    client = make_b(server.url, env).test_client()
    for _ in range(2):
        assert client.get("/call-echo?msg=hello").status_code == 503
    assert fake.hits == 2
    response = client.get("/call-echo?msg=hello")
    assert fake.hits == 2  # refused locally
    assert response.status_code == 503
    assert response.headers["Retry-After"] in {"1", "2", "3"}
    data = response.get_json()
    assert data["error"] == UNAVAILABLE
    assert "circuit breaker open" in data["details"]
    assert data["details"].startswith("Service A answered HTTP 500")  # the cause stays visible


def test_half_open_probe_success_closes_the_circuit(scripted_a: Callable[..., Any]) -> None:
    """Once the reset time has passed, one probe reaches A and its success lets traffic through again."""
    fake, server = scripted_a([500, 500, 200])
    settings = service_b_settings({
        "SERVICE_A_URL": server.url, "BREAKER_FAILURE_THRESHOLD": "2", "BREAKER_RESET_SECONDS": "3",
        "RETRY_ATTEMPTS": "1",
    })
    clock = ManualClock()
    client = EchoClient(settings.upstream, clock=clock)
    try:
        http = create_service_b(settings, client=client).test_client()
        for _ in range(2):
            http.get("/call-echo?msg=hello")
        assert http.get("/call-echo?msg=hello").headers["Retry-After"] == "3"
        assert fake.hits == 2
        clock.advance(3.0)
        response = http.get("/call-echo?msg=hello")
        assert response.status_code == 200
        assert fake.hits == 3
        assert client.breaker.state == "closed"
        assert http.get("/call-echo?msg=hello").status_code == 200
    finally:
        client.close()


def test_ready_shows_the_breaker_but_stays_200_while_a_is_down(make_b: Callable[..., Flask], refused_url: str) -> None:
    """An outage of A opens B's breaker, visible in /ready, yet B stays ready (200)."""
    client = make_b(refused_url, {"BREAKER_FAILURE_THRESHOLD": "1", "RETRY_ATTEMPTS": "1"}).test_client()
    before = client.get("/ready")
    assert before.status_code == 200
    assert before.get_json()["service_a"]["circuit_breaker"]["state"] == "closed"
    client.get("/call-echo?msg=hello")
    after = client.get("/ready")
    assert after.status_code == 200
    data = after.get_json()
    assert data["status"] == "ready"
    assert data["service_a"]["circuit_breaker"]["state"] == "open"
    assert client.get("/health").status_code == 200


def test_calls_over_the_in_flight_limit_are_shed(make_b: Callable[..., Flask], scripted_a: Callable[..., Any]) -> None:
    """With UPSTREAM_MAX_IN_FLIGHT calls already waiting on A, the next is refused at once with 503."""
    fake, server = scripted_a()
    fake.hang()
    app = make_b(server.url, {"UPSTREAM_MAX_IN_FLIGHT": "1", "UPSTREAM_TIMEOUT_SECONDS": "10"})
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(app.test_client().get("/call-echo?msg=one").status_code))
    first.start()
    try:
        wait_until(lambda: fake.hits == 1, 5.0, "the call to reach the fake A", interval_s=0.005)
        shed = app.test_client().get("/call-echo?msg=two")
    finally:
        fake.release()
        first.join(timeout=10)
    assert shed.status_code == 503
    assert shed.headers["Retry-After"] == "1"
    assert shed.get_json()["details"].startswith("Load shed:")
    assert results == [200]
    assert fake.hits == 1


# --- request ID and deadline propagation -----------------------------------------------------------


def test_client_request_id_is_forwarded_to_a_and_returned(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any]
) -> None:
    """The caller's X-Request-ID reaches A on B's call and comes back on B's response."""
    fake, server = scripted_a()
    response = make_b(server.url).test_client().get("/call-echo?msg=hello", headers={"X-Request-ID": "trace-me-1"})
    assert response.headers["X-Request-ID"] == "trace-me-1"
    assert fake.requests[0]["HTTP_X_REQUEST_ID"] == "trace-me-1"


def test_generated_request_id_is_the_one_a_sees(make_b: Callable[..., Flask], scripted_a: Callable[..., Any]) -> None:
    """Without a client ID, the ID B generates is both returned and sent to A."""
    fake, server = scripted_a()
    response = make_b(server.url).test_client().get("/call-echo?msg=hello")
    assert fake.requests[0]["HTTP_X_REQUEST_ID"] == response.headers["X-Request-ID"]


def test_remaining_budget_is_sent_to_a(
    make_b: Callable[..., Flask], scripted_a: Callable[..., Any], b_budget_s: float
) -> None:
    """B tells A how many whole milliseconds of its budget are left, never more than the budget."""
    fake, server = scripted_a()
    make_b(server.url).test_client().get("/call-echo?msg=hello")
    sent = fake.requests[0]["HTTP_X_REQUEST_TIMEOUT_MS"]
    assert sent.isdigit()
    assert 0 < int(sent) <= b_budget_s * 1000

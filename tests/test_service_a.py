"""Service A as a client sees it: the document's examples, hard messages, errors and fault injection."""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import urllib3
from flask import Flask
from flask.testing import FlaskClient

import service_a.app
from echokit.faults import FaultInjector

HARD_MESSAGES = [
    pytest.param("hello world", id="space"),
    pytest.param("héllo wörld ✓ 日本語 🙂", id="unicode"),
    pytest.param("a&b=c", id="ampersand-equals"),
    pytest.param("#fragment?query", id="hash-question"),
    pytest.param("100% sure %41 %zz", id="percent"),
    pytest.param("1+1 = 2", id="plus"),
    pytest.param("it's \"quoted\" `back`", id="quotes"),
    pytest.param("<script>alert('x')</script>", id="html"),
    pytest.param('{"echo": "nested", "n": [1, 2]}', id="json-text"),
    pytest.param("tab\tnew\nline", id="control-chars"),
    pytest.param("\\ / ; , ~ ! * ( ) @ $ : [ ]", id="punctuation"),
    pytest.param("xyz🙂" * 500, id="few-kb"),
]


# Builds A with FAULT_* settings; returns its test client and the list of (fake) sleeps it made.
Faulty = Callable[..., tuple[FlaskClient, list[float]]]


def body(response: object) -> str:
    return response.get_data(as_text=True)  # type: ignore[attr-defined]


# --- the document's examples -------------------------------------------------------------------


def test_health_answers_the_documents_body(client_a: FlaskClient) -> None:
    """GET /health answers 200 with exactly {"status":"ok"} as JSON."""
    response = client_a.get("/health")
    assert response.status_code == 200
    assert body(response) == '{"status":"ok"}'
    assert response.mimetype == "application/json"


def test_echo_answers_the_documents_body(client_a: FlaskClient) -> None:
    """GET /echo?msg=hello answers 200 with exactly {"echo":"hello"}."""
    response = client_a.get("/echo?msg=hello")
    assert response.status_code == 200
    assert body(response) == '{"echo":"hello"}'
    assert response.mimetype == "application/json"


@pytest.mark.parametrize("url", ["/echo?msg=", "/echo", "/echo?other=1"])
def test_empty_or_missing_msg_echoes_an_empty_string(client_a: FlaskClient, url: str) -> None:
    """An empty or missing msg is not an error for A: it echoes {"echo":""}."""
    response = client_a.get(url)
    assert response.status_code == 200
    assert body(response) == '{"echo":""}'


def test_ready_answers_200_once_the_app_is_built(client_a: FlaskClient) -> None:
    """A freshly built A is ready: /ready answers 200 {"status":"ready"}."""
    response = client_a.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


# --- messages that are hard to carry in a URL --------------------------------------------------


@pytest.mark.parametrize("msg", HARD_MESSAGES)
def test_hard_messages_round_trip_percent_encoded(client_a: FlaskClient, msg: str) -> None:
    """Any message percent-encoded as UTF-8 comes back unchanged."""
    response = client_a.get("/echo?msg=" + quote(msg, safe=""))
    assert response.status_code == 200
    assert response.get_json() == {"echo": msg}


@pytest.mark.parametrize("msg", HARD_MESSAGES)
def test_hard_messages_round_trip_form_encoded(client_a: FlaskClient, msg: str) -> None:
    """Any message form-encoded (spaces as '+') comes back unchanged."""
    response = client_a.get("/echo?msg=" + quote_plus(msg))
    assert response.status_code == 200
    assert response.get_json() == {"echo": msg}


def test_non_ascii_is_sent_as_utf8_not_escaped(client_a: FlaskClient) -> None:
    """Non-ASCII text appears in the body as UTF-8 characters, not as \\u escapes."""
    response = client_a.get("/echo?msg=" + quote("café ✓"))
    assert response.data == '{"echo":"café ✓"}'.encode()
    assert response.mimetype_params.get("charset", "utf-8").lower() == "utf-8"


def test_real_http_server_round_trips_a_hard_message(service_a: Any) -> None:
    """Over a real socket A echoes a message full of URL syntax unchanged."""
    msg = "a&b=c #d %e+f ✓"
    response = urllib3.request("GET", f"{service_a.url}/echo?msg={quote(msg, safe='')}", timeout=5, retries=False)
    assert response.status == 200
    assert json.loads(response.data) == {"echo": msg}


# --- errors are JSON ---------------------------------------------------------------------------


def test_unknown_path_is_a_json_404(client_a: FlaskClient) -> None:
    """An unknown path answers 404 with a JSON error, not an HTML page."""
    response = client_a.get("/nope")
    assert response.status_code == 404
    assert body(response) == '{"error":"Not found"}'
    assert response.mimetype == "application/json"


def test_wrong_method_is_a_json_405_with_allow(client_a: FlaskClient) -> None:
    """POST /echo answers 405 with a JSON error and an Allow header listing GET."""
    response = client_a.post("/echo?msg=hello")
    assert response.status_code == 405
    assert response.get_json() == {"error": "Method not allowed"}
    assert "GET" in response.headers["Allow"]


def test_options_is_a_json_405_too(client_a: FlaskClient) -> None:
    """OPTIONS /echo answers the same JSON 405, with Allow naming exactly GET and HEAD."""
    response = client_a.open("/echo?msg=hello", method="OPTIONS")
    assert response.status_code == 405
    assert response.get_json() == {"error": "Method not allowed"}
    assert sorted(m.strip() for m in response.headers["Allow"].split(",")) == ["GET", "HEAD"]


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("msg=%ZZ", "Invalid percent-encoding in 'msg' parameter"),
        ("msg=100%", "Invalid percent-encoding in 'msg' parameter"),
        ("msg=%4", "Invalid percent-encoding in 'msg' parameter"),
        ("msg=%FF", "Invalid UTF-8 in 'msg' parameter"),
        ("msg=%E2%82", "Invalid UTF-8 in 'msg' parameter"),
        ("msg=%C0%AF", "Invalid UTF-8 in 'msg' parameter"),
    ],
)
def test_undecodable_msg_is_a_json_400(client_a: FlaskClient, query: str, error: str) -> None:
    """A msg that is not valid percent-encoded UTF-8 answers 400 with a JSON error saying why."""
    response = client_a.get("/echo?" + query)
    assert response.status_code == 400
    assert response.get_json() == {"error": error}


def test_too_long_msg_is_a_json_414(make_a: Callable[..., Flask]) -> None:
    """A msg over MAX_MSG_BYTES answers 414 with a JSON error naming the size and the limit."""
    client = make_a({"MAX_MSG_BYTES": "10"}).test_client()
    response = client.get("/echo?msg=" + "x" * 11)
    assert response.status_code == 414
    assert response.get_json() == {"error": "'msg' parameter too long: 11 bytes, the limit is 10"}


def test_msg_at_the_limit_is_accepted(make_a: Callable[..., Flask]) -> None:
    """A msg of exactly MAX_MSG_BYTES bytes is still echoed."""
    client = make_a({"MAX_MSG_BYTES": "10"}).test_client()
    assert client.get("/echo?msg=" + "x" * 10).get_json() == {"echo": "x" * 10}


def test_msg_limit_counts_utf8_bytes_not_characters(make_a: Callable[..., Flask]) -> None:
    """Six two-byte characters (12 bytes) exceed a 10-byte limit."""
    client = make_a({"MAX_MSG_BYTES": "10"}).test_client()
    assert client.get("/echo?msg=" + quote("é" * 6)).status_code == 414
    assert client.get("/echo?msg=" + quote("é" * 5)).get_json() == {"echo": "é" * 5}


# --- request ID and deadline header -------------------------------------------------------------


def test_client_request_id_is_returned(client_a: FlaskClient) -> None:
    """A well-formed X-Request-ID from the client comes back on the response."""
    response = client_a.get("/echo?msg=hi", headers={"X-Request-ID": "client-id-42"})
    assert response.headers["X-Request-ID"] == "client-id-42"


def test_request_id_is_generated_when_absent(client_a: FlaskClient) -> None:
    """Without an X-Request-ID, A answers with a fresh 32-hex-digit one."""
    first = client_a.get("/echo?msg=hi").headers["X-Request-ID"]
    second = client_a.get("/echo?msg=hi").headers["X-Request-ID"]
    assert len(first) == 32
    int(first, 16)
    assert first != second


@pytest.mark.parametrize("bad_id", ["has space", "quote\"d", "x" * 129, "<script>"])
def test_malformed_request_id_is_replaced(client_a: FlaskClient, bad_id: str) -> None:
    """A malformed X-Request-ID is never echoed back; a fresh one replaces it."""
    returned = client_a.get("/echo?msg=hi", headers={"X-Request-ID": bad_id}).headers["X-Request-ID"]
    assert returned != bad_id
    assert len(returned) == 32


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "600001", "99999999999"])
def test_bad_timeout_header_is_a_json_400(client_a: FlaskClient, value: str) -> None:
    """A malformed X-Request-Timeout-Ms answers 400 with a JSON error naming the header."""
    response = client_a.get("/echo?msg=hi", headers={"X-Request-Timeout-Ms": value})
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "Invalid X-Request-Timeout-Ms header",
        "details": "X-Request-Timeout-Ms must be whole milliseconds from 0 to 600000",
    }


def test_superscript_digit_timeout_header_gets_the_documented_400(client_a: FlaskClient) -> None:
    """A header byte that is a digit only in Unicode's eyes ('²') gets the same 400 as any junk."""
    response = client_a.get("/echo?msg=hi", headers={"X-Request-Timeout-Ms": "²"})
    assert response.status_code == 400
    assert response.get_json()["details"] == "X-Request-Timeout-Ms must be whole milliseconds from 0 to 600000"


def test_valid_timeout_header_without_faults_changes_nothing(client_a: FlaskClient) -> None:
    """With fault injection off, a caller's budget header does not alter the echo."""
    response = client_a.get("/echo?msg=hi", headers={"X-Request-Timeout-Ms": "1"})
    assert response.status_code == 200
    assert response.get_json() == {"echo": "hi"}


# --- fault injection (with a recorded, instant sleep) -------------------------------------------


@pytest.fixture
def faulty_a(monkeypatch: pytest.MonkeyPatch, make_a: Callable[..., Flask]) -> Faulty:
    """Build A with FAULT_* settings whose injected sleeps are recorded instead of slept."""

    def build(env: dict[str, str]) -> tuple[FlaskClient, list[float]]:
        slept: list[float] = []
        # create_app builds its own FaultInjector; give it a fake sleep and a seeded rng.
        monkeypatch.setattr(
            service_a.app, "FaultInjector",
            functools.partial(FaultInjector, rng=random.Random(1), sleep=slept.append),
        )
        return make_a(env).test_client(), slept

    return build


def test_delay_within_the_budget_is_slept_then_echoed(faulty_a: Faulty) -> None:
    """A delay shorter than the caller's budget is slept in full and the echo still succeeds."""
    client, slept = faulty_a({"FAULT_DELAY_MS": "50"})
    response = client.get("/echo?msg=hi", headers={"X-Request-Timeout-Ms": "1000"})
    assert response.status_code == 200
    assert response.get_json() == {"echo": "hi"}
    assert slept == [0.05]


def test_delay_without_a_budget_is_slept_in_full(faulty_a: Faulty) -> None:
    """Without X-Request-Timeout-Ms, A sleeps the whole injected delay before answering."""
    client, slept = faulty_a({"FAULT_DELAY_MS": "5000"})
    assert client.get("/echo?msg=hi").status_code == 200
    assert slept == [5.0]


def test_delay_past_the_budget_is_cut_and_answered_504(faulty_a: Faulty) -> None:
    """A delay longer than the caller's budget stops at the budget and answers 504 JSON."""
    client, slept = faulty_a({"FAULT_DELAY_MS": "5000"})
    response = client.get("/echo?msg=hi", headers={"X-Request-Timeout-Ms": "100"})
    assert slept == [0.1]
    assert response.status_code == 504
    assert response.get_json() == {
        "error": "Deadline exceeded",
        "details": "The caller's 100ms budget ran out; work abandoned",
    }


def test_error_rate_one_answers_the_configured_status(faulty_a: Faulty) -> None:
    """FAULT_ERROR_RATE=1 answers every /echo with FAULT_ERROR_STATUS and a JSON error."""
    client, _ = faulty_a({"FAULT_ERROR_RATE": "1", "FAULT_ERROR_STATUS": "500"})
    for _ in range(3):
        response = client.get("/echo?msg=hi")
        assert response.status_code == 500
        assert response.get_json() == {"error": "Injected fault", "details": "FAULT_ERROR_RATE is set on Service A"}


def test_faults_never_touch_health(faulty_a: Faulty) -> None:
    """Injected delays and errors apply to /echo only; /health stays instant and 200."""
    client, slept = faulty_a({"FAULT_DELAY_MS": "5000", "FAULT_ERROR_RATE": "1"})
    assert client.get("/health").status_code == 200
    assert slept == []


def test_no_fault_settings_means_no_faults(faulty_a: Faulty) -> None:
    """With no FAULT_* variables, /echo neither sleeps nor fails."""
    client, slept = faulty_a({})
    for _ in range(20):
        assert client.get("/echo?msg=hi").status_code == 200
    assert slept == []

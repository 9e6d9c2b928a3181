"""/metrics on both services: exact counts, route templates, B's outcomes, names by convention.

Every scrape is read with prometheus_client's own text parser, as Prometheus would read it.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import requests

from echokit.extension import echokit_of
from echokit.metrics import BREAKER_STATES, UPSTREAM_OUTCOMES
from echokit.probes import PROBE_PATHS
from tests.support.metrics import Scrape, scrape

REQUEST_FAMILIES = {
    "http_requests": "counter",
    "http_request_duration_seconds": "histogram",
    "http_requests_in_flight": "gauge",
}
B_FAMILIES = {
    "upstream_requests": "counter",
    "upstream_request_duration_seconds": "histogram",
    "upstream_retries": "counter",
    "upstream_retries_denied": "counter",
    "circuit_breaker_state": "gauge",
    "circuit_breaker_transitions": "counter",
    "upstream_endpoint_requests": "counter",
    "upstream_endpoint_ejections": "counter",
    "upstream_hedges": "counter",
    "upstream_endpoint_usable": "gauge",
}
ADMISSION_FAMILIES = {
    "admission_limit": "gauge", "admission_in_flight": "gauge", "admission_queued": "gauge",
    "admission_shed": "counter",
}


def stub_app(status: str, body: bytes) -> Any:
    """A WSGI app that answers everything with ``status`` and ``body``: a misbehaving A."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def test_request_counts_and_latency_are_exact_by_method_route_template_and_status(client_a):
    """After known requests, A's counter and histogram report exactly those, labelled by route template."""
    for msg in ("one", "two", "three"):
        assert client_a.get(f"/echo?msg={msg}").status_code == 200
    assert client_a.get("/no/such/page/123").status_code == 404
    assert client_a.get("/another-unknown?x=1").status_code == 404
    assert client_a.post("/echo?msg=x").status_code == 405
    assert client_a.get("/health").status_code == 200

    metrics = scrape(client_a)
    assert metrics.value("http_requests_total", method="GET", route="/echo", status="200") == 3
    assert metrics.value("http_requests_total", method="GET", route="unmatched", status="404") == 2
    assert metrics.value("http_requests_total", method="POST", route="/echo", status="405") == 1
    assert metrics.value("http_requests_total", route="/health", status="200") == 1
    assert metrics.value("http_requests_total") == 7  # the scrape itself is counted once it finishes
    assert metrics.value("http_request_duration_seconds_count", route="/echo", status="200") == 3
    assert metrics.value("http_request_duration_seconds_bucket", route="/echo", status="200", le="+Inf") == 3
    assert metrics.value("http_request_duration_seconds_sum", route="/echo") > 0
    # Never the raw URL: no path of a 404 and no query string becomes a label value.
    routes = metrics.label_values("route")
    assert routes == {"/echo", "/health", "unmatched"}

    assert scrape(client_a).value("http_requests_total", route="/metrics", status="200") == 1
    assert metrics.types() == REQUEST_FAMILIES  # A calls nobody: no upstream or breaker families


def test_every_failure_series_of_b_exists_at_zero_right_after_start(app_b):
    """Before any call, B exposes every upstream outcome, retry and breaker-transition series at 0."""
    metrics = scrape(app_b.test_client())
    for outcome in UPSTREAM_OUTCOMES:
        for name in ("upstream_requests_total", "upstream_request_duration_seconds_count"):
            assert any(s.name == name and s.labels == {"outcome": outcome} and s.value == 0 for s in metrics.samples), (
                name, outcome,
            )
    for state in BREAKER_STATES:
        assert any(
            s.name == "circuit_breaker_transitions_total" and s.labels == {"state": state} and s.value == 0
            for s in metrics.samples
        ), state
    retries = ("upstream_retries_total", "upstream_retries_denied_total")
    assert [s.value for s in metrics.samples if s.name in retries] == [0, 0]


def test_a_405_and_probe_requests_keep_their_route_label(client_a):
    """A wrong method on a real route is counted under that route; probes and scrapes under theirs."""
    assert client_a.open("/echo?msg=x", method="OPTIONS").status_code == 405
    assert client_a.get("/ready").status_code == 200
    client_a.get("/metrics")
    metrics = scrape(client_a)
    assert metrics.value("http_requests_total", method="OPTIONS", route="/echo", status="405") == 1
    assert metrics.value("http_requests_total", route="unmatched") == 0
    assert metrics.label_values("route") & PROBE_PATHS == {"/ready", "/metrics"}


def test_an_unknown_http_method_is_counted_as_other(client_a):
    """A client-invented method cannot add label values: it is counted as OTHER."""
    client_a.open("/echo?msg=x", method="BREW")
    client_a.open("/echo?msg=x", method="PROPFIND")
    assert scrape(client_a).value("http_requests_total", method="OTHER") == 2


def test_metric_names_follow_prometheus_conventions(app_b):
    """Every family has a snake_case name, counters end in _total, times are histograms in seconds."""
    client = app_b.test_client()
    client.get("/call-echo?msg=hi")
    text = client.get("/metrics").get_data(as_text=True)
    metrics = Scrape(text)
    assert metrics.types() == {**REQUEST_FAMILIES, **B_FAMILIES, **ADMISSION_FAMILIES}
    for family in metrics.families:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        assert not re.search(r"(milli|micro)?seconds?_|_ms\b|millis", family.name), family.name
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {f"{family.name}_total", f"{family.name}_created"}
            assert f"# TYPE {family.name}_total counter" in text or f"# TYPE {family.name} counter" in text
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
    assert "# HELP http_requests_total " in text  # exposed with the _total suffix Prometheus expects


def test_a_known_number_of_b_calls_are_counted_on_both_services(app_b, service_a):
    """N successful /call-echo requests show as N on B (requests and upstream successes) and N on A."""
    client = app_b.test_client()
    n = 5
    for i in range(n):
        assert client.get(f"/call-echo?msg=m{i}").status_code == 200
    b = scrape(client)
    assert b.value("http_requests_total", route="/call-echo", status="200") == n
    assert b.value("upstream_requests_total", outcome="success") == n
    assert b.value("upstream_requests_total") == n
    assert b.value("upstream_request_duration_seconds_count", outcome="success") == n
    assert b.value("circuit_breaker_state", state="closed") == 1
    assert b.value("circuit_breaker_state", state="open") == 0
    a = scrape(service_a.url)
    assert a.value("http_requests_total", route="/echo", status="200") == n


def test_each_failure_of_a_is_counted_by_its_outcome(make_b, serve, slow_service_a, refused_url):
    """Timeout, connection error, bad response, shed and circuit-open calls each count under their outcome."""
    cases: list[tuple[str, str, dict[str, str]]] = [
        ("timeout", slow_service_a.url, {"RETRY_ATTEMPTS": "1"}),
        ("connection_error", refused_url, {"RETRY_ATTEMPTS": "1"}),
        ("bad_response", serve(stub_app("200 OK", b"not json")).url, {}),
        ("bad_status", serve(stub_app("500 Internal Server Error", b'{"error":"x"}')).url, {"RETRY_ATTEMPTS": "1"}),
    ]
    for outcome, url, env in cases:
        client = make_b(url, env).test_client()
        assert client.get("/call-echo?msg=x").status_code in (502, 503)
        metrics = scrape(client)
        assert metrics.value("upstream_requests_total", outcome=outcome) == 1, outcome
        assert metrics.value("upstream_requests_total") == 1, outcome

    shed_app = make_b(refused_url, {"UPSTREAM_MAX_IN_FLIGHT": "1"})
    client = echokit_of(shed_app).client
    assert client is not None
    bulkhead = client.bulkhead
    assert bulkhead.try_enter()  # the one allowed call is "in flight"
    try:
        assert shed_app.test_client().get("/call-echo?msg=x").status_code == 503
    finally:
        bulkhead.leave()
    assert scrape(shed_app.test_client()).value("upstream_requests_total", outcome="shed") == 1


def test_retries_and_the_breaker_opening_are_visible(make_b, refused_url):
    """Retries of a refused connection are counted, and the breaker's state and transitions are exported."""
    client = make_b(refused_url, {"RETRY_ATTEMPTS": "3", "BREAKER_FAILURE_THRESHOLD": "3"}).test_client()
    assert client.get("/call-echo?msg=x").status_code == 503  # 3 attempts, 3 failures: the breaker opens
    assert client.get("/call-echo?msg=x").status_code == 503  # refused by the open breaker
    metrics = scrape(client)
    assert metrics.value("upstream_retries_total") == 2
    assert metrics.value("upstream_requests_total", outcome="connection_error") == 1
    assert metrics.value("upstream_requests_total", outcome="circuit_open") == 1
    assert metrics.value("circuit_breaker_state", state="open") == 1
    assert metrics.value("circuit_breaker_state", state="closed") == 0
    assert metrics.value("circuit_breaker_transitions_total", state="open") == 1


def test_in_flight_gauge_counts_requests_being_served(make_a, make_b, serve):
    """While one /call-echo waits on a slow A, B's in-flight gauge reads 2 (it and the scrape), then 1."""
    a = serve(make_a({"FAULT_DELAY_MS": "400"}))
    b = serve(make_b(a.url, {"UPSTREAM_TIMEOUT_SECONDS": "5"}))
    assert scrape(b.url).value("http_requests_in_flight") == 1  # only the scrape itself
    caller = threading.Thread(target=requests.get, args=(f"{b.url}/call-echo?msg=slow",), kwargs={"timeout": 5})
    caller.start()
    try:
        readings = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and 2 not in readings:
            readings.append(scrape(b.url).value("http_requests_in_flight"))
        assert 2 in readings
    finally:
        caller.join(timeout=5)
    assert scrape(b.url).value("http_requests_in_flight") == 1

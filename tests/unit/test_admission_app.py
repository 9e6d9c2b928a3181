"""The admission gate in front of Flask: B sheds with 503 JSON at once, and both services count a
request's budget from its arrival (``echokit.arrival``, which the gunicorn worker records)."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask

from echokit.admission import Permit
from echokit.admission_app import AdmissionGate
from echokit.context import ARRIVAL_ENVIRON
from echokit.extension import echokit_of
from tests.support.metrics import scrape


def gate_of(app: Flask) -> AdmissionGate:
    gate = echokit_of(app).admission
    assert gate is not None, "B has an admission gate"
    return gate


def arrived(seconds_ago: float) -> dict[str, float]:
    return {ARRIVAL_ENVIRON: time.monotonic() - seconds_ago}


def test_b_over_its_limit_answers_503_json_with_retry_after_without_calling_a(make_b, scripted_a) -> None:
    """With every slot taken, /call-echo is refused at once: 503, Retry-After, the documented error shape."""
    fake, server = scripted_a()
    app: Flask = make_b(server.url, {"ADMISSION_INITIAL_LIMIT": "2", "ADMISSION_MIN_LIMIT": "2"})
    controller = gate_of(app).controller
    assert controller is not None
    held = [controller.enter(), controller.enter()]
    assert all(isinstance(p, Permit) for p in held)
    client = app.test_client()
    response = client.get("/call-echo?msg=hi")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.headers["Content-Type"] == "application/json"
    body = response.get_json()
    assert body["error"] == "Service A unavailable"
    assert body["details"].startswith("Load shed: ")
    assert fake.hits == 0
    assert client.get("/health").status_code == 200  # probes are never shed
    assert client.post("/call-echo?msg=hi").status_code == 405  # a method the route does not take is not admission's
    metrics = scrape(client)
    assert metrics.value("admission_shed_total", reason="limit") == 1
    assert metrics.value("admission_shed_total", reason="queue_time") == 0
    assert metrics.value("admission_limit") == 2 and metrics.value("admission_in_flight") == 2
    assert metrics.value("http_requests_total", route="/call-echo", status="503") == 1
    for permit in held:
        assert isinstance(permit, Permit)
        permit.release()
    assert client.get("/call-echo?msg=hi").status_code == 200


def test_b_refuses_a_request_that_waited_its_whole_budget_before_it_could_start(make_b, scripted_a) -> None:
    """Read 2.5 s ago with a 2 s budget: nobody waits for it any more, so A is never called."""
    fake, server = scripted_a()
    client = make_b(server.url, {"UPSTREAM_TIMEOUT_SECONDS": "2"}).test_client()
    response = client.get("/call-echo?msg=late", environ_overrides=arrived(2.5))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json()["details"].startswith("Load shed: the request waited")
    assert fake.hits == 0
    assert scrape(client).value("admission_shed_total", reason="deadline") == 1


def test_b_sends_a_only_what_is_left_of_the_budget_since_arrival(make_b, scripted_a) -> None:
    """Read 1.5 s ago with a 2 s budget: B's X-Request-Timeout-Ms to A says at most 500 ms."""
    fake, server = scripted_a()
    client = make_b(server.url, {"UPSTREAM_TIMEOUT_SECONDS": "2"}).test_client()
    assert client.get("/call-echo?msg=hi", environ_overrides=arrived(1.5)).status_code == 200
    sent_ms = int(fake.requests[0]["HTTP_X_REQUEST_TIMEOUT_MS"])
    assert 300 < sent_ms <= 500
    assert client.get("/call-echo?msg=hi").status_code == 200  # no arrival stamp (dev server): the full budget
    assert int(fake.requests[1]["HTTP_X_REQUEST_TIMEOUT_MS"]) > 1900


def test_a_answers_an_already_expired_propagated_deadline_with_504_and_does_no_work(
    monkeypatch, make_a: Callable[..., Flask]
) -> None:
    """B allowed 100 ms and the request waited 200 ms in A's server: 504 at once, the injected delay never slept."""
    import functools
    import random

    import service_a.app
    from echokit.faults import FaultInjector

    slept: list[float] = []
    monkeypatch.setattr(
        service_a.app, "FaultInjector", functools.partial(FaultInjector, rng=random.Random(1), sleep=slept.append)
    )
    client = make_a({"FAULT_DELAY_MS": "5000"}).test_client()
    headers = {"X-Request-Timeout-Ms": "100"}
    response = client.get("/echo?msg=hi", headers=headers, environ_overrides=arrived(0.2))
    assert response.status_code == 504
    assert response.get_json()["error"] == "Deadline exceeded"
    assert "work not started" in response.get_json()["details"]
    assert slept == []
    # Waited 40 ms of a 100 ms budget: A works for what is left (about 60 ms), then gives up.
    response = client.get("/echo?msg=hi", headers=headers, environ_overrides=arrived(0.04))
    assert response.status_code == 504 and len(slept) == 1 and 0.04 < slept[0] <= 0.06


def test_a_without_a_propagated_deadline_is_never_refused_for_waiting(client_a) -> None:
    """No X-Request-Timeout-Ms: however long the request waited, A echoes it."""
    response = client_a.get("/echo?msg=hi", environ_overrides=arrived(30))
    assert response.status_code == 200 and response.get_json() == {"echo": "hi"}


def test_with_admission_off_b_still_refuses_only_what_waited_its_whole_budget(make_b, scripted_a) -> None:
    """ADMISSION_ENABLED=false: no limit (the static cap alone), but a request past its budget is still not begun."""
    fake, server = scripted_a()
    app = make_b(server.url, {"ADMISSION_ENABLED": "false", "UPSTREAM_TIMEOUT_SECONDS": "2"})
    assert gate_of(app).controller is None
    client = app.test_client()
    assert client.get("/call-echo?msg=hi", environ_overrides=arrived(1.0)).status_code == 200
    late = client.get("/call-echo?msg=hi", environ_overrides=arrived(2.0))
    assert late.status_code == 503 and late.headers["Retry-After"] == "1"
    assert fake.hits == 1
    assert scrape(client).value("admission_shed_total", reason="deadline") == 1

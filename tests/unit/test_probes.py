"""The probes blueprint both services mount: /health, /ready and /metrics."""

from __future__ import annotations

from flask import Flask

from echokit.extension import echokit_of
from echokit.probes import HEALTH_BODY, PROBE_PATHS


def test_both_services_mount_the_same_probes(app_a: Flask, make_b, refused_url) -> None:
    """A and B serve the three probe paths from the one blueprint."""
    for app in (app_a, make_b(refused_url)):
        endpoints = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules()}
        assert {path: endpoints[path] for path in PROBE_PATHS} == {
            "/health": "probes.health", "/ready": "probes.ready", "/metrics": "probes.metrics",
        }


def test_health_stays_200_while_draining(app_a: Flask) -> None:
    """Liveness does not follow readiness: a draining process is still alive."""
    echokit_of(app_a).lifecycle.begin_drain()
    answer = app_a.test_client().get("/health")
    assert (answer.status_code, answer.get_json()) == (200, HEALTH_BODY)


def test_ready_adds_the_apps_readiness_details(make_b, refused_url) -> None:
    """B's /ready shows its calls to A, and stays 200 while A is unreachable."""
    answer = make_b(refused_url).test_client().get("/ready")
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["status"] == "ready"
    assert body["service_a"]["circuit_breaker"]["state"] == "closed"


def test_metrics_speaks_the_prometheus_text_format(app_a: Flask) -> None:
    """/metrics answers the text exposition format with the request counter in it."""
    client = app_a.test_client()
    client.get("/health")
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")
    assert b"http_requests_total" in answer.data

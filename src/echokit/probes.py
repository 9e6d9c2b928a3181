"""The probes both services answer, as one blueprint: ``/health``, ``/ready`` and ``/metrics``."""

from __future__ import annotations

from flask import Blueprint, Response

from echokit.extension import current_echokit
from echokit.responses import JsonResponse, json_response, to_json

__all__ = ["HEALTH_BODY", "PROBE_PATHS", "probes"]

HEALTH_BODY = {"status": "ok"}
_HEALTH_JSON = to_json(HEALTH_BODY).encode()  # the same bytes every time: encoded once
# The paths LOG_PROBES=false leaves out of the access log.
PROBE_PATHS = frozenset({"/health", "/ready", "/metrics"})

probes = Blueprint("probes", __name__)


@probes.get("/health")
def health() -> Response:
    """Liveness: 200 while the process runs, whatever its dependencies do."""
    return JsonResponse(_HEALTH_JSON)


@probes.get("/ready")
def ready() -> Response:
    """Readiness: 200 while the process should get traffic, 503 once it is draining."""
    ext = current_echokit()
    status, body = ext.lifecycle.readiness()
    if ext.readiness_details is not None:
        body.update(ext.readiness_details())
    return json_response(body, status)


@probes.get("/metrics")
def metrics() -> Response:
    """This process's metrics (all workers' under gunicorn) in the Prometheus text format."""
    data, content_type = current_echokit().metrics.exposition()
    return Response(data, content_type=content_type)

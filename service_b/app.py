"""Service B: ``GET /health`` and ``GET /call-echo?msg=...``, which calls Service A's ``/echo``.

Run it with ``python service_b/app.py`` (Flask development server) or under gunicorn with
``gunicorn -c gunicorn.conf.py 'service_b.app:create_app()'`` (production).
"""

from __future__ import annotations

from flask import Flask, Response, request

from echokit.admission_app import service_b_gate
from echokit.context import REQUEST_ID_ENVIRON
from echokit.extension import echokit_of
from echokit.responses import error_response, json_response
from echokit.servers.dev import run_main
from echokit.settings import ServiceBSettings, service_b_settings
from echokit.upstream import EchoClient, UpstreamError
from echokit.web import create_base_app, finish_app, request_msg

MISSING_MSG = "Missing 'msg' parameter"


def create_app(settings: ServiceBSettings | None = None, client: EchoClient | None = None) -> Flask:
    """Build Service B from ``settings`` (default: the environment) and a client for A."""
    settings = settings or service_b_settings()
    app, logger = create_base_app(__name__, settings.server)
    ext = echokit_of(app)
    client = client or EchoClient(settings.upstream, logger=logger, metrics=ext.metrics)
    ext.client = client
    # B's readiness body shows the breaker, but an outage of A never makes B unready.
    ext.readiness_details = lambda: {"service_a": client.status()}
    max_msg_bytes = settings.server.max_msg_bytes

    @app.get("/call-echo")
    def call_echo() -> Response:
        """Echo ``msg`` through Service A: 200 with A's answer, 400 without msg, 503 if A fails."""
        environ = request.environ  # one look-up through Flask's context-local proxy
        msg = request_msg(environ, max_msg_bytes)
        if not msg:
            return error_response(400, MISSING_MSG)
        try:
            echo_response = client.echo(msg, environ.get(REQUEST_ID_ENVIRON))
        except UpstreamError as exc:
            headers = {}
            if exc.retry_after_s is not None:
                headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.499)))
            return error_response(exc.status, exc.error, exc.details, headers)
        return json_response({"msg": msg, "echo_response": echo_response})

    # Admission at B's request entry, in front of Flask (see echokit.admission_app).
    gate = service_b_gate(app.wsgi_app, settings.admission, settings.upstream.timeout_s, ext.metrics.registry, logger)
    app.wsgi_app = gate  # type: ignore[method-assign]
    ext.admission = gate
    return finish_app(app, settings.server, logger)


if __name__ == "__main__":
    run_main(create_app, service_b_settings)

"""Service A: the echo API (``GET /health``, ``GET /echo?msg=...``) on 127.0.0.1:8080.

Run it with ``python service_a/app.py`` (Flask development server) or under gunicorn with
``gunicorn -c gunicorn.conf.py 'service_a.app:create_app()'`` (production).
"""

from __future__ import annotations

from flask import Flask, Response, request

from echokit.admission_app import spent_since_arrival
from echokit.faults import FaultInjector, FaultOutcome
from echokit.resilience.deadline import TIMEOUT_ENVIRON, TIMEOUT_HEADER, parse_timeout_header
from echokit.responses import error_response, json_response
from echokit.servers.dev import run_main
from echokit.settings import ServiceASettings, service_a_settings
from echokit.web import create_base_app, finish_app, request_msg


def create_app(settings: ServiceASettings | None = None) -> Flask:
    """Build Service A from ``settings`` (default: read from the environment)."""
    settings = settings or service_a_settings()
    app, logger = create_base_app(__name__, settings.server)
    faults = FaultInjector(settings.faults, logger=logger)
    if faults.enabled:
        logger.warning("fault injection ON: %s", settings.faults)
    max_msg_bytes = settings.server.max_msg_bytes

    @app.get("/echo")
    def echo() -> Response:
        """``{"echo": msg}``; a missing or empty ``msg`` echoes ``""``."""
        environ = request.environ  # one look-up through Flask's context-local proxy
        msg = request_msg(environ, max_msg_bytes)
        try:
            budget_s = parse_timeout_header(environ.get(TIMEOUT_ENVIRON))
        except ValueError as exc:
            return error_response(400, f"Invalid {TIMEOUT_HEADER} header", str(exc))
        if budget_s is not None:
            waited_s = spent_since_arrival(environ)  # since A's server read the request
            if waited_s >= budget_s:
                # The caller's deadline passed before the request could start: do none of the work.
                return error_response(
                    504, "Deadline exceeded", f"The caller's {budget_s * 1000:.0f}ms budget ran out before the "
                    f"request could start (it waited {waited_s * 1000:.0f}ms); work not started",
                )
            budget_s -= waited_s
        outcome = faults.apply(budget_s)
        if outcome is FaultOutcome.ABANDONED:
            assert budget_s is not None  # only a caller's deadline abandons work
            return error_response(
                504, "Deadline exceeded", f"The caller's {budget_s * 1000:.0f}ms budget ran out; work abandoned"
            )
        if outcome is FaultOutcome.ERROR:
            return error_response(
                settings.faults.error_status, "Injected fault", "FAULT_ERROR_RATE is set on Service A"
            )
        return json_response({"echo": msg or ""})

    return finish_app(app, settings.server, logger)


if __name__ == "__main__":
    run_main(create_app, service_a_settings)

"""Service A: the echo API (``GET /health``, ``GET /echo?msg=...``) on 127.0.0.1:8080.

Run it with ``python service_a/app.py`` (Flask development server) or under gunicorn with
``gunicorn -c gunicorn.conf.py 'service_a.app:create_app()'`` (production).
"""

from __future__ import annotations

from flask import Flask, Response, request

from echokit.admission_app import service_a_gate
from echokit.devserver import run_main
from echokit.faults import FaultInjector
from echokit.resilience.deadline import (
    TIMEOUT_ENVIRON,
    TIMEOUT_HEADER,
    parse_timeout_header,
    spent_before_handler,
)
from echokit.responses import BadMessageError, error_response, json_response, parse_msg
from echokit.settings import ServiceASettings, service_a_settings
from echokit.web import create_base_app, finish_app
from service_a.logging_utils import setup_logging


def create_app(settings: ServiceASettings | None = None) -> Flask:
    """Build Service A from ``settings`` (default: read from the environment)."""
    settings = settings or service_a_settings()
    server = settings.server
    logger = setup_logging(server)
    app = create_base_app(__name__, server, logger)
    faults = FaultInjector(settings.faults)
    if faults.enabled:
        logger.warning("fault injection ON: %s", settings.faults)

    @app.get("/echo")
    def echo() -> Response:
        """``{"echo": msg}``; a missing or empty ``msg`` echoes ``""``."""
        try:
            msg = parse_msg(request.environ.get("QUERY_STRING", "").encode("latin-1"), server.max_msg_bytes)
            budget_s = parse_timeout_header(request.environ.get(TIMEOUT_ENVIRON))
        except BadMessageError as exc:
            return error_response(exc.status, exc.error)
        except ValueError as exc:
            return error_response(400, f"Invalid {TIMEOUT_HEADER} header", str(exc))
        if budget_s is not None:
            waited_s = spent_before_handler.get()  # in A's server before this handler ran (echokit.admission_app)
            if waited_s >= budget_s:
                # The caller's deadline passed before the request could start: do none of the work.
                return error_response(
                    504, "Deadline exceeded", f"The caller's {budget_s * 1000:.0f}ms budget ran out before the "
                    f"request could start (it waited {waited_s * 1000:.0f}ms); work not started",
                )
            budget_s -= waited_s
        if faults.enabled:
            plan = faults.plan()
            if budget_s is not None and plan.delay_s >= budget_s:
                # The caller stops waiting at its deadline: stop working then too.
                faults.sleep(budget_s)
                logger.warning(
                    "abandoned /echo after %.0fms: the caller's deadline passed before the injected %.0fms delay ended",
                    budget_s * 1000, plan.delay_s * 1000,
                )
                return error_response(
                    504, "Deadline exceeded", f"The caller's {budget_s * 1000:.0f}ms budget ran out; work abandoned"
                )
            if plan.delay_s > 0:
                faults.sleep(plan.delay_s)
            if plan.error_status is not None:
                return error_response(plan.error_status, "Injected fault", "FAULT_ERROR_RATE is set on Service A")
        return json_response({"echo": msg or ""})

    # A caller's deadline that passed before the request could start: answered at once, no work done.
    app.wsgi_app = service_a_gate(app.wsgi_app)  # type: ignore[method-assign]
    return finish_app(app, server, logger)


if __name__ == "__main__":
    run_main(create_app, service_a_settings)

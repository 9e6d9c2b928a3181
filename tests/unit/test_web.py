"""An unexpected exception becomes a JSON 500 for the client and a traceback in the log only."""

from __future__ import annotations

import io
import logging

import pytest
from flask import Flask


@pytest.fixture
def failing_app(make_a) -> tuple[Flask, io.StringIO]:
    """Service A with one extra route that raises, and its log captured."""
    app = make_a()

    @app.get("/boom")
    def boom() -> str:
        raise ZeroDivisionError("secret detail: division by zero in the handler")

    stream = io.StringIO()
    handler = logging.getLogger("service_a").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return app, stream


def test_an_unexpected_exception_answers_a_json_500_without_details(failing_app):
    """The client gets `{"error": "Internal server error"}`: no traceback, exception type or message."""
    app, _ = failing_app
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.content_type == "application/json"
    assert response.get_json() == {"error": "Internal server error"}
    assert b"ZeroDivisionError" not in response.data
    assert b"secret detail" not in response.data


def test_an_unexpected_exception_is_logged_with_its_traceback_and_context(failing_app):
    """The server's log names the route and the exception and keeps the traceback, as one record per line."""
    app, stream = failing_app
    app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    lines = stream.getvalue().splitlines()
    error_lines = [line for line in lines if " ERROR service_a " in line]
    assert len(error_lines) == 1
    assert "unhandled ZeroDivisionError on GET /boom" in error_lines[0]
    assert "Traceback" in error_lines[0] and "secret detail" in error_lines[0]
    assert "request_id=boom-1" in error_lines[0]
    assert any(" INFO service_a GET /boom 500 " in line for line in lines)

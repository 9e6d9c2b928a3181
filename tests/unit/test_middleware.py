"""The WSGI layer around each app: request IDs in the answer, and the in-flight count draining waits on."""

from __future__ import annotations

from typing import Any

from flask import Flask
from werkzeug.test import EnvironBuilder

from echokit.extension import echokit_of


def test_every_answer_carries_the_request_id_even_a_404(app_a: Flask) -> None:
    """The layer outside Flask adds X-Request-ID to every answer, including routes that do not exist."""
    client = app_a.test_client()
    kept = client.get("/echo?msg=hi", headers={"X-Request-ID": "keep-me"})
    assert kept.headers["X-Request-ID"] == "keep-me"
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert len(missing.headers["X-Request-ID"]) == 32


def test_a_request_counts_as_in_flight_for_draining_until_its_body_is_sent(app_a):
    """The drain's in-flight count drops only when the server has sent the body or closed it, once."""
    lifecycle = echokit_of(app_a).lifecycle

    def call() -> Any:
        environ = EnvironBuilder(path="/echo", query_string="msg=hi").get_environ()
        return app_a.wsgi_app(environ, lambda status, headers, exc=None: None)

    sent = call()
    assert lifecycle.in_flight == 1  # the app returned, but nothing is written yet
    assert b"".join(sent) == b'{"echo":"hi"}'
    assert lifecycle.in_flight == 0
    sent.close()  # servers close after iterating: not counted twice
    assert lifecycle.in_flight == 0

    closed_early = call()
    assert lifecycle.in_flight == 1
    closed_early.close()  # e.g. the client went away before the first chunk
    assert lifecycle.in_flight == 0

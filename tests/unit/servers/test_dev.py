"""The development server's request handler: its own errors in JSON, in-thread over a real socket."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from echokit.servers.dev import QuietRequestHandler
from tests.support.live import serving
from tests.support.raw import CLOSE, raw_request


@pytest.fixture
def dev_server(app_a: Flask) -> Iterator[BaseWSGIServer]:
    """Service A behind the dev server's handler, served in a thread (no process, no signal handlers)."""
    with serving(make_server("127.0.0.1", 0, app_a, threaded=True, request_handler=QuietRequestHandler)) as server:
        yield server


def test_an_http_09_request_gets_a_json_400_with_a_status_line(dev_server: BaseWSGIServer) -> None:
    """HTTP/0.9 has no headers to wait for: the handler refuses it at once, in JSON."""
    answer = raw_request(dev_server.server_port, b"GET /echo\r\n\r\n", timeout=5)
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"error": "HTTP/0.9 requests are not supported"}


def test_answers_name_the_project_not_the_framework(dev_server: BaseWSGIServer) -> None:
    """The Server header says distributed-echo-system, as gunicorn's does once patched."""
    answer = raw_request(dev_server.server_port, b"GET /echo?msg=hi HTTP/1.1\r\n" + CLOSE, timeout=5)
    assert answer.status == 200
    assert answer.headers["server"] == "distributed-echo-system"
    assert answer.body == b'{"echo":"hi"}'

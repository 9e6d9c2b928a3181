"""The tests' own HTTP client (tests/support/harness.py) gives up idle connections before the services do."""

from __future__ import annotations

from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.support import harness
from tests.support.live import serving


class _ClientPortHandler(BaseHTTPRequestHandler):
    """Answers every GET with the client's port, on a connection kept alive (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = str(self.client_address[1]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def keep_alive_url() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _ClientPortHandler)) as server:
        yield f"http://127.0.0.1:{server.server_port}/"


def client_ports(url: str, requests: int) -> set[str]:
    session = harness.new_session()
    try:
        return {session.get(url, timeout=5).text for _ in range(requests)}
    finally:
        session.close()


def test_a_recently_used_connection_is_reused(keep_alive_url):
    """Requests in quick succession share one kept-alive connection (one client port)."""
    assert len(client_ports(keep_alive_url, 3)) == 1


def test_a_connection_idle_past_the_limit_is_replaced(keep_alive_url, monkeypatch):
    """A connection idle for the limit is closed and a new one opened, so no request races the server's close."""
    monkeypatch.setattr(harness, "CLIENT_IDLE_LIMIT_S", 0.0)
    assert len(client_ports(keep_alive_url, 3)) == 3

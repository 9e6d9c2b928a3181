"""gunicorn's own error answers, once patched: JSON like every other error of the services."""

from __future__ import annotations

import json
import socket

from echokit.servers.gunicorn_patches import write_json_error


def test_gunicorn_errors_are_written_as_json() -> None:
    """A 414 gunicorn answers before the app runs is a JSON body with error and details, and closes."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        write_json_error(ours, 414, "URI Too Long", "Request Line is too large (9000 > 8190)")
        raw = theirs.recv(65536).decode("latin-1")
    head, _, body = raw.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 414 URI Too Long\r\n")
    assert "Content-Type: application/json" in head and "Connection: close" in head
    assert json.loads(body) == {"error": "URI Too Long", "details": "Request Line is too large (9000 > 8190)"}
    assert f"Content-Length: {len(body)}" in head

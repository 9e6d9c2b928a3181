"""The two places gunicorn's own behaviour is changed, applied explicitly from a hook.

gunicorn answers malformed or oversized requests (400, 414, 431) before any app code runs, with
an HTML page, and names itself in every ``Server`` header. :func:`apply` makes those answers
JSON like every other error of the services and names the project instead, as the development
server does. gunicorn.conf.py's ``post_fork`` hook calls it in each worker; importing this
module changes nothing. Both replace module attributes gunicorn looks up at call time
(``util.write_error``, ``gunicorn.http.wsgi.SERVER``), which is why gunicorn is pinned below
its next major version.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi as gunicorn_wsgi

from echokit.servers import SERVER_NAME

__all__ = ["apply", "write_json_error"]


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with a JSON body instead of an HTML page."""
    body = json.dumps({"error": reason, "details": mesg} if mesg else {"error": reason})
    response = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    util.write_nonblock(sock, response.encode("latin-1"))


def apply() -> None:
    """JSON bodies for gunicorn's own errors and the project's name in the Server header."""
    util.write_error = write_json_error
    gunicorn_wsgi.SERVER = SERVER_NAME

"""WSGI apps served over real HTTP on 127.0.0.1 in a background thread, and a scriptable fake A.

B's client talks to these over real sockets, nothing is mocked; no process is started.
"""

from __future__ import annotations

import socketserver
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

__all__ = ["LiveServer", "ScriptedA", "StartResponse", "WSGIApp", "serving"]

ServerT = TypeVar("ServerT", bound=socketserver.BaseServer)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's request handler without its per-request stderr line (our apps log their own)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _serve_in_thread(server: socketserver.BaseServer) -> Callable[[], None]:
    """Start ``server``'s serve loop in a daemon thread; the returned function stops and closes it."""
    # A short poll interval keeps shutdown() (which waits for the serve loop) quick.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


@contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    """Any socketserver (a WSGI server with another handler, a raw TCP one) served for the ``with`` block."""
    stop = _serve_in_thread(server)
    try:
        yield server
    finally:
        stop()


class LiveServer:
    """A WSGI app served over real HTTP on 127.0.0.1:<ephemeral port> in a background thread."""

    def __init__(self, app: WSGIApp) -> None:
        self.server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
        )
        self.port = self.server.server_port
        self.close = _serve_in_thread(self.server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class ScriptedA:
    """A fake Service A (a plain WSGI app) whose answers a test scripts and whose requests it records.

    ``statuses`` are answered in order (the last one repeats); while ``gate`` is cleared every request
    hangs until it is set (bounded), which is how a test makes A "too slow" without sleeping.
    """

    def __init__(self, statuses: list[int] | None = None, body: bytes | None = None) -> None:
        self.statuses = list(statuses or [200])
        self.body = body
        self.requests: list[dict[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self._lock = threading.Lock()

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def hang(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        with self._lock:
            self.requests.append(dict(environ))
            status = self.statuses[min(len(self.requests) - 1, len(self.statuses) - 1)]
        self.gate.wait(timeout=10)
        if self.body is not None:
            payload = self.body
        elif status == 200:
            msg = environ.get("QUERY_STRING", "").partition("msg=")[2]
            payload = b'{"echo":"%s"}' % msg.encode("latin-1")  # enough for ASCII test messages
        else:
            payload = b'{"error":"scripted failure"}'
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(f"{status} Scripted", headers)
        return [payload]



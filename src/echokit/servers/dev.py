"""``python service_x/app.py``: the Flask development server, as the document runs it, made to stop well.

On SIGTERM or Ctrl+C the service turns unready, waits the drain delay, stops accepting, lets
in-flight requests finish (up to the drain timeout) and exits 0. A second signal exits at once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from echokit.extension import echokit_of
from echokit.logs import escape_control
from echokit.servers import SERVER_NAME


class QuietRequestHandler(WSGIRequestHandler):
    """Werkzeug's handler without its own access line (ours is logged once per request) or
    version banner, and with JSON bodies for the errors it answers itself (e.g. 414)."""

    # A client that connects and sends nothing, or stops in the middle of its headers, is dropped after
    # this long (gunicorn's keepalive is the same 5 s), so it cannot hold a thread for ever.
    timeout = 5
    # Errors found before the HTTP version is known still get a status line (http.server's default,
    # HTTP/0.9, sends a bare body).
    default_request_version = "HTTP/1.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log(self, type: str, message: str, *args: Any) -> None:
        """http.server's own lines (timeouts, refused requests) in the service's log format, escaped."""
        service = echokit_of(self.server.app).server.service
        logging.getLogger(service).warning("%s", escape_control(message % args if args else message))

    def parse_request(self) -> bool:
        """http.server's parsing, refusing HTTP/0.9 and raw non-ASCII request targets like gunicorn does."""
        if len(str(self.raw_requestline, "iso-8859-1").split()) == 2:
            # HTTP/0.9 has no headers: http.server would wait for a blank line that never comes.
            self.command, self.request_version, self.close_connection = "", self.default_request_version, True
            self.send_error(400, "HTTP/0.9 requests are not supported")
            return False
        if not super().parse_request():
            return False
        if not self.path.isascii():
            # werkzeug would UTF-8-encode the latin-1 text again: 'é' would reach the app as 'Ã©'.
            self.send_error(400, "Invalid request target: non-ASCII bytes must be percent-encoded")
            return False
        return True

    def version_string(self) -> str:
        return SERVER_NAME

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        short, _long = self.responses.get(code, ("Error", ""))
        body = json.dumps({"error": message or short}).encode()
        self.log_error("code %d, message %s", code, escape_control(message or short))
        self.send_response(code, short)
        self.send_header("Connection", "close")
        self.close_connection = True
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(body)


def serve(app: Flask, host: str, port: int, logger: logging.Logger) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then drain and return (the caller exits 0)."""
    lifecycle = echokit_of(app).lifecycle
    server = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler)
    # werkzeug's logger writes through the service's handler: one line in the document's format.
    werkzeug_logger = logging.getLogger("werkzeug")
    werkzeug_logger.handlers = list(logger.handlers)
    werkzeug_logger.setLevel(logger.level)
    werkzeug_logger.propagate = False
    stopping = threading.Event()

    def drain_then_stop() -> None:
        if lifecycle.drain_delay_s > 0:
            logger.info("draining: /ready answers 503 for %.1fs before the listener closes", lifecycle.drain_delay_s)
            time.sleep(lifecycle.drain_delay_s)
        server.shutdown()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            logger.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        stopping.set()
        lifecycle.begin_drain()
        logger.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        threading.Thread(target=drain_then_stop, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("%s listening on http://%s:%d (Flask development server)", logger.name, host, server.port)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        # The in-flight count drops once a response body has been sent (echokit.middleware), so
        # waiting for it to reach zero lets every body reach its client before the process exits.
        if not lifecycle.wait_idle(lifecycle.drain_timeout_s):
            logger.warning("drain timeout: %d requests still in flight, exiting anyway", lifecycle.in_flight)
        server.server_close()
        logger.info("stopped")


def run_main(build: Any, settings_loader: Any) -> None:
    """Entry point body shared by both ``app.py`` scripts: settings, app, server, clean exit."""
    from echokit.settings import SettingsError

    try:
        settings = settings_loader()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = build(settings)
    logger = logging.getLogger(settings.server.service)
    try:
        serve(app, settings.server.host, settings.server.port, logger)
    except OSError as exc:
        logger.error("cannot listen on %s: %s", settings.server.bind, exc.strerror or exc)
        raise SystemExit(1) from None

"""gunicorn's gevent worker, with draining on SIGTERM and JSON bodies for its own errors.

gevent because B spends its time waiting on A: each request is a cheap greenlet, so 200 calls
hanging on a frozen A cost 200 greenlets, not 200 threads, and ``/health`` keeps answering.
"""

from __future__ import annotations

import json
from types import FrameType
from typing import Any

import gevent
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from echokit.lifecycle import Lifecycle


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with a JSON body instead of an HTML page."""
    body = json.dumps({"error": reason, "details": mesg} if mesg else {"error": reason})
    response = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    util.write_nonblock(sock, response.encode("latin-1"))


# gunicorn answers malformed or oversized requests (414, 431, 400) before any app code runs;
# this makes those answers JSON like every other error of the services.
util.write_error = write_json_error


class GracefulGeventWorker(GeventWorker):  # type: ignore[misc]
    """On SIGTERM: /ready turns 503, serving goes on for the drain delay, then the worker stops
    accepting and gunicorn waits for in-flight requests (``graceful_timeout``)."""

    def _lifecycle(self) -> Lifecycle | None:
        extensions = getattr(getattr(self, "wsgi", None), "extensions", None) or {}
        lifecycle = extensions.get("echokit.lifecycle")
        return lifecycle if isinstance(lifecycle, Lifecycle) else None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        lifecycle = self._lifecycle()
        if lifecycle is None or not lifecycle.begin_drain() or lifecycle.drain_delay_s <= 0:
            self.alive = False
            return
        self.log.info("draining: /ready answers 503 for %.1fs before the listener closes", lifecycle.drain_delay_s)
        gevent.spawn_later(lifecycle.drain_delay_s, self._stop_accepting)

    def _stop_accepting(self) -> None:
        self.alive = False

"""CPU per request of A's and B's WSGI apps in-process, by route: the app layer alone (issue 13).

    python -m bench.apps                # ~1 min
    python -m bench.apps --rounds 5     # a quick look
    python -m bench.apps --gevent       # threading monkey-patched, as in a gunicorn gevent worker

Each app is called as a server calls it, ``app.wsgi_app(environ, start_response)`` with a prebuilt
environ like gunicorn's and the body iterated and closed, so Flask, the views and the observing
middleware (request id, metrics in multiprocess mode, access line written to /dev/null) all run; B's
client for A is a stub, so the upstream call is not in these figures (bench.layers times it).
Figures are microseconds of this process's CPU per request. The rows are interleaved round by
round and each keeps its least disturbed round (the minimum), which is what survives a shared
machine best; compare two trees by running both in the same conditions.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from bench import micro  # noqa: F401  # sets PROMETHEUS_MULTIPROC_DIR before prometheus_client loads

_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - the access lines' sink for the whole run
_ENVIRON = {
    "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8081",
    "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000", "RAW_URI": "/",
    "HTTP_HOST": "127.0.0.1:8081", "HTTP_USER_AGENT": "wrk", "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
    "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False, "wsgi.errors": _DEVNULL,
    "wsgi.input": io.BytesIO(b""),
}


class StubClient:
    """B's client for A, answering like A at no cost, so the app's own layers can be timed without the call."""

    def echo(self, msg: str, request_id: str | None = None) -> dict[str, str]:
        return {"echo": msg}

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
    return None


def request(app: Any, path: str, query: str = "", **headers: str) -> Callable[[], None]:
    """One GET of ``path?query`` through ``app`` as a WSGI server makes it."""
    base = {**_ENVIRON, "PATH_INFO": path, "QUERY_STRING": query, **headers}

    def call() -> None:
        body: Iterable[bytes] = app(base.copy(), _start_response)
        for _ in body:
            pass
        close = getattr(body, "close", None)
        if close is not None:
            close()

    return call


def interleaved(calls: dict[str, Callable[[], None]], n: int, rounds: int) -> dict[str, float]:
    """µs of CPU per call: every round times each call ``n`` times; each keeps its minimum round."""
    for call in calls.values():
        for _ in range(200):
            call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.process_time()
            for _ in range(n):
                call()
            best[name] = min(best[name], (time.process_time() - started) / n * 1e6)
    return best


def rows() -> dict[str, Callable[[], None]]:
    import logging

    from flask import Flask, Response

    from echokit.settings import service_a_settings, service_b_settings
    from service_a.app import create_app as create_a
    from service_b.app import create_app as create_b

    a = create_a(service_a_settings({}))
    b = create_b(service_b_settings({"SERVICE_A_URL": "http://127.0.0.1:9"}), client=StubClient())  # type: ignore[arg-type]
    for name in ("service_a", "service_b"):
        handler = logging.getLogger(name).handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(_DEVNULL)
    bare = Flask("bare")
    body = b'{"msg":"hello","echo_response":{"echo":"hello"}}'
    bare.add_url_rule("/call-echo", "call_echo", lambda: Response(body, mimetype="application/json"))
    return {
        "bare Flask app, prebuilt body (reference)": request(bare.wsgi_app, "/call-echo", "msg=hello"),
        "A GET /echo?msg=hello": request(a.wsgi_app, "/echo", "msg=hello"),
        "A GET /echo, X-Request-ID + X-Request-Timeout-Ms (as B calls it)": request(
            a.wsgi_app, "/echo", "msg=hello", HTTP_X_REQUEST_ID="0af7651916cd43dd8448eb211c80319c",
            HTTP_X_REQUEST_TIMEOUT_MS="1990",
        ),
        "A GET /health": request(a.wsgi_app, "/health"),
        "A GET /nowhere (404)": request(a.wsgi_app, "/nowhere"),
        "B GET /call-echo?msg=hello (stub client)": request(b.wsgi_app, "/call-echo", "msg=hello"),
        "B GET /call-echo (400)": request(b.wsgi_app, "/call-echo"),
        "B GET /health": request(b.wsgi_app, "/health"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument("-n", type=int, default=500, help="requests per row per round (default 500)")
    parser.add_argument(
        "--gevent", action="store_true",
        help="monkey-patch first, as the gunicorn gevent worker does (its locks are Python-level; the apps see it)",
    )
    args = parser.parse_args(argv)
    if args.gevent:
        from gevent import monkey

        monkey.patch_all(ssl=False)  # no TLS here; bench.micro imported urllib3 (and ssl) already
    real_stderr = sys.stderr
    sys.stderr = _DEVNULL  # start-up lines of the apps
    try:
        results = interleaved(rows(), args.n, args.rounds)
    finally:
        sys.stderr = real_stderr
    print("| request (in-process, app.wsgi_app) | CPU µs |\n|---|---:|")
    for name, us in results.items():
        print(f"| {name} | {us:.1f} |")
    patched = ", gevent monkey-patched" if args.gevent else ""
    print(f"\n{args.rounds} rounds x {args.n} requests{patched}, minimum round; load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

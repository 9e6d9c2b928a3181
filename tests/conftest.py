"""Fixtures for the fast unit tests: apps built from explicit settings, test clients, live servers.

Modelled on Flask's tutorial: an app factory fixture and a test client fixture. Settings always come
from a dict passed to ``service_a_settings``/``service_b_settings``, never from the real environment,
so a developer's exported ``SERVICE_A_URL`` or ``FAULT_*`` can never change a test's outcome.

"Live" servers are real HTTP servers (werkzeug ``make_server(threaded=True)``) in a thread on an
ephemeral port: B's client talks to them over real sockets, nothing is mocked.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from echokit.extension import echokit_of
from echokit.settings import service_a_settings, service_b_settings
from harness import free_port
from service_a.app import create_app as create_service_a
from service_b.app import create_app as create_service_b

# B's budget in these tests: short, so a timeout test costs a fraction of a second, not 2 s.
B_TEST_TIMEOUT_S = 0.3

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's request handler without its per-request stderr line (our apps log their own)."""

    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


class LiveServer:
    """A WSGI app served over real HTTP on 127.0.0.1:<ephemeral port> in a background thread."""

    def __init__(self, app: WSGIApp) -> None:
        self.server: BaseWSGIServer = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
        )
        self.port = self.server.server_port
        # A short poll interval keeps shutdown() (which waits for the serve loop) quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[[WSGIApp], LiveServer]]:
    """Serve any WSGI app for real: ``serve(app).url``; every server is stopped at teardown."""
    servers: list[LiveServer] = []

    def start(app: WSGIApp) -> LiveServer:
        server = LiveServer(app)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        server.close()


@pytest.fixture
def make_a() -> Callable[..., Flask]:
    """Build Service A from an env dict: ``make_a({"FAULT_DELAY_MS": "100"})``."""

    def build(env: dict[str, str] | None = None) -> Flask:
        return create_service_a(service_a_settings(env or {}))

    return build


@pytest.fixture
def make_b() -> Iterator[Callable[..., Flask]]:
    """Build Service B pointed at ``a_url`` with the short test budget unless ``env`` overrides it."""
    apps: list[Flask] = []

    def build(a_url: str, env: dict[str, str] | None = None) -> Flask:
        full_env = {"SERVICE_A_URL": a_url, "UPSTREAM_TIMEOUT_SECONDS": str(B_TEST_TIMEOUT_S)}
        full_env.update(env or {})
        app = create_service_b(service_b_settings(full_env))
        apps.append(app)
        return app

    yield build
    for app in apps:  # close B's connection pool so no keep-alive socket outlives the test
        echokit_of(app).close()


@pytest.fixture
def b_budget_s() -> float:
    """B's UPSTREAM_TIMEOUT_SECONDS in apps built by ``make_b`` (unless a test overrides it)."""
    return B_TEST_TIMEOUT_S


@pytest.fixture
def app_a(make_a: Callable[..., Flask]) -> Flask:
    """Service A with the document's defaults and no fault injection."""
    return make_a()


@pytest.fixture
def client_a(app_a: Flask) -> FlaskClient:
    return app_a.test_client()


@pytest.fixture
def service_a(make_a: Callable[..., Flask], serve: Callable[[WSGIApp], LiveServer]) -> LiveServer:
    """A real, healthy Service A served in-process over HTTP."""
    return serve(make_a())


@pytest.fixture
def slow_service_a(make_a: Callable[..., Flask], serve: Callable[[WSGIApp], LiveServer]) -> LiveServer:
    """A real Service A whose every /echo is delayed far beyond B's test budget."""
    delay_ms = int(B_TEST_TIMEOUT_S * 1000 * 10)
    return serve(make_a({"FAULT_DELAY_MS": str(delay_ms)}))


@pytest.fixture
def app_b(make_b: Callable[..., Flask], service_a: LiveServer) -> Flask:
    """Service B wired to the live in-process Service A."""
    return make_b(service_a.url)


@pytest.fixture
def client_b(app_b: Flask) -> FlaskClient:
    return app_b.test_client()


@pytest.fixture
def refused_url() -> str:
    """The URL of a loopback port that nothing listens on, so connecting is refused."""
    return f"http://127.0.0.1:{free_port()}"


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


@pytest.fixture
def scripted_a(serve: Callable[[WSGIApp], LiveServer]) -> Iterator[Callable[..., tuple[ScriptedA, LiveServer]]]:
    """Serve a ScriptedA for real: ``fake, server = scripted_a([503, 200])``; hung requests are released."""
    fakes: list[ScriptedA] = []

    def start(statuses: list[int] | None = None, body: bytes | None = None) -> tuple[ScriptedA, LiveServer]:
        fake = ScriptedA(statuses, body)
        fakes.append(fake)
        return fake, serve(fake)

    yield start
    for fake in fakes:  # runs before serve's teardown, so no handler thread is left waiting
        fake.release()

"""Fixtures for the in-process tests (tests/unit, the service tests): apps from explicit settings, clients, servers.

Modelled on Flask's tutorial: an app factory fixture and a test client fixture. Settings always come
from a dict passed to ``service_a_settings``/``service_b_settings``, never from the real environment,
so a developer's exported ``SERVICE_A_URL`` or ``FAULT_*`` can never change a test's outcome.

"Live" servers are real HTTP servers (werkzeug ``make_server(threaded=True)``) in a thread on an
ephemeral port: B's client talks to them over real sockets, nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from echokit.extension import echokit_of
from echokit.settings import service_a_settings, service_b_settings
from service_a.app import create_app as create_service_a
from service_b.app import create_app as create_service_b
from tests.support.harness import free_port
from tests.support.live import LiveServer, ScriptedA, WSGIApp

# B's budget in these tests: short, so a timeout test costs a fraction of a second, not 2 s.
B_TEST_TIMEOUT_S = 0.3


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

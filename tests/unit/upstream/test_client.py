"""B's EchoClient used directly (no Flask) against real servers on loopback."""

from __future__ import annotations

import dataclasses
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from echokit.metrics import Metrics
from echokit.settings import service_b_settings
from echokit.upstream import BAD_RESPONSE, UNAVAILABLE, EchoClient, UpstreamError
from tests.support.live import serving


@pytest.fixture
def make_client() -> Iterator[Callable[..., EchoClient]]:
    """Build EchoClients for a URL with a short budget; their pools are closed at teardown."""
    clients: list[EchoClient] = []

    def build(url: str, metrics: Metrics | None = None, **overrides: Any) -> EchoClient:
        defaults = service_b_settings({"SERVICE_A_URL": url}).upstream
        settings = dataclasses.replace(defaults, timeout_s=overrides.pop("timeout_s", 0.3), **overrides)
        client = EchoClient(settings, metrics=metrics)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


class ResetFirstHandler(socketserver.BaseRequestHandler):
    """Resets the first connection after reading the request; answers later ones with an echo."""

    def handle(self) -> None:
        server: ResetFirstServer = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.recv(65536)
        with server.lock:
            server.connections += 1
            first = server.connections == 1
        if first:
            # SO_LINGER with a zero timeout turns close() into a TCP RST: the peer sees "connection reset".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        payload = b'{"echo":"hello"}'
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )


class ResetFirstServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ResetFirstHandler)
        self.lock = threading.Lock()
        self.connections = 0


@pytest.fixture
def reset_first_server() -> Iterator[ResetFirstServer]:
    with serving(ResetFirstServer()) as server:
        yield server


def test_echo_returns_as_answer(make_client: Callable[..., EchoClient], service_a: Any) -> None:
    """Against a healthy A, echo("hello") returns {"echo": "hello"} and the breaker stays closed."""
    client = make_client(service_a.url)
    assert client.echo("hello") == {"echo": "hello"}
    assert client.echo("a&b=c #d") == {"echo": "a&b=c #d"}
    assert client.status()["circuit_breaker"]["state"] == "closed"


def test_refused_connection_raises_a_retryable_connection_error(
    make_client: Callable[..., EchoClient], refused_url: str
) -> None:
    """With nothing listening, echo raises UpstreamError 503 'Connection error: ...' after its retries."""
    metrics = Metrics()
    client = make_client(refused_url, metrics=metrics, retry_attempts=3)
    with pytest.raises(UpstreamError) as caught:
        client.echo("hello")
    error = caught.value
    assert (error.outcome, error.status, error.error) == ("connection_error", 503, UNAVAILABLE)
    assert error.details.startswith("Connection error:")
    assert "Connection refused" in error.details
    assert sample(metrics, "upstream_retries_total") == 2
    assert sample(metrics, "upstream_requests_total", {"outcome": "connection_error"}) == 1


def test_connection_reset_is_retried_and_succeeds(
    make_client: Callable[..., EchoClient], reset_first_server: ResetFirstServer
) -> None:
    """A connection reset on the first attempt is retried once on a new connection, and the echo succeeds."""
    metrics = Metrics()
    client = make_client(f"http://127.0.0.1:{reset_first_server.server_address[1]}", metrics=metrics)
    assert client.echo("hello") == {"echo": "hello"}
    assert reset_first_server.connections == 2
    assert sample(metrics, "upstream_retries_total") == 1
    assert sample(metrics, "upstream_requests_total", {"outcome": "success"}) == 1


def test_503_is_retried_and_succeeds(make_client: Callable[..., EchoClient], scripted_a: Callable[..., Any]) -> None:
    """A 503 on the first attempt is retried and the second attempt's echo is returned."""
    fake, server = scripted_a([503, 200])
    metrics = Metrics()
    client = make_client(server.url, metrics=metrics)
    assert client.echo("hello") == {"echo": "hello"}
    assert fake.hits == 2
    assert sample(metrics, "upstream_retries_total") == 1


def test_single_attempt_setting_switches_retries_off(
    make_client: Callable[..., EchoClient], scripted_a: Callable[..., Any]
) -> None:
    """With retry_attempts=1 a 503 is final: A is called exactly once."""
    fake, server = scripted_a([503, 200])
    client = make_client(server.url, retry_attempts=1)
    with pytest.raises(UpstreamError) as caught:
        client.echo("hello")
    assert caught.value.details == "Service A answered HTTP 503"
    assert fake.hits == 1


def test_retry_budget_caps_retries_across_calls(
    make_client: Callable[..., EchoClient], scripted_a: Callable[..., Any]
) -> None:
    """Once the retry budget is spent, failing calls reach A only once each."""
    fake, server = scripted_a([503])
    metrics = Metrics()
    client = make_client(
        server.url, metrics=metrics, retry_attempts=3, retry_budget_ratio=0.0, retry_budget_min_retries=2,
        breaker_failure_threshold=100,
    )
    for _ in range(3):
        with pytest.raises(UpstreamError):
            client.echo("hello")
    assert fake.hits == 3 + 2  # three first attempts, plus the two retries the budget allows
    assert sample(metrics, "upstream_retries_denied_total") == 2


def test_bad_body_is_a_502_invalid_response(
    make_client: Callable[..., EchoClient], scripted_a: Callable[..., Any]
) -> None:
    """A 200 with a non-JSON body raises UpstreamError 502 'Invalid response from Service A'."""
    _, server = scripted_a([200], body=b"not json")
    with pytest.raises(UpstreamError) as caught:
        make_client(server.url).echo("hello")
    assert (caught.value.status, caught.value.error, caught.value.outcome) == (502, BAD_RESPONSE, "bad_response")


def test_a_deadline_answer_is_reported_as_a_timeout(
    make_client: Callable[..., EchoClient], scripted_a: Callable[..., Any]
) -> None:
    """A's own 504 'Deadline exceeded' (it gave up at B's deadline) is reported as B's timeout."""
    _, server = scripted_a([504])
    with pytest.raises(UpstreamError) as caught:
        make_client(server.url, retry_attempts=1).echo("hello")
    assert caught.value.outcome == "timeout"
    assert caught.value.details == "Timeout: Service A did not answer within 0.3s"

"""B's EchoClient over several endpoints of A (real loopback servers, threads as in the dev server)."""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from echokit.metrics import Metrics
from echokit.resilience.clock import ManualClock
from echokit.settings import service_b_settings
from echokit.upstream import EchoClient, UpstreamError


@pytest.fixture
def make_client() -> Iterator[Callable[..., EchoClient]]:
    """EchoClients for a list of URLs; closed at teardown."""
    clients: list[EchoClient] = []

    def build(urls: list[str], metrics: Metrics | None = None, clock: Any = None, **overrides: Any) -> EchoClient:
        defaults = service_b_settings({"SERVICE_A_URL": ",".join(urls)}).upstream
        settings = dataclasses.replace(defaults, timeout_s=overrides.pop("timeout_s", 1.0), **overrides)
        kwargs: dict[str, Any] = {"metrics": metrics}
        if clock is not None:
            kwargs["clock"] = clock
        client = EchoClient(settings, **kwargs)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_host_header_is_the_configured_name_not_the_address(make_client, scripted_a):
    """Calling A by name, B connects to the name's address but sends the name as Host."""
    fake, server = scripted_a()
    client = make_client([f"http://localhost:{server.port}"], hedge_delay_s=None, hedging=False)
    assert client.echo("hi") == {"echo": "hi"}
    assert fake.requests[-1]["HTTP_HOST"] == f"localhost:{server.port}"
    assert any(e["endpoint"] == f"127.0.0.1:{server.port}" for e in client.status()["endpoints"])


def test_a_failed_attempt_is_retried_on_another_endpoint(make_client, scripted_a):
    """With one replica answering 503, every call still succeeds: its retry goes to the other replica."""
    bad, bad_server = scripted_a([503])
    good, good_server = scripted_a()
    client = make_client([bad_server.url, good_server.url], balancer="round_robin", hedging=False,
                         retry_budget_min_retries=100, outlier_consecutive_failures=1000)
    for _ in range(10):
        assert client.echo("x") == {"echo": "x"}
    assert bad.hits == 5 and good.hits == 10


def test_a_refused_connection_is_retried_at_once_elsewhere(make_client, scripted_a, refused_url):
    """Connection refused by one endpoint: the retry goes to another with no backoff."""
    _, good_server = scripted_a()
    clock = ManualClock()
    client = make_client([refused_url, good_server.url], clock=clock, balancer="round_robin", hedging=False)
    for _ in range(4):
        assert client.echo("x") == {"echo": "x"}
    assert clock.slept and all(s == 0.0 for s in clock.slept)


def test_one_failing_replica_does_not_open_the_breaker(make_client, scripted_a):
    """A replica failing every call is one replica's problem: calls succeed elsewhere, the breaker stays closed."""
    _, bad_server = scripted_a([503])
    _, good_server = scripted_a()
    client = make_client([bad_server.url, good_server.url], balancer="round_robin", hedging=False,
                         breaker_failure_threshold=2, outlier_consecutive_failures=1000,
                         retry_budget_min_retries=100)
    for _ in range(10):
        client.echo("x")
    assert client.breaker.state == "closed"


def test_all_endpoints_failing_still_opens_the_breaker(make_client, refused_url):
    """When every replica refuses, calls fail and the breaker opens as it does for one A."""
    other = f"http://127.0.0.1:{_free_port()}"
    client = make_client([refused_url, other], hedging=False, breaker_failure_threshold=2, timeout_s=0.3)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            client.echo("x")
    assert client.breaker.state == "open"


def test_timeouts_in_a_row_from_one_hung_endpoint_do_not_open_the_breaker(make_client, scripted_a):
    """Calls stuck together on one hung replica time out together while a healthy replica is still
    answering, so the breaker stays closed: the hung replica is ejection's business."""
    hung, hung_server = scripted_a()
    hung.hang()
    _, good_server = scripted_a()
    client = make_client([hung_server.url, good_server.url], balancer="round_robin", hedging=False,
                         breaker_failure_threshold=2, retry_attempts=1, timeout_s=0.2)
    outcomes: list[str] = []

    def call() -> None:
        try:
            client.echo("x")
            outcomes.append("ok")
        except UpstreamError as exc:
            outcomes.append(exc.outcome)

    threads = [threading.Thread(target=call) for _ in range(4)]  # round robin: two on each replica
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(outcomes) == ["ok", "ok", "timeout", "timeout"]
    assert client.breaker.state == "closed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_hung_endpoint_is_hedged_and_the_loser_dropped(make_client, scripted_a):
    """A call stuck on a hung replica is sent to another after the hedge delay; the first answer wins
    and the hung attempt's connection is dropped, not returned to the pool."""
    hung, hung_server = scripted_a()
    hung.hang()
    _, good_server = scripted_a()
    metrics = Metrics()
    client = make_client([hung_server.url, good_server.url], metrics=metrics, balancer="round_robin",
                         hedge_delay_s=0.02, hedge_budget_ratio=1.0, timeout_s=5.0)
    started = time.monotonic()
    assert client.echo("x") == {"echo": "x"}  # round robin: the first call goes to the hung one
    assert time.monotonic() - started < 1.0
    good_key = good_server.url.removeprefix("http://")
    assert sample(metrics, "upstream_hedges_total", {"endpoint": good_key}) == 1
    hung_endpoint = next(e for e in client.endpoints.endpoints if e.key == hung_server.url.removeprefix("http://"))
    deadline = time.monotonic() + 2
    while hung_endpoint.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert hung_endpoint.in_flight == 0
    idle = [c for c in list(hung_endpoint.pool.pool.queue) if c is not None and c.sock is not None]
    assert idle == [], "the abandoned attempt's connection is not kept for reuse"


def test_a_timeout_is_logged_as_timeout_with_the_endpoint_url(make_client, scripted_a, caplog):
    """A read timeout keeps the document's outbound line: the endpoint's URL and 'failed timeout'."""
    fake, server = scripted_a()
    fake.hang()
    client = make_client([server.url], timeout_s=0.2, retry_attempts=1)
    with caplog.at_level(logging.WARNING, logger="service_b"), pytest.raises(UpstreamError):
        client.echo("x")
    fake.release()
    assert any(
        r.getMessage().startswith(f"outbound GET {server.url}/echo timeout=0.20s attempt=1 -> failed timeout after")
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_resolve_seconds_zero_resolves_once_and_a_name_that_never_resolved_fails_cleanly(scripted_a):
    """SERVICE_A_RESOLVE_SECONDS=0: one resolution at start, no resolver thread; with no address known a
    call is a retryable 503 connection error, and the name is tried again on demand."""
    _, server = scripted_a()
    answers: list[list[str] | OSError] = [OSError("Name or service not known"), ["127.0.0.1"]]
    calls: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        answer = answers[min(len(calls) - 1, len(answers) - 1)]
        if isinstance(answer, OSError):
            raise answer
        return answer

    clock = ManualClock()
    settings = dataclasses.replace(
        service_b_settings({"SERVICE_A_URL": f"http://a.internal:{server.port}"}).upstream,
        resolve_interval_s=0, retry_attempts=1,
    )
    client = EchoClient(settings, clock=clock, resolver=resolver)
    try:
        assert calls == ["a.internal"] and client._refresher is None
        with pytest.raises(UpstreamError) as caught:
            client.echo("x")  # the first resolution failed moments ago: not retried yet
        assert caught.value.status == 503 and "no address known for a.internal" in caught.value.details
        clock.advance(1.0)
        assert client.echo("x") == {"echo": "x"}  # resolved on demand, once a second at most
        assert calls == ["a.internal", "a.internal"]
    finally:
        client.close()

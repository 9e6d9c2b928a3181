"""Graceful shutdown on SIGTERM, for both services, under gunicorn and under ``python service_x/app.py``.

The order a load balancer relies on: /ready turns 503 first (while /health stays 200 and requests
are still served for the drain delay), requests in flight finish, then the process exits 0.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable

import pytest
import requests

from tests.support.harness import ServiceProcess, port_is_closed, wait_until

DRAIN_DELAY_S = 0.5
SLOW_MS = 1200  # A's injected delay: the request that is in flight when SIGTERM arrives
_IN_FLIGHT = re.compile(r"^http_requests_in_flight (\S+)$", re.MULTILINE)


def get_once(service: ServiceProcess, path: str, timeout: float = 5.0) -> requests.Response:
    """One GET on a connection of its own, closed afterwards (no idle keep-alive to wait for)."""
    return requests.get(service.url + path, timeout=timeout, headers={"Connection": "close"})


def in_flight(service: ServiceProcess) -> float:
    """Requests the service is serving now, /metrics' own request included."""
    match = _IN_FLIGHT.search(get_once(service, "/metrics").text)
    return float(match.group(1)) if match else 0.0


class Background:
    """A request made in a thread; ``result()`` waits for its response (or the exception it got)."""

    def __init__(self, service: ServiceProcess, path: str) -> None:
        self.response: requests.Response | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(service, path), daemon=True)
        self._thread.start()

    def _run(self, service: ServiceProcess, path: str) -> None:
        try:
            self.response = get_once(service, path, timeout=10)
        except requests.RequestException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    def result(self) -> requests.Response:
        self._thread.join(timeout=15)
        assert self.error is None, f"the in-flight request failed: {self.error!r}"
        assert self.response is not None
        return self.response


def start_pair(services: Callable[..., ServiceProcess], service: str, mode: str, a_env: dict[str, str],
               env: dict[str, str]) -> tuple[ServiceProcess, str]:
    """The service under test and the slow path to call on it (B gets a slow A behind it)."""
    a = services("a", mode=mode, workers=1, env={**a_env, **(env if service == "a" else {})})
    if service == "a":
        return a, "/echo?msg=inflight"
    b = services("b", mode=mode, workers=1, a_port=a.port, env=env)
    return b, "/call-echo?msg=inflight"


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
@pytest.mark.parametrize("service", ["a", "b"])
def test_sigterm_turns_unready_first_finishes_in_flight_requests_and_exits_0(services, service, mode):
    """On SIGTERM /ready answers 503 while /health stays 200, the request in flight gets its 200,
    and the process exits 0 soon after."""
    env = {"DRAIN_DELAY_SECONDS": str(DRAIN_DELAY_S), "DRAIN_TIMEOUT_SECONDS": "10", "LOG_PROBES": "false"}
    target, path = start_pair(services, service, mode, {"FAULT_DELAY_MS": str(SLOW_MS)}, env)
    assert get_once(target, "/ready").status_code == 200
    slow = Background(target, path)
    wait_until(lambda: in_flight(target) >= 2, 5, "the slow request to be in flight")

    sent = time.monotonic()
    target.proc.send_signal(signal.SIGTERM)
    ready: list[requests.Response] = []

    def unready() -> bool:
        ready.append(get_once(target, "/ready", timeout=2))
        return ready[-1].status_code == 503

    wait_until(unready, 2, "/ready to answer 503")
    unready_after = time.monotonic() - sent
    health = get_once(target, "/health")  # still live and still serving during the drain delay
    response = slow.result()
    code = target.proc.wait(timeout=15)
    exited_after = time.monotonic() - sent
    print(f"\n{service} under {mode}: /ready 503 after {unready_after * 1000:.0f}ms, in-flight answered "
          f"{response.status_code} after {(slow.finished_at - sent) * 1000:.0f}ms, exit {code} after "
          f"{exited_after * 1000:.0f}ms", flush=True)

    assert ready[-1].json()["status"] == "draining"
    assert "shutting down" in ready[-1].json()["error"]
    assert health.status_code == 200
    assert slow.finished_at > sent + unready_after, "/ready turned 503 before the in-flight request ended"
    assert response.status_code == 200
    assert response.json()["echo" if service == "a" else "msg"] == "inflight"
    assert code == 0
    assert port_is_closed(target.port)
    assert exited_after < SLOW_MS / 1000 + DRAIN_DELAY_S + 3.0  # drained promptly, not at a timeout
    assert "Traceback" not in target.log_text()


@pytest.mark.parametrize("mode", ["gunicorn", "dev"])
def test_a_request_longer_than_the_drain_timeout_does_not_hold_shutdown(services, mode):
    """A request still running when DRAIN_TIMEOUT_SECONDS ends does not keep the process alive."""
    env = {"FAULT_DELAY_MS": "8000", "DRAIN_TIMEOUT_SECONDS": "1", "LOG_PROBES": "false"}
    a = services("a", mode=mode, workers=1, env=env)
    slow = Background(a, "/echo?msg=stuck")
    wait_until(lambda: in_flight(a) >= 2, 5, "the slow request to be in flight")
    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    a.proc.wait(timeout=10)
    took = time.monotonic() - sent
    slow._thread.join(timeout=10)
    print(f"\nA under {mode} with an 8 s request and a 1 s drain timeout: exited {a.proc.returncode} "
          f"after {took * 1000:.0f}ms", flush=True)
    # gunicorn's graceful_timeout is drain delay + drain timeout + 1 s; the dev server waits the drain timeout.
    assert took < 1 + 1 + 2.0
    assert slow.response is None or slow.response.status_code != 200, "the stuck request cannot have finished"


def test_idle_keep_alive_connections_do_not_hold_a_gunicorn_shutdown(services):
    """Under gunicorn, a client's idle keep-alive connection is closed on SIGTERM instead of holding
    the worker until the keep-alive timeout (5 s)."""
    import http.client

    a = services("a", mode="gunicorn", workers=1, env={"LOG_PROBES": "false"})
    idle = http.client.HTTPConnection("127.0.0.1", a.port, timeout=5)
    idle.request("GET", "/echo?msg=keep")
    first = idle.getresponse()
    assert (first.status, first.read()) == (200, b'{"echo":"keep"}')
    assert first.getheader("Connection", "").lower() != "close"  # the connection stays open, idle
    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    code = a.proc.wait(timeout=10)
    took = time.monotonic() - sent
    print(f"\nA under gunicorn with an idle keep-alive client: exit {code} after {took * 1000:.0f}ms", flush=True)
    # The worker checks its state once a second (gunicorn), twice on the way out; not 5 s of keep-alive.
    assert code == 0
    assert took < 3.5
    idle.close()

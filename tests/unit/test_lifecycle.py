"""A process's lifecycle: ready from the start, draining after the first SIGTERM, idle when nothing is in flight."""

from __future__ import annotations

import threading

from echokit.lifecycle import Lifecycle, LifecycleState


def test_a_new_lifecycle_is_ready_and_reports_200() -> None:
    """Nothing has to mark it ready: the app is ready as soon as it exists."""
    lifecycle = Lifecycle(drain_delay_s=0, drain_timeout_s=1)
    assert lifecycle.state is LifecycleState.READY
    assert lifecycle.readiness() == (200, {"status": "ready"})


def test_begin_drain_turns_unready_once() -> None:
    """The first begin_drain returns True and /ready turns 503 draining; a second one returns False."""
    lifecycle = Lifecycle(drain_delay_s=0, drain_timeout_s=1)
    assert lifecycle.begin_drain() is True
    assert lifecycle.begin_drain() is False
    status, body = lifecycle.readiness()
    assert (status, body["status"]) == (503, "draining")
    assert "draining in-flight requests" in str(body["error"])


def test_wait_idle_returns_when_the_last_request_finishes() -> None:
    """wait_idle blocks while a request is in flight and returns True once it finishes."""
    lifecycle = Lifecycle(drain_delay_s=0, drain_timeout_s=1)
    lifecycle.request_started()
    finisher = threading.Timer(0.05, lifecycle.request_finished)
    finisher.start()
    assert lifecycle.wait_idle(5.0) is True
    assert lifecycle.in_flight == 0
    finisher.join()


def test_wait_idle_gives_up_at_its_timeout() -> None:
    """A request that never finishes does not hold wait_idle past its timeout."""
    lifecycle = Lifecycle(drain_delay_s=0, drain_timeout_s=1)
    lifecycle.request_started()
    assert lifecycle.wait_idle(0.01) is False
    assert lifecycle.in_flight == 1

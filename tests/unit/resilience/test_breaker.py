"""The circuit breaker's state machine, on a hand-driven clock."""

from __future__ import annotations

import threading

import pytest

from echokit.resilience.breaker import CLOSED, HALF_OPEN, OPEN, BreakerConfig, CircuitBreaker, CircuitOpenError
from echokit.resilience.clock import ManualClock


def make_breaker(
    threshold: int = 3, rate: float = 0.5, min_calls: int = 10, window_s: float = 10.0, reset_s: float = 3.0
) -> tuple[CircuitBreaker, ManualClock, list[tuple[str, str, str]]]:
    clock = ManualClock()
    changes: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        BreakerConfig(threshold, rate, min_calls, window_s, reset_s),
        clock,
        on_change=lambda old, new, reason: changes.append((old, new, reason)),
    )
    return breaker, clock, changes


def fail(breaker: CircuitBreaker, times: int, description: str = "Connection error: refused") -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure(description)


def succeed(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record_success()


def test_a_new_breaker_is_closed_and_lets_calls_through() -> None:
    """A fresh breaker is closed and admits calls."""
    breaker, _, changes = make_breaker()
    breaker.before_call()
    assert breaker.state == CLOSED
    assert changes == []


def test_opens_after_n_consecutive_failures() -> None:
    """N-1 failures in a row keep it closed; the Nth opens it."""
    breaker, _, changes = make_breaker(threshold=3)
    fail(breaker, 2)
    assert breaker.state == CLOSED
    fail(breaker, 1)
    assert breaker.state == OPEN
    assert changes == [(CLOSED, OPEN, "3 consecutive failures")]


def test_a_success_resets_the_consecutive_count() -> None:
    """Failures interrupted by a success never reach the consecutive threshold."""
    breaker, _, _ = make_breaker(threshold=3, min_calls=1000)
    for _ in range(5):
        fail(breaker, 2)
        succeed(breaker, 1)
    assert breaker.state == CLOSED


def test_failures_in_a_row_from_one_of_several_endpoints_do_not_open_it() -> None:
    """With two endpoints needed, a run of failures all from one endpoint (a frozen replica whose stuck
    calls time out together) stays closed; the first failure from another endpoint in the run opens it."""
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerConfig(3, 0.5, 1000, 10.0, 3.0), clock, sources_needed=lambda: 2)
    for _ in range(6):
        breaker.record_failure("Timeout", sources={"127.0.0.2:8080"})
    assert breaker.state == CLOSED
    breaker.record_failure("Timeout", sources={"127.0.0.3:8080"})
    assert breaker.state == OPEN


def test_a_failure_no_endpoint_is_to_blame_for_counts_for_a_as_a_whole() -> None:
    """Failures without a source (no address known) open it even when two endpoints are needed."""
    clock = ManualClock()
    breaker = CircuitBreaker(BreakerConfig(3, 0.5, 1000, 10.0, 3.0), clock, sources_needed=lambda: 2)
    for _ in range(3):
        breaker.record_failure("Connection error: no address known")
    assert breaker.state == OPEN


def test_opens_on_failure_rate_once_min_calls_are_reached() -> None:
    """Alternating failures (50%) open the breaker once min_calls calls have been seen, not before."""
    breaker, _, changes = make_breaker(threshold=100, rate=0.5, min_calls=10)
    for _ in range(4):
        succeed(breaker, 1)
        fail(breaker, 1)
    assert breaker.state == CLOSED  # 8 calls: below min_calls
    succeed(breaker, 1)
    fail(breaker, 1)
    assert breaker.state == OPEN
    assert changes == [(CLOSED, OPEN, "failure rate 5/10 in the last 10s")]


def test_failure_rate_below_the_threshold_stays_closed() -> None:
    """A 20% failure rate under a 50% threshold never opens the breaker."""
    breaker, _, _ = make_breaker(threshold=100, rate=0.5, min_calls=10)
    for _ in range(10):
        succeed(breaker, 4)
        fail(breaker, 1)
    assert breaker.state == CLOSED


def test_old_failures_leave_the_rate_window() -> None:
    """Failures older than the window no longer count toward the failure rate."""
    breaker, clock, _ = make_breaker(threshold=100, rate=0.5, min_calls=10, window_s=10.0)
    fail(breaker, 5)
    clock.advance(11.0)
    succeed(breaker, 5)
    fail(breaker, 4)
    assert breaker.state == CLOSED  # 4/9 now; counting the old ones would be 9/14 over min_calls


def test_open_breaker_fails_fast_with_retry_after() -> None:
    """While open, calls are refused with the last failure's description and the time until a probe."""
    breaker, clock, _ = make_breaker(threshold=1, reset_s=3.0)
    fail(breaker, 1, "Service A answered HTTP 500")
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError) as caught:
        breaker.before_call()
    assert caught.value.retry_after_s == pytest.approx(2.0)
    assert str(caught.value).startswith("Service A answered HTTP 500 (circuit breaker open")
    assert breaker.snapshot()["retry_after_s"] == pytest.approx(2.0)


def test_after_reset_time_exactly_one_probe_goes_through() -> None:
    """After reset_s, the next call becomes the probe and concurrent calls are refused until it ends."""
    breaker, clock, changes = make_breaker(threshold=1, reset_s=3.0)
    fail(breaker, 1)
    clock.advance(3.0)
    breaker.before_call()  # the probe
    assert breaker.state == HALF_OPEN
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as caught:
            breaker.before_call()
        assert caught.value.retry_after_s == 3.0
    assert changes[-1][:2] == (OPEN, HALF_OPEN)


def test_probe_success_closes_the_breaker() -> None:
    """A successful probe closes the breaker and calls flow again."""
    breaker, clock, changes = make_breaker(threshold=1)
    fail(breaker, 1)
    clock.advance(3.0)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == CLOSED
    succeed(breaker, 3)
    assert [c[:2] for c in changes] == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert changes[-1][2] == "probe call succeeded"


def test_probe_failure_reopens_for_another_reset_period() -> None:
    """A failed probe re-opens the breaker and the wait for the next probe starts again."""
    breaker, clock, changes = make_breaker(threshold=1, reset_s=3.0)
    fail(breaker, 1)
    clock.advance(3.0)
    breaker.before_call()
    breaker.record_failure("still down")
    assert breaker.state == OPEN
    assert changes[-1] == (HALF_OPEN, OPEN, "probe call failed")
    clock.advance(2.9)
    with pytest.raises(CircuitOpenError):
        breaker.before_call()
    clock.advance(0.1)
    breaker.before_call()
    assert breaker.state == HALF_OPEN


def test_released_probe_lets_another_call_probe() -> None:
    """A probe that ended without a verdict (e.g. shed locally) frees the probe slot for the next call."""
    breaker, clock, _ = make_breaker(threshold=1)
    fail(breaker, 1)
    clock.advance(3.0)
    breaker.before_call()
    breaker.release_probe()
    breaker.before_call()  # would raise if the slot were still taken
    assert breaker.state == HALF_OPEN


def test_closing_starts_a_fresh_failure_window() -> None:
    """After closing, the failures that opened the breaker do not count toward the rate again."""
    breaker, clock, _ = make_breaker(threshold=100, rate=0.5, min_calls=4)
    fail(breaker, 4)
    assert breaker.state == OPEN
    clock.advance(3.0)
    succeed(breaker, 1)  # the probe
    succeed(breaker, 2)
    fail(breaker, 1)
    assert breaker.state == CLOSED  # 1/4 since closing; 5/8 if the old window had been kept


def test_only_one_of_many_concurrent_callers_becomes_the_probe() -> None:
    """When many threads call at once after the reset time, exactly one is let through."""
    breaker, clock, _ = make_breaker(threshold=1)
    fail(breaker, 1)
    clock.advance(3.0)
    start = threading.Barrier(8)
    admitted: list[bool] = []
    lock = threading.Lock()

    def call() -> None:
        start.wait(timeout=5)
        try:
            breaker.before_call()
            ok = True
        except CircuitOpenError:
            ok = False
        with lock:
            admitted.append(ok)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(admitted) == [False] * 7 + [True]


def test_snapshot_reports_state_and_counts() -> None:
    """snapshot() shows the state and recent counts that B's /ready displays."""
    breaker, _, _ = make_breaker(threshold=5)
    succeed(breaker, 2)
    fail(breaker, 1)
    assert breaker.snapshot() == {
        "state": CLOSED, "consecutive_failures": 1, "recent_failures": 1, "recent_successes": 2,
    }


def test_before_call_says_which_call_is_the_probe() -> None:
    """before_call returns True only for the half-open probe, False for ordinary closed-state calls."""
    breaker, clock, _ = make_breaker(threshold=1)
    assert breaker.before_call() is False
    breaker.record_failure("down")
    clock.advance(3.0)
    assert breaker.before_call() is True


def test_a_stragglers_success_does_not_close_a_half_open_breaker() -> None:
    """A call admitted before the circuit opened that succeeds late leaves the verdict to the probe."""
    breaker, clock, _ = make_breaker(threshold=2)
    straggler = breaker.before_call()  # admitted while closed, still in flight
    fail(breaker, 2)
    clock.advance(3.0)
    probe = breaker.before_call()
    breaker.record_success(probe=straggler)
    assert breaker.state == HALF_OPEN
    with pytest.raises(CircuitOpenError):
        breaker.before_call()  # the probe slot is still taken
    breaker.record_failure("still down", probe=probe)
    assert breaker.state == OPEN


def test_a_stragglers_failure_does_not_reopen_a_half_open_breaker() -> None:
    """A late failure of a pre-open call neither re-opens the breaker nor frees the probe slot."""
    breaker, clock, _ = make_breaker(threshold=2)
    straggler = breaker.before_call()
    fail(breaker, 2)
    clock.advance(3.0)
    probe = breaker.before_call()
    breaker.record_failure("late timeout", probe=straggler)
    assert breaker.state == HALF_OPEN
    breaker.record_success(probe=probe)
    assert breaker.state == CLOSED


def test_refusal_names_why_the_circuit_opened() -> None:
    """The refusal message carries the last failure and the reason the circuit opened."""
    breaker, _, _ = make_breaker(threshold=2)
    fail(breaker, 2, "Connection error: refused")
    with pytest.raises(CircuitOpenError, match=r"^Connection error: refused \(circuit breaker open: 2 consecutive"):
        breaker.before_call()

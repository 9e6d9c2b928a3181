"""Bounded retries: by attempts, by the request's deadline, and by a budget shared by all calls.

The loop itself is tenacity's; this module decides what may be retried and when to stop.
Backoff is exponential with full jitter (a uniform wait between 0 and the current ceiling).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from echokit.resilience.clock import Clock
from echokit.resilience.deadline import Deadline
from echokit.resilience.window import SlidingCounts

T = TypeVar("T")

# Below this much budget an attempt cannot finish a round trip: stop instead of retrying.
MIN_ATTEMPT_S = 0.005


class RetryBudget:
    """Allows retries while they stay under ``ratio`` of recent calls (plus ``min_retries``).

    Envoy's retry budget: however many calls fail, retries add at most ``ratio`` extra load on A,
    so a struggling A is never hit by three times the traffic.
    """

    def __init__(self, ratio: float, min_retries: int, window_s: float, clock: Clock) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self._counts = SlidingCounts(window_s, clock, ("calls", "retries"))
        self._lock = threading.Lock()

    def record_call(self) -> None:
        with self._lock:
            self._counts.add("calls")

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and nothing taken) when it is spent."""
        with self._lock:
            allowed = max(self.min_retries, self.ratio * self._counts.total("calls"))
            if self._counts.total("retries") + 1 > allowed:
                return False
            self._counts.add("retries")
            return True

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {"calls": self._counts.total("calls"), "retries": self._counts.total("retries")}


class _StopWhen(tenacity.stop.stop_base):
    """A tenacity stop condition from a plain predicate."""

    def __init__(self, predicate: Callable[[tenacity.RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.predicate(retry_state)


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts and how long to back off; the defaults are declared once, as RETRY_* in echokit.settings."""

    attempts: int
    backoff_initial_s: float
    backoff_max_s: float


def run_with_retries(
    attempt: Callable[[int], T],
    *,
    policy: RetryPolicy,
    deadline: Deadline,
    budget: RetryBudget,
    is_retryable: Callable[[BaseException], bool],
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    on_denied: Callable[[BaseException], None] | None = None,
    no_backoff: Callable[[BaseException], bool] | None = None,
) -> T:
    """Call ``attempt(n)`` (n = 1, 2, ...) until it returns, retrying only what is safe to retry.

    Stops at ``policy.attempts``, when the next backoff would leave no time before ``deadline``,
    or when ``budget`` has no retry left; the last error is raised as it was. An error for which
    ``no_backoff`` is true is retried at once (e.g. refused by one endpoint, retried on another).
    """
    clock = deadline.clock
    draw = (rng or random).uniform

    def full_jitter(state: tenacity.RetryCallState) -> float:
        if no_backoff is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None and no_backoff(error):
                return 0.0
        ceiling = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (state.attempt_number - 1))
        return draw(0.0, ceiling)

    def out_of_time(state: tenacity.RetryCallState) -> bool:
        return deadline.remaining() - state.upcoming_sleep < MIN_ATTEMPT_S

    def budget_spent(state: tenacity.RetryCallState) -> bool:
        if budget.try_spend():
            return False
        error = state.outcome.exception() if state.outcome is not None else None
        if on_denied is not None and error is not None:
            on_denied(error)
        return True

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and error is not None:
            on_retry(state.attempt_number, error, state.upcoming_sleep)

    retrying = tenacity.Retrying(
        # Evaluated in order, so the budget is only spent when a retry will really happen.
        stop=tenacity.stop_any(
            tenacity.stop_after_attempt(policy.attempts), _StopWhen(out_of_time), _StopWhen(budget_spent)
        ),
        wait=full_jitter,
        retry=tenacity.retry_if_exception(is_retryable),
        sleep=clock.sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    for attempt_state in retrying:
        with attempt_state:
            return attempt(attempt_state.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

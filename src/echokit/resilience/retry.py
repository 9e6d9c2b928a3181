"""Bounded retries: by attempts, by the request's deadline, and by a budget shared by all calls.

A plain loop: nothing is built per call (a tenacity ``Retrying`` per call cost more than the rest of
the resilience layer, and under gevent its ``threading.local`` alone ~30 µs). Backoff is
exponential with full jitter (a uniform wait between 0 and the current ceiling).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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
    sleep = deadline.clock.sleep
    draw = (rng or random).uniform
    number = 1
    while True:
        try:
            return attempt(number)
        except Exception as error:
            if not is_retryable(error):
                raise
            # The wait is drawn before the stop checks (as tenacity did), so a seeded rng gives the
            # same waits; the checks run in order, so the budget is only spent on a retry that happens.
            if no_backoff is not None and no_backoff(error):
                wait_s = 0.0
            else:
                wait_s = draw(0.0, min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (number - 1)))
            if number >= policy.attempts or deadline.remaining() - wait_s < MIN_ATTEMPT_S:
                raise
            if not budget.try_spend():
                if on_denied is not None:
                    on_denied(error)
                raise
            if on_retry is not None:
                on_retry(number, error, wait_s)
            sleep(wait_s)  # even 0: under gevent it lets other requests run between attempts
        number += 1

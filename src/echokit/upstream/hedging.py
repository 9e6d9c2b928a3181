"""Hedged requests: when a call has no answer after the hedge delay, ask a second endpoint too.

The delay is fixed (``UPSTREAM_HEDGE_DELAY_MS``) or adaptive: the recent p95 of successful
attempts, never below ``MIN_DELAY_S``, so only the slowest ~5 % of calls are hedged. Hedges draw
from a budget (a share of recent calls, like the retry budget), so a slow A as a whole is never
hit with double load. Pure: the clock is injected; the racing itself is the client's.
"""

from __future__ import annotations

import threading
from collections import deque

from echokit.resilience.clock import Clock
from echokit.resilience.retry import RetryBudget

MIN_DELAY_S = 0.010  # the floor of the adaptive delay: below it, hedges would chase ordinary jitter
COLD_DELAY_S = 0.050  # adaptive delay until enough successes were seen
MIN_SAMPLES = 100  # below this, the first few answers (a slow replica's among them) would set the p95
SAMPLES = 256  # successful attempts the adaptive p95 is taken over
BUDGET_WINDOW_S = 10.0


class HedgePolicy:
    """When to hedge (``delay_s``) and whether a hedge may be sent now (``try_spend``)."""

    def __init__(self, clock: Clock, budget_ratio: float, fixed_delay_s: float | None = None,
                 min_hedges: int = 1) -> None:
        self.fixed_delay_s = fixed_delay_s
        self.budget = RetryBudget(budget_ratio, min_hedges, BUDGET_WINDOW_S, clock)
        self._samples: deque[float] = deque(maxlen=SAMPLES)
        self._since_computed = 0
        self._delay_s = COLD_DELAY_S
        self._lock = threading.Lock()

    def record_call(self) -> None:
        self.budget.record_call()

    def observe_success(self, seconds: float) -> None:
        if self.fixed_delay_s is not None:
            return
        with self._lock:
            self._samples.append(seconds)
            self._since_computed += 1
            # Sorting 256 numbers costs microseconds: done every 16 successes, not on every call.
            if self._since_computed >= 16 and len(self._samples) >= MIN_SAMPLES:
                self._since_computed = 0
                ordered = sorted(self._samples)
                p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
                self._delay_s = max(MIN_DELAY_S, p95)

    def delay_s(self) -> float:
        return self.fixed_delay_s if self.fixed_delay_s is not None else self._delay_s

    def try_spend(self) -> bool:
        return self.budget.try_spend()

    def snapshot(self) -> dict[str, object]:
        return {
            "delay_ms": round(self.delay_s() * 1000, 3),
            "adaptive": self.fixed_delay_s is None,
            "budget": self.budget.snapshot(),
        }

"""Service A's opt-in fault injection: a delay and an error rate fixed at start-up.

Off unless the FAULT_* variables are set when A starts; nothing a client sends can switch it on.
A delay never outlasts the caller's deadline (``X-Request-Timeout-Ms``): A gives up at the
deadline instead of working for a caller that has already left. The policy is
:meth:`FaultInjector.apply`; A's view only turns its :class:`FaultOutcome` into an answer.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from echokit.settings import FaultSettings

__all__ = ["FaultInjector", "FaultOutcome", "FaultPlan"]


class FaultOutcome(str, Enum):
    """What the injected fault leaves for the request: answer it, fail it, or give it up."""

    NONE = "none"  # answer normally (after any delay)
    ERROR = "error"  # answer with FAULT_ERROR_STATUS
    ABANDONED = "abandoned"  # the caller's deadline passed during the delay: 504, work abandoned


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request: sleep this long, then answer normally or with ``error_status``."""

    delay_s: float
    error_status: int | None


class FaultInjector:
    """Draws each request's fault from the settings and applies it (``sleep`` and ``rng`` injectable)."""

    def __init__(
        self,
        settings: FaultSettings,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng or random.Random()
        self.sleep = sleep or time.sleep
        self.logger = logger or logging.getLogger("service_a")

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def plan(self) -> FaultPlan:
        s = self.settings
        delay_ms = s.delay_ms + (self.rng.uniform(0, s.delay_jitter_ms) if s.delay_jitter_ms else 0)
        fail = s.error_rate > 0 and self.rng.random() < s.error_rate
        return FaultPlan(delay_ms / 1000, s.error_status if fail else None)

    def apply(self, budget_s: float | None) -> FaultOutcome:
        """Inflict this request's fault within the caller's ``budget_s`` (None: no deadline sent)."""
        if not self.enabled:
            return FaultOutcome.NONE
        plan = self.plan()
        if budget_s is not None and plan.delay_s >= budget_s:
            # The caller stops waiting at its deadline: stop working then too.
            self.sleep(budget_s)
            self.logger.warning(
                "abandoned /echo after %.0fms: the caller's deadline passed before the injected %.0fms delay ended",
                budget_s * 1000, plan.delay_s * 1000,
            )
            return FaultOutcome.ABANDONED
        if plan.delay_s > 0:
            self.sleep(plan.delay_s)
        return FaultOutcome.NONE if plan.error_status is None else FaultOutcome.ERROR

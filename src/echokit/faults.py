"""Service A's opt-in fault injection: a delay and an error rate fixed at start-up.

Off unless the FAULT_* variables are set when A starts; nothing a client sends can switch it on.
A delay never outlasts the caller's deadline (``X-Request-Timeout-Ms``): A gives up at the
deadline instead of working for a caller that has already left.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from echokit.settings import FaultSettings


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one request: sleep this long, then answer normally or with ``error_status``."""

    delay_s: float
    error_status: int | None


class FaultInjector:
    def __init__(
        self,
        settings: FaultSettings,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        import time

        self.settings = settings
        self.rng = rng or random.Random()
        self.sleep = sleep or time.sleep

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def plan(self) -> FaultPlan:
        s = self.settings
        delay_ms = s.delay_ms + (self.rng.uniform(0, s.delay_jitter_ms) if s.delay_jitter_ms else 0)
        fail = s.error_rate > 0 and self.rng.random() < s.error_rate
        return FaultPlan(delay_ms / 1000, s.error_status if fail else None)

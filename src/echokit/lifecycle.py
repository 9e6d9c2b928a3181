"""Readiness and draining of one server process.

``/health`` (liveness) only says the process runs; ``/ready`` says whether it should get traffic.
On SIGTERM the process turns unready first, keeps serving for the drain delay, then stops
accepting and waits for in-flight requests (up to the drain timeout) before exiting.
"""

from __future__ import annotations

import threading
import time
from enum import Enum

__all__ = ["Lifecycle", "LifecycleState"]


class LifecycleState(str, Enum):
    """What ``/ready`` reports: ready from the start, draining from the first SIGTERM on."""

    READY = "ready"
    DRAINING = "draining"


class Lifecycle:
    """Per-process state (ready -> draining) plus the count of requests in flight."""

    def __init__(self, drain_delay_s: float, drain_timeout_s: float) -> None:
        self.drain_delay_s = drain_delay_s
        self.drain_timeout_s = drain_timeout_s
        self._state = LifecycleState.READY
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def state(self) -> LifecycleState:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def begin_drain(self) -> bool:
        """Turn unready; True the first time, False if already draining."""
        with self._lock:
            first = self._state is not LifecycleState.DRAINING
            self._state = LifecycleState.DRAINING
            return first

    def request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def request_finished(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._in_flight <= 0:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
            return True

    def readiness(self) -> tuple[int, dict[str, object]]:
        """Status code and JSON body for ``/ready``."""
        if self._state is LifecycleState.READY:
            return 200, {"status": LifecycleState.READY.value}
        return 503, {
            "status": LifecycleState.DRAINING.value,
            "error": "Not ready: shutting down: draining in-flight requests",
        }

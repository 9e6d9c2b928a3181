"""Readiness and draining of one server process.

``/health`` (liveness) only says the process runs; ``/ready`` says whether it should get traffic.
On SIGTERM the process turns unready first, keeps serving for the drain delay, then stops
accepting and waits for in-flight requests (up to the drain timeout) before exiting.
"""

from __future__ import annotations

import threading
import time


class Lifecycle:
    """Per-process state: starting -> ready -> draining, plus the count of requests in flight."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"

    def __init__(self, drain_delay_s: float = 0.0, drain_timeout_s: float = 10.0) -> None:
        self.drain_delay_s = drain_delay_s
        self.drain_timeout_s = drain_timeout_s
        self._state = self.STARTING
        self._in_flight = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def state(self) -> str:
        return self._state

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def mark_ready(self) -> None:
        with self._lock:
            if self._state == self.STARTING:
                self._state = self.READY

    def begin_drain(self) -> bool:
        """Turn unready; True the first time, False if already draining."""
        with self._lock:
            first = self._state != self.DRAINING
            self._state = self.DRAINING
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
        state = self._state
        if state == self.READY:
            return 200, {"status": "ready"}
        reason = "starting up" if state == self.STARTING else "shutting down: draining in-flight requests"
        return 503, {"status": state, "error": f"Not ready: {reason}"}

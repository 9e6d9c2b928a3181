"""Load shedding: a cap on calls to A in flight, so a hanging A cannot use up the whole process."""

from __future__ import annotations

import threading


class Bulkhead:
    """Admits up to ``limit`` concurrent calls; the next one is refused at once, never queued."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_enter(self) -> bool:
        with self._lock:
            if self._in_flight >= self.limit:
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

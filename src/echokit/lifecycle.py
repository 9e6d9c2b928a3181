"""Readiness and draining of one server process.

``/health`` (liveness) only says the process runs; ``/ready`` says whether it should get traffic.
On SIGTERM the process turns unready first, keeps serving for the drain delay, then stops
accepting and waits for in-flight requests (up to the drain timeout) before exiting.
"""

from __future__ import annotations

import _thread
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

__all__ = ["Lifecycle", "LifecycleState"]


IDLE_POLL_S = 0.005  # how often a draining process looks at its in-flight count


def _unpatched_thread(name: str) -> Any:
    """``_thread.<name>`` as it was before gevent's monkey-patching."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:  # without gevent.monkey imported, nothing is patched
        return monkey.get_original("_thread", name)
    return getattr(_thread, name)


def os_lock() -> threading.Lock:
    """A lock of the operating system's, also under gevent's monkey-patching.

    Patched, ``threading.Lock`` is a Python-level lock that costs microseconds per acquire (a
    profile of a loaded A worker showed it among the top entries). A lock held only around a few
    bytecodes that can never yield to another greenlet (an integer update, no I/O, no gevent call)
    needs no cooperation: the OS lock is then never contended between greenlets, and it stays
    correct when several OS threads run Python (the dev server, gevent's thread pool). Never hold
    it across anything that can switch greenlets: a greenlet waiting for it would block the hub.
    """
    lock: threading.Lock = _unpatched_thread("allocate_lock")()
    return lock


def os_thread_ident() -> Callable[[], int]:
    """The operating system thread's identity (``_thread.get_ident``), also under gevent's monkey-patching,
    which makes ``get_ident`` tell greenlets apart. A pointer read, unlike ``get_native_id`` (a system call)."""
    get_ident: Callable[[], int] = _unpatched_thread("get_ident")
    return get_ident


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
        self._lock = os_lock()

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

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight; False if ``timeout_s`` passed first.

        It polls (every ``IDLE_POLL_S``) instead of being notified, so the two calls every request
        makes are one uncontended lock each; only a draining process ever waits here.
        ``time.sleep`` is gevent's under a gevent worker, so the wait lets requests finish.
        """
        deadline = time.monotonic() + timeout_s
        while self._in_flight > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(IDLE_POLL_S, left))
        return True

    def readiness(self) -> tuple[int, dict[str, object]]:
        """Status code and JSON body for ``/ready``."""
        if self._state is LifecycleState.READY:
            return 200, {"status": LifecycleState.READY.value}
        return 503, {
            "status": LifecycleState.DRAINING.value,
            "error": "Not ready: shutting down: draining in-flight requests",
        }

"""The one poll-with-deadline loop every test waits with (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["wait_until"]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.02) -> None:
    """Poll ``condition`` every ``interval_s`` until it holds; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    if condition():  # one last look: the deadline may have passed while the process was descheduled
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")

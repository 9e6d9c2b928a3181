"""The bulkhead: a hard cap on concurrent calls to A, refusing (never queueing) the excess."""

from __future__ import annotations

import threading

from echokit.resilience.bulkhead import Bulkhead


def test_admits_up_to_the_limit_then_refuses() -> None:
    """With limit 2, two calls enter and the third is refused at once."""
    bulkhead = Bulkhead(2)
    assert bulkhead.try_enter()
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()
    assert bulkhead.in_flight == 2


def test_leaving_frees_a_slot() -> None:
    """When a call leaves, the next one is admitted again."""
    bulkhead = Bulkhead(1)
    assert bulkhead.try_enter()
    assert not bulkhead.try_enter()
    bulkhead.leave()
    assert bulkhead.in_flight == 0
    assert bulkhead.try_enter()


def test_refusals_do_not_take_a_slot() -> None:
    """Refused calls never count as in flight, so the count cannot drift upward under overload."""
    bulkhead = Bulkhead(1)
    bulkhead.try_enter()
    for _ in range(10):
        bulkhead.try_enter()
    bulkhead.leave()
    assert bulkhead.in_flight == 0


def test_concurrent_callers_never_exceed_the_limit() -> None:
    """Of 16 threads racing to enter a bulkhead of 5, exactly 5 get in."""
    bulkhead = Bulkhead(5)
    start = threading.Barrier(16)
    results: list[bool] = []
    lock = threading.Lock()

    def enter() -> None:
        start.wait(timeout=5)
        admitted = bulkhead.try_enter()
        with lock:
            results.append(admitted)

    threads = [threading.Thread(target=enter) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)
    assert results.count(True) == 5
    assert bulkhead.in_flight == 5

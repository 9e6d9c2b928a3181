"""The admission controller's wait queue, on a hand-driven clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from echokit.admission import AdmissionController, AdmissionSettings, Permit, Shed, Ticket
from echokit.resilience.clock import ManualClock


def queueing(
    latency_s: float | None = 0.125, **overrides: object
) -> tuple[AdmissionController, ManualClock, list[str], list[int]]:
    """A controller with limit 2 and a 500 ms queue wait that has measured ``latency_s`` per request."""
    clock = ManualClock()
    shed: list[str] = []
    queued: list[int] = []
    fields = {"initial_limit": 2, "min_limit": 2, "max_limit": 2, "queue_wait_s": 0.5, **overrides}
    settings = AdmissionSettings(**fields)  # type: ignore[arg-type]
    admission = AdmissionController(settings, clock, on_shed=shed.append, on_queue=queued.append)
    if latency_s is not None:
        for _ in range(12):  # one sampling window (10 samples, 100 ms) of requests that took latency_s
            permit = admission.enter(clock.now())
            assert isinstance(permit, Permit)
            clock.advance(latency_s)
            permit.release()
        assert admission.limiter.short_rtt == latency_s
    return admission, clock, shed, queued


def fill(admission: AdmissionController, clock: ManualClock) -> list[Permit]:
    permits = [admission.enter(clock.now()) for _ in range(admission.limit)]
    assert all(isinstance(p, Permit) for p in permits)
    return permits  # type: ignore[return-value]


def test_a_request_over_the_limit_waits_and_takes_the_slot_the_next_release_frees() -> None:
    """Limit 2 taken: the third gets a place in the queue, and the first release hands it that slot."""
    admission, clock, shed, queued = queueing()
    first, _second = fill(admission, clock)
    ticket = admission.enter(clock.now())
    assert isinstance(ticket, Ticket)
    assert admission.queued == 1 and queued == [1]
    first.release()
    assert admission.in_flight == 2 and admission.queued == 0 and queued == [1, 0]
    permit = admission.wait(ticket, 0.0)  # already handed a slot: no waiting
    assert isinstance(permit, Permit)
    permit.release()
    assert admission.in_flight == 1 and shed == []


def test_waiting_requests_get_slots_first_come_first_served_and_newcomers_queue_behind_them() -> None:
    """Two waiting: releases serve them in arrival order, and a newcomer does not jump the queue."""
    admission, clock, _shed, _queued = queueing()
    first, second = fill(admission, clock)
    early, late = admission.enter(clock.now()), admission.enter(clock.now())
    assert isinstance(early, Ticket) and isinstance(late, Ticket)
    first.release()
    assert early.permit is not None and late.permit is None
    newcomer = admission.enter(clock.now())
    assert isinstance(newcomer, Ticket)
    second.release()
    assert late.permit is not None and newcomer.permit is None


def test_the_queue_holds_only_as_many_as_get_a_slot_within_the_wait_then_refuses_at_once() -> None:
    """Latency 125 ms, wait 500 ms, limit 2: 2 x (4 - 1) = 6 may wait; the seventh is refused at once ('limit')."""
    admission, clock, shed, _queued = queueing(0.125)
    fill(admission, clock)
    assert admission.queue_capacity() == 6
    tickets = [admission.enter(clock.now()) for _ in range(6)]
    assert all(isinstance(t, Ticket) for t in tickets)
    refused = admission.enter(clock.now())
    assert isinstance(refused, Shed) and refused.reason == "limit" and "6 waiting" in refused.details
    assert shed == ["limit"]


def test_no_queue_when_one_request_takes_longer_than_the_wait_or_before_any_latency_is_known() -> None:
    """A slow A (625 ms a call, more than the 500 ms wait), or no latency measured yet: refused at once."""
    for latency in (0.625, None):
        admission, clock, shed, _queued = queueing(latency)
        fill(admission, clock)
        assert admission.queue_capacity() == 0
        refused = admission.enter(clock.now())
        assert isinstance(refused, Shed) and refused.reason == "limit" and shed == ["limit"]


def test_no_queue_when_the_wait_is_zero() -> None:
    """ADMISSION_QUEUE_WAIT_MS=0: over the limit is refused at once, whatever the latency."""
    admission, clock, _shed, _queued = queueing(0.0625, queue_wait_s=0.0)
    fill(admission, clock)
    assert isinstance(admission.enter(clock.now()), Shed)


def test_the_queue_never_holds_more_than_its_maximum() -> None:
    """ADMISSION_QUEUE_MAX=3 with room for 6 by latency: the fourth waiter is refused."""
    admission, clock, _shed, _queued = queueing(0.125, queue_max=3)
    fill(admission, clock)
    decisions = [admission.enter(clock.now()) for _ in range(4)]
    assert [type(d) for d in decisions] == [Ticket, Ticket, Ticket, Shed]


def test_a_wait_that_runs_out_is_refused_as_queue_timeout_and_gives_up_its_place() -> None:
    """No slot within the wait: 503 reason 'queue_timeout'; the next release goes to the one behind it."""
    admission, clock, shed, queued = queueing()
    first, _second = fill(admission, clock)
    gives_up, stays = admission.enter(clock.now()), admission.enter(clock.now())
    assert isinstance(gives_up, Ticket) and isinstance(stays, Ticket)
    clock.advance(0.5)
    refused = admission.wait(gives_up, 0.0)
    assert isinstance(refused, Shed) and refused.reason == "queue_timeout" and refused.retry_after_s == 1
    assert "within 500ms" in refused.details
    assert shed == ["queue_timeout"] and admission.queued == 1 and queued[-1] == 1
    first.release()
    assert stays.permit is not None and gives_up.permit is None
    assert admission.in_flight == 2


def test_a_waiter_interrupted_while_waiting_leaves_neither_its_place_nor_a_slot_behind() -> None:
    """An exception inside the wait (a worker killing its greenlets): the place is given up, and a slot
    handed over in the meantime goes back."""
    admission, clock, _shed, queued = queueing()
    first, _second = fill(admission, clock)
    ticket = admission.enter(clock.now())
    assert isinstance(ticket, Ticket)

    class Interrupted(BaseException):
        pass

    def interrupted_wait(timeout: float | None = None) -> bool:
        raise Interrupted

    ticket._granted.wait = interrupted_wait  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        admission.wait(ticket, 1.0)
    assert admission.queued == 0 and admission.in_flight == 2
    assert queued == [1, 0]  # the gauge hears the place given up

    granted = admission.enter(clock.now())
    assert isinstance(granted, Ticket)
    first.release()  # hands the slot to the ticket ...
    assert granted.permit is not None and admission.in_flight == 2
    granted._granted.wait = interrupted_wait  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        admission.wait(granted, 1.0)  # ... which is interrupted before it could use it
    assert admission.in_flight == 1

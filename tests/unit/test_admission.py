"""The admission controller and its Gradient2 limit, on a hand-driven clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from echokit.admission import (
    AdmissionController,
    AdmissionSettings,
    CoDel,
    Gradient2Limit,
    Permit,
    Shed,
    retry_after_header,
)
from echokit.resilience.clock import ManualClock

SETTINGS = AdmissionSettings(initial_limit=20, min_limit=4, max_limit=100)


def run_windows(limit: Gradient2Limit, clock: ManualClock, rtt_s: float, in_flight: int, windows: int) -> None:
    """Feed ``windows`` sampling windows of identical samples."""
    for _ in range(windows):
        window_s, window_samples = limit.knobs.window
        for _ in range(window_samples):
            limit.sample(rtt_s, in_flight)
        clock.advance(window_s)
        limit.sample(rtt_s, in_flight)


def test_limit_grows_while_latency_stays_at_its_usual_level() -> None:
    """Busy and fast: the limit grows, a few slots per window, but never beyond the cap."""
    clock = ManualClock()
    limit = Gradient2Limit(SETTINGS, clock)
    run_windows(limit, clock, 0.010, in_flight=20, windows=3)
    assert limit.limit > 20
    run_windows(limit, clock, 0.010, in_flight=100, windows=500)
    assert limit.limit == 100


def test_limit_shrinks_when_latency_rises_well_above_its_usual_level_and_stops_at_the_floor() -> None:
    """Latency ten times its baseline: the limit falls window by window, down to the floor and no lower."""
    clock = ManualClock()
    limit = Gradient2Limit(AdmissionSettings(initial_limit=80, min_limit=4, max_limit=100), clock)
    run_windows(limit, clock, 0.010, in_flight=80, windows=20)
    before = limit.limit
    run_windows(limit, clock, 0.100, in_flight=80, windows=1)
    assert limit.limit < before
    run_windows(limit, clock, 0.100, in_flight=80, windows=40)  # 4 s of it
    assert limit.limit <= 10  # near Gradient2's fixed point at gradient 0.5: limit = 0.5 * limit + queue_size(4)
    floor = Gradient2Limit(AdmissionSettings(initial_limit=80, min_limit=30, max_limit=100), clock)
    run_windows(floor, clock, 0.010, in_flight=80, windows=20)
    run_windows(floor, clock, 0.100, in_flight=80, windows=40)
    assert floor.limit == 30


def test_a_lasting_new_latency_level_becomes_the_baseline_and_the_limit_recovers() -> None:
    """Latency that stays high for minutes is the new normal (a slower A): the limit grows back."""
    clock = ManualClock()
    limit = Gradient2Limit(AdmissionSettings(initial_limit=80, min_limit=4, max_limit=100), clock)
    run_windows(limit, clock, 0.010, in_flight=80, windows=20)
    run_windows(limit, clock, 0.100, in_flight=80, windows=40)
    low = limit.limit
    run_windows(limit, clock, 0.100, in_flight=100, windows=600)
    assert limit.limit > 5 * low


def test_an_unused_limit_does_not_move() -> None:
    """With fewer than half of the limit in flight the limit is not the constraint, so it stays put."""
    clock = ManualClock()
    limit = Gradient2Limit(SETTINGS, clock)
    run_windows(limit, clock, 0.010, in_flight=5, windows=50)
    run_windows(limit, clock, 0.500, in_flight=5, windows=50)
    assert limit.limit == 20


def test_a_window_needs_both_enough_samples_and_enough_time() -> None:
    """Nine samples, or ten within the same instant, do not close a window; enough of both does."""
    clock = ManualClock()
    limit = Gradient2Limit(SETTINGS, clock)
    assert not any(limit.sample(0.01, 20) for _ in range(30))  # no time has passed
    clock.advance(0.2)
    assert limit.sample(0.01, 20)
    clock.advance(0.2)
    assert not limit.sample(0.01, 20)  # one sample in this window so far


def test_codel_sheds_only_after_queue_time_stays_above_the_target_for_an_interval() -> None:
    """One slow request is not a standing queue; a full interval of them is, until one is fast again."""
    codel = CoDel(target_s=0.05, interval_s=0.1)
    assert not codel.should_shed(0.2, now=0.0)
    assert not codel.should_shed(0.2, now=0.05)
    assert codel.should_shed(0.2, now=0.1)
    assert codel.should_shed(0.06, now=0.15)
    assert not codel.should_shed(0.01, now=0.16)  # got through in time: the queue drained
    assert not codel.should_shed(0.2, now=0.17)


def controller(**overrides: object) -> tuple[AdmissionController, ManualClock, list[str]]:
    clock = ManualClock()
    shed: list[str] = []
    settings = AdmissionSettings(**{"initial_limit": 2, "min_limit": 1, "max_limit": 10, **overrides})  # type: ignore[arg-type]
    return AdmissionController(settings, clock, on_shed=shed.append), clock, shed


def test_requests_over_the_limit_are_shed_at_once_and_a_release_frees_a_slot() -> None:
    """Limit 2: two are admitted, the third is refused with reason 'limit' and Retry-After 1; a release lets one in."""
    admission, clock, shed = controller()
    first, second = admission.enter(clock.now()), admission.enter(clock.now())
    assert isinstance(first, Permit) and isinstance(second, Permit)
    third = admission.enter(clock.now())
    assert isinstance(third, Shed) and third.reason == "limit" and third.retry_after_s == 1
    assert third.details.startswith("Load shed: ")
    assert admission.in_flight == 2 and shed == ["limit"]
    first.release()
    first.release()  # a second release of the same permit changes nothing
    assert admission.in_flight == 1
    assert isinstance(admission.enter(clock.now()), Permit)


def test_a_request_that_already_waited_its_whole_budget_is_shed_before_any_work() -> None:
    """Arrived 2 s ago with a 2 s budget: refused with reason 'deadline', no slot taken."""
    admission, clock, shed = controller()
    decision = admission.enter(clock.now() - 2.0, budget_s=2.0)
    assert isinstance(decision, Shed) and decision.reason == "deadline"
    assert admission.in_flight == 0 and shed == ["deadline"]
    assert isinstance(admission.enter(clock.now() - 1.0, budget_s=2.0), Permit)


def test_a_standing_queue_before_admission_sheds_by_queue_time_and_clears_when_requests_are_fast() -> None:
    """Requests that waited 200 ms for a whole interval are shed ('queue_time'); a prompt one is admitted."""
    admission, clock, shed = controller(max_limit=100, initial_limit=100, queue_target_s=0.05, queue_interval_s=0.1)
    for _ in range(3):
        decision = admission.enter(clock.now() - 0.2)
        if isinstance(decision, Permit):
            decision.release()
        clock.advance(0.06)
    assert shed == ["queue_time"]
    assert isinstance(admission.enter(clock.now() - 0.001), Permit)
    assert isinstance(admission.enter(clock.now() - 0.2), Permit)  # no longer a standing queue


def test_the_limit_change_is_reported_once_per_large_move_not_per_request() -> None:
    """With share 0.5 the listener hears about 20 -> 31 and later moves, never about each request."""
    clock = ManualClock()
    moves: list[tuple[int, int]] = []
    admission = AdmissionController(
        AdmissionSettings(initial_limit=20, min_limit=4, max_limit=200, log_change_share=0.5), clock,
        on_limit_change=lambda old, new, _limit: moves.append((old, new)),
    )
    for _ in range(200):  # fast work, always 20 in flight: the limit climbs
        permits = [admission.enter(clock.now()) for _ in range(20)]
        clock.advance(0.01)
        for permit in permits:
            assert isinstance(permit, Permit)
            permit.release()
    assert moves, "the limit grew by more than half: one report"
    assert len(moves) < 10
    for old, new in moves:
        assert abs(new - old) / old > 0.5
    assert moves[0][0] == 20


def test_gauges_hear_the_limit_and_in_flight_after_every_change() -> None:
    """on_change gets (limit, in_flight) on admission and on release."""
    clock = ManualClock()
    seen: list[tuple[int, int]] = []
    admission = AdmissionController(SETTINGS, clock, on_change=lambda limit, n: seen.append((limit, n)))
    permit = admission.enter(clock.now())
    assert isinstance(permit, Permit)
    permit.release()
    assert seen == [(20, 1), (20, 0)]


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.1, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    """Retry-After rounds up to whole seconds and never says 0."""
    assert retry_after_header(seconds) == header


def test_admission_settings_are_validated_and_capped_by_the_static_in_flight_cap() -> None:
    """A floor above the cap stops start-up with one line; UPSTREAM_MAX_IN_FLIGHT caps the adaptive limit."""
    from echokit.settings import SettingsError, service_b_settings

    with pytest.raises(SettingsError, match=r"^ADMISSION_MIN_LIMIT must be at most ADMISSION_MAX_LIMIT \(8\), got 9$"):
        service_b_settings({"ADMISSION_MIN_LIMIT": "9", "ADMISSION_MAX_LIMIT": "8"})
    capped = service_b_settings({"UPSTREAM_MAX_IN_FLIGHT": "10"}).admission
    assert (capped.min_limit, capped.initial_limit, capped.max_limit) == (10, 10, 10)
    defaults = service_b_settings({}).admission
    assert (defaults.min_limit, defaults.initial_limit, defaults.max_limit) == (64, 64, 256)
    assert (defaults.queue_target_s, defaults.queue_interval_s, defaults.enabled) == (0.1, 0.2, True)

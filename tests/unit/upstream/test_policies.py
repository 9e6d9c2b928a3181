"""The upstream package's pure parts (discovery, balancer, outlier ejection, hedging, endpoint set)
driven by a manual clock and a seeded random source, without sockets."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest

from echokit.metrics import Metrics
from echokit.resilience.clock import ManualClock
from echokit.settings import SettingsError, service_b_settings
from echokit.upstream.balancer import P2CEwma, PeakEwma, RoundRobin
from echokit.upstream.discovery import Address, Discovery, parse_targets
from echokit.upstream.endpoints import Endpoint, EndpointSet
from echokit.upstream.hedging import COLD_DELAY_S, MIN_DELAY_S, HedgePolicy
from echokit.upstream.outlier import OutlierConfig, OutlierTracker


class FakeResolver:
    """Answers from a dict; a name mapped to an exception raises it."""

    def __init__(self, table: dict[str, list[str] | Exception]) -> None:
        self.table = table
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        answer = self.table[host]
        if isinstance(answer, Exception):
            raise answer
        return list(answer)


def addresses(*keys: str) -> list[Address]:
    targets = parse_targets([f"http://{k}" for k in keys])
    return [Address(t.host, t.port, t) for t in targets]


def endpoint_set(clock: ManualClock, balancer=None, metrics: Metrics | None = None, **outlier) -> EndpointSet:
    return EndpointSet(
        balancer or P2CEwma(random.Random(7)), OutlierConfig(**outlier), clock, 4,
        logging.getLogger("test-upstream"), metrics.upstream if metrics else None,
    )


# --- settings -------------------------------------------------------------------------------------


def test_service_a_url_takes_a_comma_list_and_one_url_stays_as_it_was():
    """A comma-separated SERVICE_A_URL gives every URL once; one URL reads exactly as before."""
    settings = service_b_settings({"SERVICE_A_URL": "http://a1:8080, http://a2:8080/,http://a1:8080"}).upstream
    assert settings.urls == ("http://a1:8080", "http://a2:8080")
    assert service_b_settings({"SERVICE_A_URL": "http://a:9"}).upstream.urls == ("http://a:9",)
    with pytest.raises(SettingsError, match="comma-separated"):
        service_b_settings({"SERVICE_A_URL": "http://a1:8080,ftp://x"})


def test_balancer_and_hedging_settings_are_validated():
    """UPSTREAM_BALANCER and UPSTREAM_HEDGE_DELAY_MS accept their documented values and refuse others."""
    up = service_b_settings({"UPSTREAM_BALANCER": "round_robin", "UPSTREAM_HEDGE_DELAY_MS": "40"}).upstream
    assert (up.balancer, up.hedging, up.hedge_delay_s) == ("round_robin", True, 0.04)
    assert service_b_settings({"UPSTREAM_HEDGE_DELAY_MS": "off"}).upstream.hedging is False
    default = service_b_settings({}).upstream
    assert (default.balancer, default.hedging, default.hedge_delay_s) == ("p2c_ewma", True, None)
    for env in ({"UPSTREAM_BALANCER": "random"}, {"UPSTREAM_HEDGE_DELAY_MS": "soon"}):
        with pytest.raises(SettingsError):
            service_b_settings(env)


# --- discovery ------------------------------------------------------------------------------------


def test_a_name_becomes_every_address_it_resolves_to_and_literals_are_never_resolved():
    """A host name gives one endpoint per IPv4/IPv6 address; a literal IP is used as written."""
    resolver = FakeResolver({"a.internal": ["10.0.0.1", "fd00::2"]})
    targets = parse_targets(["http://a.internal:8080", "http://127.0.0.9:8081"])
    found = Discovery(targets, ManualClock(), resolver).refresh()
    assert [a.key for a in found] == ["10.0.0.1:8080", "[fd00::2]:8080", "127.0.0.9:8081"]
    assert found[0].target.host_header == "a.internal:8080"
    assert resolver.calls == 1


def test_failed_resolution_keeps_the_last_good_set_and_reports_once_per_outage():
    """While a name fails to resolve its last addresses stay, and the failure is reported once."""
    resolver = FakeResolver({"a": ["10.0.0.1"]})
    failures: list[str] = []
    recoveries: list[str] = []
    discovery = Discovery(parse_targets(["http://a:80"]), ManualClock(), resolver,
                          on_failure=lambda t, e: failures.append(e), on_recovery=lambda t: recoveries.append(t.host))
    assert [a.key for a in discovery.refresh()] == ["10.0.0.1:80"]
    resolver.table["a"] = OSError("Name or service not known")
    for _ in range(3):
        assert [a.key for a in discovery.refresh()] == ["10.0.0.1:80"]
    assert failures == ["Name or service not known"]
    resolver.table["a"] = ["10.0.0.2"]
    assert [a.key for a in discovery.refresh()] == ["10.0.0.2:80"]
    assert recoveries == ["a"]


# --- balancer -------------------------------------------------------------------------------------


def test_peak_ewma_jumps_up_at_once_and_decays_with_time():
    """A slower sample raises the estimate at once; with time it decays toward faster samples."""
    clock = ManualClock()
    ewma = PeakEwma(clock, initial_s=0.010, decay_s=10.0)
    ewma.observe(0.300)
    assert ewma.value() == pytest.approx(0.300)
    clock.advance(10.0)
    ewma.observe(0.010)
    assert 0.10 < ewma.value() < 0.12  # e^-1 of the way from 0.3 toward 0.01
    clock.advance(30.0)
    assert ewma.value() < 0.01  # unused, it decays toward zero: a slow endpoint is tried again later


def test_a_stall_ten_times_the_usual_latency_costs_an_endpoint_its_calls_for_under_three_seconds():
    """With the default decay, an endpoint that answered once in 30 ms (a descheduled process) is again
    cheaper than one steadily answering in 3 ms within 3 s, so a new or briefly stalled replica is not
    starved of calls for long."""
    clock = ManualClock()
    stalled, steady = PeakEwma(clock, 0.003), PeakEwma(clock, 0.003)
    stalled.observe(0.030)
    back_after = None
    for tick in range(1, 1001):  # the steady one answers every 10 ms; the stalled one gets nothing
        clock.advance(0.010)
        steady.observe(0.003)
        if stalled.value() < steady.value():
            back_after = tick * 0.010
            break
    assert back_after is not None and back_after < 3.0


class Fake:
    def __init__(self, latency_s: float, in_flight: int = 0) -> None:
        self.latency = PeakEwma(ManualClock(), latency_s)
        self.in_flight = in_flight


def test_p2c_never_picks_the_costlier_of_its_two_draws():
    """Over many picks a slow endpoint among fast ones is never chosen, and the fast ones share."""
    balancer = P2CEwma(random.Random(1))
    endpoints = [Fake(0.3), Fake(0.003), Fake(0.003)]
    picks = Counter(balancer.pick(endpoints) for _ in range(3000))
    assert picks[0] == 0
    assert 1200 < picks[1] < 1800 and 1200 < picks[2] < 1800


def test_p2c_does_not_chase_differences_under_the_cost_floor():
    """Healthy replicas a millisecond or two apart (noise on a busy host) share the calls evenly."""
    balancer = P2CEwma(random.Random(3))
    endpoints = [Fake(0.001), Fake(0.004), Fake(0.002)]
    picks = Counter(balancer.pick(endpoints) for _ in range(3000))
    assert all(800 < picks[i] < 1200 for i in range(3)), picks


def test_p2c_weighs_in_flight_calls():
    """Equal latency: an endpoint with many calls in flight loses to idle ones."""
    balancer = P2CEwma(random.Random(2))
    endpoints = [Fake(0.005, in_flight=9), Fake(0.005), Fake(0.005)]
    assert Counter(balancer.pick(endpoints) for _ in range(1000))[0] == 0


def test_round_robin_takes_each_in_turn():
    """round_robin ignores latency: every endpoint gets the same share."""
    balancer = RoundRobin()
    endpoints = [Fake(0.3), Fake(0.003), Fake(0.003)]
    assert Counter(balancer.pick(endpoints) for _ in range(300)) == {0: 100, 1: 100, 2: 100}


# --- outlier ejection -----------------------------------------------------------------------------


def test_ejection_time_grows_with_each_repeated_ejection_up_to_the_cap():
    """Base time on the first ejection, longer each repeat, never past the cap; fresh after a long good spell."""
    tracker = OutlierTracker(OutlierConfig(consecutive_failures=2, base_ejection_s=5, max_ejection_s=12))
    assert tracker.failure() is False and tracker.failure() is True
    assert tracker.eject(100.0) == 5
    assert not tracker.due_back(104.9) and tracker.due_back(105.0)
    tracker.restore(105.0)
    assert tracker.failure() is True  # on probation: one failure is enough
    assert tracker.eject(105.0) == 10
    tracker.restore(115.0)
    assert tracker.failure() is True
    assert tracker.eject(115.0) == 12
    tracker.restore(127.0)
    tracker.success()
    tracker.failure()
    assert tracker.eject(500.0) == 5  # long after the last ejection: the base time again


def test_never_ejects_more_than_allowed_and_never_all():
    """The cap is at least one endpoint when there are two or more, and always leaves one usable."""
    config = OutlierConfig(max_ejected_percent=50)
    assert [config.max_ejected(n) for n in (1, 2, 3, 4, 10)] == [0, 1, 1, 2, 5]
    assert OutlierConfig(max_ejected_percent=100).max_ejected(3) == 2


# --- the endpoint set -----------------------------------------------------------------------------


def pick(endpoints: EndpointSet, exclude: set[str] | None = None) -> Endpoint:
    endpoint = endpoints.pick(exclude or set())
    assert endpoint is not None
    return endpoint


def fail(endpoints: EndpointSet, key: str, times: int) -> None:
    for _ in range(times):
        endpoint = next(e for e in endpoints.endpoints if e.key == key)
        endpoint.in_flight += 1
        endpoints.record(endpoint, "connection_error", 0.001)


def test_consecutive_failures_eject_an_endpoint_until_its_time_is_up(caplog):
    """N failures in a row eject an endpoint (logged, counted, gauge 0); it returns after the base time."""
    clock = ManualClock()
    metrics = Metrics()
    endpoints = endpoint_set(clock, metrics=metrics, consecutive_failures=3, base_ejection_s=5)
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
    value = metrics.registry.get_sample_value
    assert value("upstream_endpoint_requests_total", {"endpoint": "10.0.0.1:80", "outcome": "timeout"}) == 0
    assert value("upstream_endpoint_usable", {"endpoint": "10.0.0.1:80"}) == 1
    with caplog.at_level(logging.INFO, logger="test-upstream"):
        fail(endpoints, "10.0.0.1:80", 3)
    assert any("upstream endpoint ejected: 10.0.0.1:80 for 5.0s" in r.getMessage() for r in caplog.records)
    assert value("upstream_endpoint_ejections_total", {"endpoint": "10.0.0.1:80"}) == 1
    assert value("upstream_endpoint_usable", {"endpoint": "10.0.0.1:80"}) == 0
    picked = Counter(pick(endpoints).key for _ in range(200))
    assert "10.0.0.1:80" not in picked
    clock.advance(5.0)
    picked = Counter(pick(endpoints).key for _ in range(300))
    assert picked["10.0.0.1:80"] > 0
    assert value("upstream_endpoint_usable", {"endpoint": "10.0.0.1:80"}) == 1


def test_a_returning_endpoint_takes_one_call_at_a_time_until_one_succeeds():
    """Back from ejection, an endpoint gets no second call while its first is in flight; a success ends that."""
    clock = ManualClock()
    endpoints = endpoint_set(clock, consecutive_failures=1, base_ejection_s=5)
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
    fail(endpoints, "10.0.0.1:80", 1)
    clock.advance(5.0)
    picks = [pick(endpoints) for _ in range(300)]
    returning = [e for e in picks if e.key == "10.0.0.1:80"]
    assert len(returning) == 1
    endpoints.record(returning[0], "success", 0.001)
    assert sum(pick(endpoints).key == "10.0.0.1:80" for _ in range(300)) > 1


def test_repeated_failures_raise_the_estimate_once_and_it_decays_back():
    """Failures make an endpoint look slow (never fast), without compounding, and good answers bring it back."""
    clock = ManualClock()
    endpoints = endpoint_set(clock, consecutive_failures=1000)
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80"))
    endpoint = endpoints.endpoints[0]
    fail(endpoints, endpoint.key, 50)
    assert 0.09 <= endpoint.latency.value() <= 0.11
    for _ in range(100):
        clock.advance(0.1)
        endpoint.in_flight += 1
        endpoints.record(endpoint, "success", 0.002)
    assert endpoint.latency.value() < 0.005


def test_a_lost_hedge_race_never_makes_an_endpoint_look_faster():
    """An abandoned attempt after 50 ms leaves a 300 ms estimate alone; a longer one raises it."""
    endpoints = endpoint_set(ManualClock(), consecutive_failures=1000)
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80"))
    endpoint = endpoints.endpoints[0]
    endpoint.latency.reset(0.300)
    for rtt, expected in ((0.050, 0.300), (0.400, 0.400)):
        endpoint.in_flight += 1
        endpoints.record(endpoint, "abandoned", rtt)
        assert endpoint.latency.value() == pytest.approx(expected)


def test_the_last_usable_endpoints_are_never_ejected():
    """With two endpoints both failing, only one is ejected: calls always have somewhere to go."""
    endpoints = endpoint_set(ManualClock(), consecutive_failures=1)
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80"))
    fail(endpoints, "10.0.0.1:80", 1)
    fail(endpoints, "10.0.0.2:80", 5)
    assert [e.state for e in endpoints.endpoints] == ["ejected", "usable"]


def test_a_retry_avoids_the_endpoints_already_tried():
    """pick() with an exclusion list never returns an excluded endpoint while another is usable."""
    endpoints = endpoint_set(ManualClock())
    endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"))
    for _ in range(100):
        assert pick(endpoints, {"10.0.0.1:80", "10.0.0.2:80"}).key == "10.0.0.3:80"
    assert endpoints.pick({e.key for e in endpoints.endpoints}) is not None  # all tried: any will do


def test_update_adds_and_removes_endpoints_with_their_series(caplog):
    """A new address is added with its series at 0; a gone one is removed, its series dropped, both logged."""
    metrics = Metrics()
    endpoints = endpoint_set(ManualClock(), metrics=metrics)
    with caplog.at_level(logging.INFO, logger="test-upstream"):
        endpoints.update(addresses("10.0.0.1:80", "10.0.0.2:80"))
        endpoints.update(addresses("10.0.0.2:80", "10.0.0.3:80"))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("upstream endpoint added" in m for m in messages) == 3
    assert any(m.startswith("upstream endpoint removed: 10.0.0.1:80") for m in messages)
    assert [e.key for e in endpoints.endpoints] == ["10.0.0.2:80", "10.0.0.3:80"]
    value = metrics.registry.get_sample_value
    assert value("upstream_hedges_total", {"endpoint": "10.0.0.3:80"}) == 0
    assert value("upstream_endpoint_usable", {"endpoint": "10.0.0.1:80"}) is None


# --- hedging --------------------------------------------------------------------------------------


def test_adaptive_hedge_delay_is_the_recent_p95_with_a_floor():
    """The delay follows the p95 of successful attempts, never below the floor; cold, a default."""
    policy = HedgePolicy(ManualClock(), 0.1)
    assert policy.delay_s() == COLD_DELAY_S
    for i in range(100):
        policy.observe_success(0.020 if i % 20 == 0 else 0.002)  # 5 % slow
    assert 0.002 <= policy.delay_s() <= 0.020 and policy.delay_s() >= MIN_DELAY_S
    for _ in range(256):
        policy.observe_success(0.030)
    assert policy.delay_s() == pytest.approx(0.030)
    assert HedgePolicy(ManualClock(), 0.1, fixed_delay_s=0.04).delay_s() == 0.04


def test_hedges_stay_within_their_budget():
    """With ratio 0.1, 100 calls allow about 10 hedges, never 100."""
    policy = HedgePolicy(ManualClock(), 0.1, min_hedges=0)
    for _ in range(100):
        policy.record_call()
    spent = sum(policy.try_spend() for _ in range(100))
    assert spent == 10

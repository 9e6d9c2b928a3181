"""A's fault policy on its own: what each request gets, drawn from a seeded rng, with a recorded sleep."""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import pytest

from echokit.faults import FaultInjector, FaultOutcome
from echokit.settings import FaultSettings, service_a_settings


def faults(**changes: Any) -> FaultSettings:
    """A's default fault settings (all off) with ``changes``."""
    return dataclasses.replace(service_a_settings({}).faults, **changes)


def injector(slept: list[float], **changes: Any) -> FaultInjector:
    return FaultInjector(faults(**changes), rng=random.Random(1), sleep=slept.append)


def test_no_faults_configured_means_nothing_happens() -> None:
    """With fault injection off, apply neither sleeps nor fails, whatever the budget."""
    slept: list[float] = []
    assert injector(slept).apply(None) is FaultOutcome.NONE
    assert injector(slept).apply(0.001) is FaultOutcome.NONE
    assert slept == []


def test_a_delay_within_the_budget_is_slept_in_full() -> None:
    """A delay shorter than the caller's budget (or with no budget) is slept, then the request goes on."""
    slept: list[float] = []
    assert injector(slept, delay_ms=50).apply(1.0) is FaultOutcome.NONE
    assert injector(slept, delay_ms=50).apply(None) is FaultOutcome.NONE
    assert slept == [0.05, 0.05]


def test_a_delay_past_the_budget_stops_at_the_budget_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A delay the caller will not wait for is cut at the deadline, logged, and the work abandoned."""
    slept: list[float] = []
    logger = logging.getLogger("test_faults")
    policy = FaultInjector(faults(delay_ms=5000), sleep=slept.append, logger=logger)
    with caplog.at_level(logging.WARNING, logger="test_faults"):
        assert policy.apply(0.1) is FaultOutcome.ABANDONED
    assert slept == [0.1]
    assert "abandoned /echo after 100ms" in caplog.text and "injected 5000ms delay" in caplog.text


def test_an_error_rate_of_one_fails_every_request() -> None:
    """FAULT_ERROR_RATE=1 makes every request an injected error, after any delay."""
    slept: list[float] = []
    policy = injector(slept, error_rate=1.0, delay_ms=10)
    assert [policy.apply(None) for _ in range(3)] == [FaultOutcome.ERROR] * 3
    assert slept == [0.01] * 3


def test_fault_plan_jitter_stays_within_its_range() -> None:
    """Jittered delays fall between FAULT_DELAY_MS and FAULT_DELAY_MS + FAULT_DELAY_JITTER_MS."""
    injector = FaultInjector(faults(delay_ms=100, delay_jitter_ms=50), rng=random.Random(3))
    delays = [injector.plan().delay_s for _ in range(200)]
    assert all(0.1 <= d <= 0.15 for d in delays)
    assert max(delays) - min(delays) > 0.025  # the jitter really varies


def test_fault_plan_error_rate_is_a_share_of_requests() -> None:
    """FAULT_ERROR_RATE=0.3 fails roughly 30% of planned requests with the configured status."""
    injector = FaultInjector(faults(error_rate=0.3, error_status=502), rng=random.Random(5))
    plans = [injector.plan() for _ in range(2000)]
    failed = [p for p in plans if p.error_status is not None]
    assert {p.error_status for p in failed} == {502}
    assert 0.25 < len(failed) / len(plans) < 0.35

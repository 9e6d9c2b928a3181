"""Bounded retries: attempts, retryable errors, full-jitter backoff, the deadline and the retry budget."""

from __future__ import annotations

import random

import pytest

from echokit.resilience.clock import ManualClock
from echokit.resilience.deadline import Deadline
from echokit.resilience.retry import RetryBudget, RetryPolicy, run_with_retries


class TransientError(Exception):
    """Stands for an error that another attempt could fix (a reset connection, a 503)."""


class PermanentError(Exception):
    """Stands for an error that no retry can fix (a 500, a bad body)."""


class CeilingRandom(random.Random):
    """Always draws the top of the range, so waits equal the backoff ceiling exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


def roomy_budget(clock: ManualClock) -> RetryBudget:
    return RetryBudget(ratio=1.0, min_retries=1000, window_s=10.0, clock=clock)


class Script:
    """An attempt function that raises the scripted errors in order, then returns "ok"."""

    def __init__(self, *errors: BaseException, clock: ManualClock | None = None, takes_s: float = 0.0) -> None:
        self.errors = list(errors)
        self.calls: list[int] = []
        self.clock = clock
        self.takes_s = takes_s

    def __call__(self, attempt: int) -> str:
        self.calls.append(attempt)
        if self.clock is not None:
            self.clock.advance(self.takes_s)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def run(script: Script, clock: ManualClock, *, attempts: int = 3, budget_s: float = 2.0,
        budget: RetryBudget | None = None, rng: random.Random | None = None,
        initial_s: float = 0.025, max_s: float = 0.25, **hooks: object) -> str:
    return run_with_retries(
        script,
        policy=RetryPolicy(attempts, initial_s, max_s),
        deadline=Deadline(budget_s, clock),
        budget=budget or roomy_budget(clock),
        is_retryable=is_transient,
        rng=rng or random.Random(0),
        **hooks,  # type: ignore[arg-type]
    )


def test_success_on_the_first_attempt_is_not_retried() -> None:
    """A call that works the first time is made once and never waits."""
    clock = ManualClock()
    script = Script()
    assert run(script, clock) == "ok"
    assert script.calls == [1]
    assert clock.slept == []


def test_a_transient_error_is_retried_until_success() -> None:
    """Two transient failures then a success return the success on attempt 3."""
    clock = ManualClock()
    script = Script(TransientError(), TransientError())
    assert run(script, clock, attempts=3) == "ok"
    assert script.calls == [1, 2, 3]


@pytest.mark.parametrize("attempts", [1, 2, 3, 5])
def test_at_most_n_attempts_are_made(attempts: int) -> None:
    """A call that always fails is attempted exactly `attempts` times and the last error is raised."""
    clock = ManualClock()
    errors = [TransientError(f"try {n}") for n in range(1, 11)]
    script = Script(*errors)
    with pytest.raises(TransientError, match=rf"^try {attempts}$"):
        run(script, clock, attempts=attempts)
    assert script.calls == list(range(1, attempts + 1))
    assert len(clock.slept) == attempts - 1


def test_a_non_retryable_error_is_raised_at_once() -> None:
    """An error the policy does not consider retryable is raised after one attempt, without waiting."""
    clock = ManualClock()
    script = Script(PermanentError("final"))
    with pytest.raises(PermanentError, match=r"^final$"):
        run(script, clock, attempts=5)
    assert script.calls == [1]
    assert clock.slept == []


def test_waits_are_full_jitter_below_the_exponential_ceiling() -> None:
    """Each wait is a uniform draw between 0 and min(max, initial * 2**(n-1)), from the given rng."""
    clock = ManualClock()
    script = Script(*[TransientError() for _ in range(5)])
    run(script, clock, attempts=6, initial_s=0.1, max_s=0.3, rng=random.Random(42))
    ceilings = [0.1, 0.2, 0.3, 0.3, 0.3]
    same_seed = random.Random(42)
    assert clock.slept == [same_seed.uniform(0.0, c) for c in ceilings]
    assert all(0.0 <= wait <= c for wait, c in zip(clock.slept, ceilings, strict=True))


def test_jitter_really_spreads_the_waits() -> None:
    """Over many seeded runs the first wait covers the range below its ceiling, not one fixed value."""
    waits = []
    for seed in range(200):
        clock = ManualClock()
        run(Script(TransientError()), clock, attempts=2, initial_s=0.1, rng=random.Random(seed))
        waits.append(clock.slept[0])
    assert min(waits) < 0.02
    assert max(waits) > 0.08
    assert all(0.0 <= w <= 0.1 for w in waits)


def test_stops_when_the_next_backoff_would_pass_the_deadline() -> None:
    """With 0.1 s of budget and waits of 0.04 s then 0.08 s, only one retry fits before the deadline."""
    clock = ManualClock()
    script = Script(*[TransientError(f"try {n}") for n in range(1, 11)])
    with pytest.raises(TransientError, match=r"^try 2$"):
        run(script, clock, attempts=10, budget_s=0.1, initial_s=0.04, max_s=1.0, rng=CeilingRandom())
    assert script.calls == [1, 2]
    assert clock.slept == [0.04]


def test_never_sleeps_past_the_deadline() -> None:
    """However many attempts are allowed, attempts plus waits never run past the request's deadline."""
    clock = ManualClock(start=0.0)
    script = Script(*[TransientError() for _ in range(50)], clock=clock, takes_s=0.03)
    with pytest.raises(TransientError):
        run(script, clock, attempts=10, budget_s=0.3, initial_s=0.02, max_s=0.1, rng=CeilingRandom())
    assert len(script.calls) < 10
    assert clock.now() <= 0.3 + 0.03  # only the last attempt's own duration may overrun


def test_on_retry_reports_each_retry_with_its_wait() -> None:
    """The on_retry hook sees the failed attempt's number, its error and the wait chosen."""
    clock = ManualClock()
    seen: list[tuple[int, str, float]] = []
    errors = [TransientError("first"), TransientError("second")]
    run(Script(*errors), clock, attempts=3, on_retry=lambda n, exc, wait: seen.append((n, str(exc), wait)))
    assert [(n, text) for n, text, _ in seen] == [(1, "first"), (2, "second")]
    assert [wait for _, _, wait in seen] == clock.slept


def test_a_spent_budget_stops_retries_and_reports_it() -> None:
    """When the retry budget is empty, the first error is raised and on_denied is told why."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries=0, window_s=10.0, clock=clock)
    denied: list[str] = []
    script = Script(TransientError("only try"))
    with pytest.raises(TransientError, match="only try"):
        run(script, clock, attempts=3, budget=budget, on_denied=lambda exc: denied.append(str(exc)))
    assert script.calls == [1]
    assert denied == ["only try"]


def test_the_budget_is_only_spent_on_retries_that_happen() -> None:
    """A call that stops at its attempt limit takes no retry from the budget for the retry it did not make."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.0, min_retries=5, window_s=10.0, clock=clock)
    with pytest.raises(TransientError):
        run(Script(TransientError(), TransientError()), clock, attempts=2, budget=budget)
    assert budget.snapshot()["retries"] == 1


# --- RetryBudget on its own ---------------------------------------------------------------------


def test_budget_allows_min_retries_without_any_calls() -> None:
    """min_retries are always available, even before any call was recorded."""
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10.0, clock=ManualClock())
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


def test_budget_allows_a_ratio_of_recent_calls() -> None:
    """With ratio 0.2 and 50 recent calls, 10 retries are allowed and the 11th is refused."""
    budget = RetryBudget(ratio=0.2, min_retries=3, window_s=10.0, clock=ManualClock())
    for _ in range(50):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(11)) == 10
    assert budget.snapshot() == {"calls": 50, "retries": 10}


def test_refused_retries_are_not_counted() -> None:
    """A refused try_spend takes nothing, so refusals never push the budget further into debt."""
    budget = RetryBudget(ratio=0.0, min_retries=1, window_s=10.0, clock=ManualClock())
    assert budget.try_spend()
    for _ in range(5):
        assert not budget.try_spend()
    assert budget.snapshot()["retries"] == 1


def test_budget_forgets_calls_and_retries_after_the_window() -> None:
    """Calls and retries older than the window no longer count, so the budget resets to min_retries."""
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_retries=2, window_s=10.0, clock=clock)
    for _ in range(10):
        budget.record_call()
    assert sum(budget.try_spend() for _ in range(6)) == 5
    clock.advance(10.0)
    assert budget.snapshot() == {"calls": 0, "retries": 0}
    assert [budget.try_spend() for _ in range(3)] == [True, True, False]

"""Which endpoint gets the next call: power of two choices over peak-EWMA cost, or round robin.

Peak EWMA (Finagle, Linkerd): each endpoint keeps a latency estimate that jumps up to any slower
observation at once and decays toward faster ones (and toward zero while unused) with time
constant ``decay_s``. The cost of an endpoint is that estimate times (in-flight calls + 1); P2C
draws two distinct usable endpoints at random and takes the cheaper, so a slow or stuck endpoint
loses its traffic within a few calls while no single "best" endpoint is stampeded. Estimates under
``COST_FLOOR_S`` count as equal: between healthy replicas a millisecond or two is noise (a process
descheduled on a busy host), and chasing it swings the traffic from one replica to another.

Pure: the clock and the random source are injected.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Sequence
from typing import Protocol

from echokit.resilience.clock import Clock
from echokit.settings import BALANCERS

DEFAULT_DECAY_S = 1.0  # Finagle and Linkerd use 10 s; shorter forgives a loaded machine's stalls sooner
DEFAULT_RTT_S = 0.005  # estimate for an endpoint nothing has been measured on yet
COST_FLOOR_S = 0.005  # latencies under this are not told apart (in-flight calls still are)


class PeakEwma:
    """A latency estimate that is peak-sensitive and decays with time (thread-safe)."""

    def __init__(self, clock: Clock, initial_s: float = DEFAULT_RTT_S, decay_s: float = DEFAULT_DECAY_S) -> None:
        self.clock = clock
        self.decay_s = decay_s
        self._value = initial_s
        self._stamp = clock.now()
        self._lock = threading.Lock()

    def _decayed(self, now: float, sample: float) -> float:
        elapsed = max(0.0, now - self._stamp)
        weight = math.exp(-elapsed / self.decay_s)
        return self._value * weight + sample * (1.0 - weight)

    def observe(self, rtt_s: float) -> None:
        with self._lock:
            now = self.clock.now()
            self._value = rtt_s if rtt_s > self._value else self._decayed(now, rtt_s)
            self._stamp = now

    def value(self) -> float:
        """The current estimate, decayed toward zero for the time since the last observation."""
        with self._lock:
            return self._decayed(self.clock.now(), 0.0)

    def reset(self, value_s: float) -> None:
        with self._lock:
            self._value = value_s
            self._stamp = self.clock.now()


class Choice(Protocol):
    """What a balancer needs from an endpoint."""

    @property
    def in_flight(self) -> int: ...

    @property
    def latency(self) -> PeakEwma: ...


class Balancer(Protocol):
    def pick(self, candidates: Sequence[Choice]) -> int:
        """Index into ``candidates`` (never empty) of the endpoint for the next attempt."""
        ...


class P2CEwma:
    """Power of two choices over ``max(latency, COST_FLOOR_S) * (in_flight + 1)``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()

    @staticmethod
    def cost(endpoint: Choice) -> float:
        return max(endpoint.latency.value(), COST_FLOOR_S) * (endpoint.in_flight + 1)

    def pick(self, candidates: Sequence[Choice]) -> int:
        count = len(candidates)
        if count == 1:
            return 0
        first = self.rng.randrange(count)
        second = self.rng.randrange(count - 1)
        if second >= first:
            second += 1
        return first if self.cost(candidates[first]) <= self.cost(candidates[second]) else second


class RoundRobin:
    """Each usable endpoint in turn (the comparison baseline)."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def pick(self, candidates: Sequence[Choice]) -> int:
        with self._lock:
            index = self._next % len(candidates)
            self._next += 1
        return index


def make_balancer(name: str, rng: random.Random | None = None) -> Balancer:
    if name == "round_robin":
        return RoundRobin()
    if name == "p2c_ewma":
        return P2CEwma(rng)
    raise ValueError(f"unknown balancer {name!r}; choose one of {', '.join(BALANCERS)}")

"""Counts of recent events over a sliding time window, kept in fixed buckets."""

from __future__ import annotations

import math

from echokit.resilience.clock import Clock


class SlidingCounts:
    """Per-kind event counts over the last ``window_s`` seconds (bucketed, not thread-safe)."""

    def __init__(self, window_s: float, clock: Clock, kinds: tuple[str, ...], buckets: int = 10) -> None:
        self.clock = clock
        self.kinds = kinds
        self.bucket_s = window_s / buckets
        self.size = buckets
        self._index = [0] * buckets  # which absolute bucket number each slot holds
        self._counts = [dict.fromkeys(kinds, 0) for _ in range(buckets)]

    def _slot(self) -> int:
        number = math.floor(self.clock.now() / self.bucket_s)
        slot = number % self.size
        if self._index[slot] != number:
            self._index[slot] = number
            self._counts[slot] = dict.fromkeys(self.kinds, 0)
        return slot

    def add(self, kind: str, count: int = 1) -> None:
        self._counts[self._slot()][kind] += count

    def total(self, kind: str) -> int:
        newest = math.floor(self.clock.now() / self.bucket_s)
        return sum(
            counts[kind]
            for number, counts in zip(self._index, self._counts, strict=True)
            if newest - self.size < number <= newest
        )

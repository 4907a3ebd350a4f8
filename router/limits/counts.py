"""Where the limits keep their counts: this process's memory, or Redis (``redis_counts``).

Two kinds of count, each behind one small async interface:

- a rate (requests per second, tokens per minute) is a token bucket kept as GCRA's
  "theoretical arrival time": one number per bucket, ``take`` moves it forward by the
  amount taken and refuses when that would run further ahead of now than the bucket holds;
- a budget (US dollars per UTC day or month) is a counter per period, in nano-dollars:
  ``reserve`` adds an amount to all of a tenant's counters only if none would pass its
  limit, ``spend`` adds (or, when settling below a reservation, subtracts) without a check.

Each call is atomic: the memory store runs on the event loop without awaiting in between,
the Redis store runs one Lua script per call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``per_s`` units a second, at most ``capacity`` at once."""

    key: str
    per_s: float
    capacity: float

    @property
    def interval_s(self) -> float:
        """Seconds one unit takes to refill."""
        return 1.0 / self.per_s


@dataclass(frozen=True, slots=True)
class Budget:
    """A spending counter of one period: its limit (nano-dollars) and how long it lives."""

    key: str
    limit: int
    ttl_s: int
    # The configuration key it enforces: usd_per_day or usd_per_month.
    name: str


class Counts(Protocol):
    """The atomic operations the limits need from a store."""

    async def take(self, bucket: Bucket, amount: float) -> float:
        """Take ``amount`` from the bucket; return 0, or the seconds until it would fit.

        ``amount`` is at most the capacity: more would never fit, and the limiter refuses
        it before asking."""
        ...

    async def give(self, bucket: Bucket, amount: float) -> None:
        """Take ``amount`` (negative: give back) without a check; the bucket may go into debt."""
        ...

    async def reserve(self, budgets: Sequence[Budget], amount: int) -> int:
        """Add ``amount`` to every counter if none passes its limit; return -1, or the index
        of the first counter that would."""
        ...

    async def spend(self, budgets: Sequence[Budget], amount: int) -> None:
        """Add ``amount`` (negative: release) to every counter, without a check."""
        ...

    async def aclose(self) -> None:
        """Release the store's connections."""
        ...


class MemoryCounts:
    """Counts in this process's memory: each worker process counts for itself."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._arrivals: dict[str, float] = {}
        self._spent: dict[str, int] = {}
        self._expires: dict[str, float] = {}

    async def take(self, bucket: Bucket, amount: float) -> float:
        now = self._monotonic()
        arrival = max(self._arrivals.get(bucket.key, now), now) + amount * bucket.interval_s
        wait = arrival - bucket.capacity * bucket.interval_s - now
        if wait > 0:
            return wait
        self._arrivals[bucket.key] = arrival
        return 0.0

    async def give(self, bucket: Bucket, amount: float) -> None:
        now = self._monotonic()
        arrival = max(self._arrivals.get(bucket.key, now), now) + amount * bucket.interval_s
        if arrival > now:
            self._arrivals[bucket.key] = arrival
        else:
            self._arrivals.pop(bucket.key, None)

    async def reserve(self, budgets: Sequence[Budget], amount: int) -> int:
        self._forget_expired()
        for i, budget in enumerate(budgets):
            if self._spent.get(budget.key, 0) + amount > budget.limit:
                return i
        await self.spend(budgets, amount)
        return -1

    async def spend(self, budgets: Sequence[Budget], amount: int) -> None:
        now = self._wall()
        for budget in budgets:
            self._spent[budget.key] = self._spent.get(budget.key, 0) + amount
            self._expires[budget.key] = now + budget.ttl_s

    def _forget_expired(self) -> None:
        now = self._wall()
        for key in [k for k, expires in self._expires.items() if expires <= now]:
            del self._expires[key], self._spent[key]

    async def aclose(self) -> None:
        return None

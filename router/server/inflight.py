"""The count of RPCs in flight against ``server.max_concurrent_rpcs``, for all workers together.

One process counts in a plain integer. With ``--workers N`` the supervisor maps one shared
memory page before it forks, a counter slot per worker: each worker writes only its own
slot and sums them all to admit an RPC, and the supervisor clears the slot of a worker that
died (its RPCs died with it) before it starts the replacement.
"""

from __future__ import annotations

import mmap

SLOT_BYTES = 8  # one signed 64-bit counter


class InFlight:
    """RPCs in flight in this process, admitted against a limit."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def enter(self, limit: int) -> bool:
        """Admit an RPC if fewer than ``limit`` are in flight; return whether it was."""
        if self.count >= limit:
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        """Note that an admitted RPC ended."""
        self.count -= 1

    def total(self) -> int:
        """Return the RPCs in flight that count against the limit."""
        return self.count


class SharedInFlight(InFlight):
    """RPCs in flight in every worker of one server, through a shared counter per worker.

    An RPC is counted first and admitted if the sum stays within the limit, so two workers
    admitting at the same instant err towards refusing one, not towards going over.
    """

    __slots__ = ("_counters", "_slot")

    def __init__(self, counters: memoryview, slot: int) -> None:
        super().__init__()
        self._counters = counters
        self._slot = slot

    def enter(self, limit: int) -> bool:
        """Admit an RPC if the workers together have fewer than ``limit`` in flight."""
        counters, slot = self._counters, self._slot
        counters[slot] += 1
        if sum(counters) > limit:
            counters[slot] -= 1
            return False
        self.count += 1
        return True

    def leave(self) -> None:
        """Note that an admitted RPC ended."""
        self._counters[self._slot] -= 1
        self.count -= 1

    def total(self) -> int:
        """Return the RPCs in flight in every worker."""
        return sum(self._counters)


class InFlightSlots:
    """The supervisor's shared page of per-worker counters (mapped before any fork)."""

    def __init__(self, workers: int) -> None:
        self._page = mmap.mmap(-1, max(workers, 1) * SLOT_BYTES)  # anonymous and shared
        self._counters = memoryview(self._page).cast("q")

    def for_worker(self, slot: int) -> SharedInFlight:
        """Return the in-flight count a forked worker in ``slot`` uses."""
        return SharedInFlight(self._counters, slot)

    def clear(self, slot: int) -> None:
        """Zero the counter of a worker that is gone."""
        self._counters[slot] = 0

    def close(self) -> None:
        """Unmap the page."""
        self._counters.release()
        self._page.close()

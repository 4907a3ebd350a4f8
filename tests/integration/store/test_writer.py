"""The store writer: batches, a bounded queue that drops and counts, retries, the drain."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from router.store import Record, StatsQuery, Store, StoreWriter, open_store
from tests.integration.store.test_store import attempt, request


async def eventually(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Wait until ``check()`` holds (a loaded machine may take its time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def stored(store: Store) -> int:
    return store.stats(StatsQuery()).total.requests


async def test_everything_queued_is_written_by_the_drain(store_target: str) -> None:
    writer = StoreWriter(open_store(store_target), batch_size=7, flush_interval_s=60.0)
    writer.start()
    assert all(writer.put(request(f"r{i}", method="route")) for i in range(20))
    # Two full batches go at once; the remaining six wait for the interval or the drain.
    await eventually(lambda: writer.written == 14)
    assert writer.queued == 6
    await writer.aclose()
    assert (writer.written, writer.dropped, writer.queued) == (20, 0, 0)
    reopened = open_store(store_target)
    try:
        assert stored(reopened) == 20
    finally:
        reopened.close()


async def test_a_full_queue_drops_and_counts(store: Store) -> None:
    writer = StoreWriter(store, queue_size=5, batch_size=100, flush_interval_s=60.0)
    writer.start()
    accepted = [writer.put(request(f"r{i}", method="route")) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    assert (writer.dropped, writer.queued) == (3, 5)
    await writer.aclose()
    assert (writer.written, writer.dropped) == (5, 3)
    assert not writer.put(request("late", method="route"))  # closed: counted as dropped
    assert writer.dropped == 4


async def test_a_record_is_written_within_the_flush_interval(store: Store) -> None:
    writer = StoreWriter(store, batch_size=100, flush_interval_s=0.05)
    writer.start()
    writer.put(request("one", method="route"))
    await eventually(lambda: writer.written == 1)
    assert await asyncio.to_thread(stored, store) == 1
    writer.put(request("two", method="route"))
    await eventually(lambda: writer.written == 2)
    await writer.aclose()


class FailingFirst:
    """A real store whose first ``failures`` batch writes raise, as a lost connection would."""

    def __init__(self, store: Store, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.location = store.location

    def write(self, records: Sequence[Record]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("connection lost")
        self.store.write(records)

    def refuses(self, error: Exception) -> bool:
        return self.store.refuses(error)

    def close(self) -> None:
        self.store.close()


async def test_a_failed_batch_is_retried_in_order(store: Store) -> None:
    flaky = FailingFirst(store, failures=2)
    writer = StoreWriter(flaky, batch_size=2, flush_interval_s=0.01)  # type: ignore[arg-type]
    writer.start()
    for i in range(5):
        writer.put(request(f"r{i}", method="route", time_s=1000.0 + i))
    await eventually(lambda: writer.written == 5)
    assert writer.failed_writes == 2
    order = [r.request_id for r in await asyncio.to_thread(lambda: list(store.requests()))]
    assert order == [f"r{i}" for i in range(5)]
    await writer.aclose()


async def test_a_drain_gives_up_on_a_dead_store_and_counts_the_loss(store: Store) -> None:
    dead = FailingFirst(store, failures=10**9)
    writer = StoreWriter(dead, flush_interval_s=60.0, drain_timeout_s=0.5)  # type: ignore[arg-type]
    writer.start()
    for i in range(3):
        writer.put(request(f"r{i}", method="route"))
    await asyncio.wait_for(writer.aclose(), timeout=60)
    assert (writer.written, writer.dropped, writer.queued) == (0, 3, 0)


async def test_a_record_the_store_refuses_is_dropped_and_the_rest_written(store: Store) -> None:
    # A backend's usage beyond a 64-bit integer: each database refuses the row, and only it.
    huge = dataclasses.replace(attempt(0, "cheap", 0), prompt_tokens=10**20)
    writer = StoreWriter(store, batch_size=10, flush_interval_s=0.01)
    writer.start()
    writer.put(request("r0", time_s=1000.0))
    writer.put(request("bad", attempts=[huge], time_s=1001.0))
    writer.put(request("r2", time_s=1002.0))
    await eventually(lambda: writer.written == 2)
    writer.put(request("r3", time_s=1003.0))  # and the writer goes on in batches
    await eventually(lambda: writer.written == 3)
    assert (writer.written, writer.dropped, writer.refused, writer.queued) == (3, 1, 1, 0)
    order = [r.request_id for r in await asyncio.to_thread(lambda: list(store.requests()))]
    assert order == ["r0", "r2", "r3"]
    await writer.aclose()


class Refusing:
    """A real store that refuses, as a database would, any batch holding a marked record."""

    def __init__(self, store: Store, marked: set[str], pause_s: float = 0.0) -> None:
        self.store = store
        self.marked = marked
        self.pause_s = pause_s
        self.location = store.location
        self.writes = 0

    def write(self, records: Sequence[Record]) -> None:
        self.writes += 1
        time.sleep(self.pause_s)
        if any(getattr(r, "request_id", None) in self.marked for r in records):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        self.store.write(records)

    def refuses(self, error: Exception) -> bool:
        return self.store.refuses(error)

    def close(self) -> None:
        self.store.close()


async def test_the_refused_record_of_a_batch_is_found_by_halving(store: Store) -> None:
    refusing = Refusing(store, {"r37"})
    writer = StoreWriter(refusing, batch_size=128, flush_interval_s=60.0)  # type: ignore[arg-type]
    for i in range(128):
        writer.put(request(f"r{i}", method="route", time_s=1000.0 + i))
    writer.start()
    await eventually(lambda: writer.written == 127)
    assert (writer.refused, writer.queued) == (1, 0)
    # One record a transaction would have taken 129 writes; halving takes about twenty.
    assert refusing.writes <= 30
    await writer.aclose()


async def test_a_drain_of_refused_records_gives_up_in_its_time(store: Store) -> None:
    # Every record refused, a write taking 5 ms: one at a time, 400 would take 2 s or more.
    every = {f"r{i}" for i in range(400)}
    refusing = Refusing(store, every, pause_s=0.005)
    writer = StoreWriter(refusing, flush_interval_s=60.0, drain_timeout_s=0.2)  # type: ignore[arg-type]
    for i in range(400):
        writer.put(request(f"r{i}", method="route"))
    writer.start()
    await asyncio.wait_for(writer.aclose(), timeout=60)
    assert (writer.written, writer.dropped, writer.queued) == (0, 400, 0)
    assert writer.refused < 400  # the rest were given up at the drain's deadline

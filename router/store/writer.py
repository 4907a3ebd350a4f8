"""Keep store writes off the request path: a bounded queue written in batches.

``put`` is a list append on the event loop. A background task takes up to ``batch_size``
records once the batch is full or ``flush_interval_s`` after the first one arrived, and
writes them in one transaction from a worker thread. A full queue drops the new record,
counts it and logs (at most one line per ``DROP_LOG_INTERVAL_S``): the request it belongs
to still succeeds. A failed write is retried with a growing pause, the batch kept in
front of the queue; unless the store refused it for what a record holds (``Store.refuses``):
then the batch is written in halves, a refused part halved again, until the record refused
is alone and dropped, counted and logged (one such record in a batch of 128 takes 21
transactions, not 129). ``aclose`` writes everything still queued, then closes the store; a
store still failing after ``drain_timeout_s`` (5 s: well inside the supervisor's grace
before it kills a stopping worker) has the rest counted as dropped and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from router.config import StoreConfig
from router.store.base import Store
from router.store.records import Record

log = structlog.get_logger()

DROP_LOG_INTERVAL_S = 10.0
MIN_RETRY_S = 0.1
MAX_RETRY_S = 5.0


class StoreWriter:
    """Write records to a store in batches from a bounded queue."""

    def __init__(
        self,
        store: Store,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.5,
        drain_timeout_s: float = 5.0,
        target: str = "",
    ) -> None:
        self.store = store
        # The path or URL it was opened from: a reload naming the same keeps this writer.
        self.target = target
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.drain_timeout_s = drain_timeout_s
        # Counters, for GetStats and the metrics.
        self.written = 0
        self.dropped = 0
        self.failed_writes = 0
        # Records the store refused (counted in dropped too).
        self.refused = 0
        self._last_refuse_log = 0.0
        # The records at the front of the queue from a batch the store refused, written
        # ``_chunk`` at a time: halved at each refusal, doubled at each success.
        self._suspect = 0
        self._chunk = batch_size
        self._pending: list[Record] = []
        self._in_flight = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._last_drop_log = 0.0
        self._task: asyncio.Task[None] | None = None

    def serves(self, target: str | None, settings: StoreConfig | None) -> bool:
        """Return whether this writer is the one a configuration's store asks for."""
        return (
            settings is not None
            and target == self.target
            and (settings.queue_size, settings.batch_size, settings.flush_interval_s)
            == (self.queue_size, self.batch_size, self.flush_interval_s)
        )

    @property
    def queued(self) -> int:
        """Return the records not yet committed: queued, and in the batch being written."""
        return len(self._pending) + self._in_flight

    def start(self) -> None:
        """Start the background task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def put(self, record: Record) -> bool:
        """Queue a record; return False (and count it) when the queue is full or closed."""
        pending = self._pending
        if len(pending) + self._in_flight >= self.queue_size or self._closing:
            self._drop()
            return False
        pending.append(record)
        if len(pending) == 1:
            self._arrived.set()
        if len(pending) >= self.batch_size:
            self._full.set()
        return True

    def _drop(self) -> None:
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "store queue full: records dropped",
                store=self.store.location,
                dropped_total=self.dropped,
                queue_size=self.queue_size,
                closing=self._closing,
            )

    async def _run(self) -> None:
        retry_s = MIN_RETRY_S
        deadline: float | None = None
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if len(self._pending) < self.batch_size and not (self._closing or self._suspect):
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.flush_interval_s)
            size = min(self._chunk, self._suspect) if self._suspect else self.batch_size
            batch = self._pending[:size]
            del self._pending[:size]
            self._in_flight = len(batch)
            try:
                await asyncio.to_thread(self.store.write, batch)
            except Exception as exc:
                self.failed_writes += 1
                refused = self.store.refuses(exc)
                if refused and len(batch) == 1:
                    self._suspect = max(0, self._suspect - 1)
                    self._refuse(batch[0], exc)
                else:
                    self._pending[:0] = batch
                    if refused:
                        self._suspect = self._suspect or len(batch)
                        self._chunk = len(batch) // 2
                if self._closing:
                    loop_now = time.monotonic()
                    deadline = deadline or loop_now + self.drain_timeout_s
                    if loop_now >= deadline:
                        self._give_up(exc)
                        return
                if refused:
                    continue
                log.error(
                    "store write failed; retrying",
                    store=self.store.location,
                    records=len(batch),
                    retry_in_s=retry_s,
                    error=str(exc),
                )
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, MAX_RETRY_S)
                continue
            finally:
                self._in_flight = 0
            self.written += len(batch)
            if self._suspect:
                self._suspect = max(0, self._suspect - len(batch))
                self._chunk = min(self._chunk * 2, self.batch_size)
            retry_s = MIN_RETRY_S

    def _refuse(self, record: Record, exc: Exception) -> None:
        self.refused += 1
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_refuse_log < DROP_LOG_INTERVAL_S:
            return
        self._last_refuse_log = now
        log.error(
            "store refused a record: dropped",
            store=self.store.location,
            # A Route's record is its RouteRow, a tuple.
            record="RouteRow" if isinstance(record, tuple) else type(record).__name__,
            request_id=getattr(record, "request_id", None),
            refused_total=self.refused,
            error=str(exc),
        )

    def _give_up(self, exc: Exception) -> None:
        lost = len(self._pending)
        self.dropped += lost
        self._pending.clear()
        log.error(
            "store unwritable while stopping: records lost",
            store=self.store.location,
            lost=lost,
            error=str(exc),
        )

    async def aclose(self) -> None:
        """Write every queued record (retrying up to ``drain_timeout_s``), then close."""
        self._closing = True
        self._arrived.set()
        self._full.set()
        if self._task is not None:
            await self._task
        elif self._pending:
            # Never started (no loop ran it): write what was queued directly.
            await asyncio.to_thread(self.store.write, self._pending)
            self.written += len(self._pending)
            self._pending.clear()
        await asyncio.to_thread(self.store.close)

"""Sticky sessions: the strongest tier each conversation used, so it never moves down.

Each worker remembers the sessions it served (bounded, least recently used forgotten
first). With a store, every step is also written there and every look-up reads it, so a
session that moves between workers or replicas keeps its floor once its last step was
written (within ``store.flush_interval_s``); a store that cannot be read leaves the
worker's own memory as the floor, and the request still succeeds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Generic, TypeVar

import structlog

from router.store import SessionRecord, StoreWriter

log = structlog.get_logger()

K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A mapping that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """Return the value of a key (marking it recently used), or None."""
        items = self._items
        value = items.get(key)
        if value is not None:
            items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Set a key's value, forgetting the oldest entries beyond the capacity."""
        items = self._items
        items[key] = value
        items.move_to_end(key)
        while len(items) > self.capacity:
            items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Sessions:
    """The tier floor of each session: in this worker's memory, and in the store."""

    def __init__(self, capacity: int) -> None:
        # (tenant, session id) -> the strongest tier's name.
        self._memory: BoundedMap[tuple[str, str], str] = BoundedMap(capacity)

    @property
    def capacity(self) -> int:
        return self._memory.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._memory.capacity = value

    async def floor(
        self,
        tenant: str,
        session_id: str,
        tier_index: Mapping[str, int],
        writer: StoreWriter | None,
    ) -> int | None:
        """Return the index of the strongest tier the session used, or None (a new session).

        A tier name the configuration no longer has sets no floor.
        """
        names = [self._memory.get((tenant, session_id))]
        if writer is not None:
            try:
                names.append(await asyncio.to_thread(writer.store.session_tier, tenant, session_id))
            except Exception as exc:
                log.warning(
                    "session look-up failed; using this worker's memory",
                    store=writer.store.location,
                    error=str(exc),
                )
        indexes = [tier_index[name] for name in names if name is not None and name in tier_index]
        return max(indexes) if indexes else None

    def used(
        self,
        tenant: str,
        session_id: str,
        tier: str,
        tier_index: Mapping[str, int],
        writer: StoreWriter | None,
    ) -> None:
        """Note that the session used a tier: its floor rises to it (never falls).

        Only a rise is written to the store: the floor there is already at least as high.
        """
        key = (tenant, session_id)
        index = tier_index[tier]
        known = self._memory.get(key)
        if known is not None and tier_index.get(known, -1) >= index:
            return
        self._memory.put(key, tier)
        if writer is not None:
            writer.put(SessionRecord(tenant, session_id, tier, index, time.time()))

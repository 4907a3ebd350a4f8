"""The store's interface: write batches of records, read them back as stats and rows.

Every method blocks (a database call); the service calls them from a worker thread
(``asyncio.to_thread``), never on the event loop, and writes only through ``StoreWriter``.
Implementations are safe to call from several threads.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import Any

from router.store.records import Record, StoredRequest
from router.store.stats import Stats, StatsQuery


class StoreError(Exception):
    """The store cannot be opened or used; the message says which and why."""


class Store(abc.ABC):
    """Where requests, their outcomes, feedback, sessions and named state are kept."""

    #: "sqlite" or "postgres".
    kind: str
    #: The file or the URL (without its password), for messages and GetStats.
    location: str

    @abc.abstractmethod
    def write(self, records: Sequence[Record]) -> None:
        """Write a batch of records in one transaction (all or none)."""

    def refuses(self, error: Exception) -> bool:
        """Return whether a failed write was refused for what a record holds.

        Writing that batch again fails again (a value out of the column's range, say), where
        a lost connection may heal: the writer then finds and drops the record refused.
        """
        return False

    @abc.abstractmethod
    def stats(self, query: StatsQuery) -> Stats:
        """Return satisfaction, escalation, errors and cost per tier and model."""

    @abc.abstractmethod
    def requests(
        self, since: float | None = None, tenant: str | None = None
    ) -> Iterator[StoredRequest]:
        """Yield stored requests, oldest first, each with its latest feedback."""

    @abc.abstractmethod
    def served_by(self, request_id: str, tenant: str | None = None) -> tuple[str, str] | None:
        """Return the tier that served the latest stored request with this id (of this
        tenant; of any when None) and the request's tenant (None: no such request)."""

    @abc.abstractmethod
    def session_tier(self, tenant: str, session_id: str) -> str | None:
        """Return the strongest tier a session used, or None for a session not seen."""

    @abc.abstractmethod
    def state(self, key: str) -> Any:
        """Return the named state last written (decoded JSON), or None."""

    @abc.abstractmethod
    def states(self, prefix: str) -> dict[str, Any]:
        """Return every named state whose key starts with ``prefix`` (decoded JSON), by key."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections."""

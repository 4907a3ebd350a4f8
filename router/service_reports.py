"""What GetConfig and GetStats report, as the service hands it to the transport: the
configuration and model in force, the stats read from the store, and the store's state."""

from __future__ import annotations

from dataclasses import dataclass

from router.config import Config
from router.controller import Snapshot
from router.domain import BackendState
from router.store import Stats, StoreWriter


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What GetConfig reports: the configuration in force and the state around it."""

    config: Config
    thresholds: tuple[float, ...]
    model_version: str
    model_source: str
    # The escalation margin below each threshold (tiers[1:]): the tier's own or the global.
    margins: tuple[float, ...]
    fastpath: str
    backends: tuple[BackendState, ...]
    # The tenants' cost controllers, by tenant name.
    controllers: tuple[Snapshot, ...] = ()
    # The replica this process belongs to (server.replica_id, resolved; "" for none) and
    # its index among ``serve --workers N`` (None: a server of one process).
    replica_id: str = ""
    worker_index: int | None = None


@dataclass(frozen=True, slots=True)
class StoreStatus:
    """The store a worker writes to, and its writer's counters."""

    kind: str
    location: str
    queued: int
    written: int
    dropped: int
    failed_writes: int


@dataclass(frozen=True, slots=True)
class ServiceStats:
    """What GetStats reports: the stats read from the store, and the store's state."""

    stats: Stats
    store: StoreStatus


def store_status(writer: StoreWriter) -> StoreStatus:
    """Return the store's kind and location and its writer's counters."""
    return StoreStatus(
        kind=writer.store.kind,
        location=writer.store.location,
        queued=writer.queued,
        written=writer.written,
        dropped=writer.dropped,
        failed_writes=writer.failed_writes,
    )


__all__ = ["ServiceInfo", "ServiceStats", "StoreStatus", "store_status"]

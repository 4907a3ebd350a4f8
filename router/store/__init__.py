"""The decision, outcome and feedback store: SQLite embedded, PostgreSQL for replicas.

``open_store`` opens either behind the one ``Store`` interface; ``StoreWriter`` keeps
writes off the request path. The embedded default keeps a SQLite file in the per-user
state directory (``$XDG_STATE_HOME/modelrouter/``, else ``~/.local/state/modelrouter/``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

from router.config import StoreConfig
from router.store.base import Store, StoreError
from router.store.records import (
    AttemptRecord,
    FeedbackRecord,
    Record,
    RequestRecord,
    RouteRow,
    SessionRecord,
    StateRecord,
    StoredRequest,
)
from router.store.stats import Stats, StatsQuery, TierStats
from router.store.writer import StoreWriter

STORE_FILE = "modelrouter.db"
URL_SCHEMES = ("postgresql://", "postgres://")


def default_store_path(environ: Mapping[str, str] | None = None) -> Path:
    """Return the embedded default's file: in $XDG_STATE_HOME, else ~/.local/state."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME", "")
    # The XDG spec: a relative path is invalid and must be ignored.
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local/state"
    return base / "modelrouter" / STORE_FILE


def is_url(target: str) -> bool:
    """Return whether a store target is a PostgreSQL URL (else it is a SQLite path)."""
    return target.startswith(URL_SCHEMES)


def open_store(target: str | Path, *, migrate: bool = True) -> Store:
    """Open the store at a SQLite path or a PostgreSQL URL; raise StoreError if it cannot.

    ``migrate`` creates the store and applies missing migrations (a server starting);
    without it the store must exist with this release's schema (``modelrouter stats``).
    """
    if isinstance(target, str) and is_url(target):
        from router.store.postgres import PostgresStore

        return PostgresStore(target, migrate=migrate)
    from router.store.sqlite import SQLiteStore

    try:
        path = Path(target).expanduser()
    except RuntimeError:  # ~user of no known user, or ~ with no $HOME and no passwd entry
        home = str(target).split("/", 1)[0]
        raise StoreError(f"{target}: no home directory for {home!r}") from None
    return SQLiteStore(path, migrate=migrate)


async def start_writer(target: str, settings: StoreConfig) -> StoreWriter:
    """Open (and migrate) the store in a thread, and start its writer on the running loop."""
    store = await asyncio.to_thread(open_store, target)
    writer = StoreWriter(
        store,
        queue_size=settings.queue_size,
        batch_size=settings.batch_size,
        flush_interval_s=settings.flush_interval_s,
        target=target,
    )
    writer.start()
    return writer


__all__ = [
    "AttemptRecord",
    "FeedbackRecord",
    "Record",
    "RequestRecord",
    "RouteRow",
    "SessionRecord",
    "StateRecord",
    "Stats",
    "StatsQuery",
    "Store",
    "StoreError",
    "StoreWriter",
    "StoredRequest",
    "TierStats",
    "default_store_path",
    "is_url",
    "open_store",
    "start_writer",
]

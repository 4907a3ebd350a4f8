"""The shared store: PostgreSQL through psycopg 3 and a small connection pool.

For several replicas (and their workers) writing one database. Migrations run under a
transaction-scoped advisory lock, so replicas starting together apply each one once.
Needs the ``postgres`` extra: ``pip install 'modelrouter[postgres]'``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from router.store.base import StoreError
from router.store.sql import Cursor, SqlStore

# Connections per process: the writer's batches, plus reads (stats, sessions, feedback).
POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10.0
# pg_advisory_xact_lock key of the migrations (any constant the application owns).
MIGRATION_LOCK = 0x6D6F64656C72


def redact(url: str) -> str:
    """Return the URL without its password, for messages and GetStats."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database."""

    kind = "postgres"
    dialect = "postgres"
    placeholder = "%s"
    # "PostgreSQL text fields cannot contain NUL (0x00) bytes": a batch with one would fail.
    text_holds_nul = False

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        try:
            from psycopg import DataError, Error, IntegrityError, IsolationLevel
            from psycopg import connect as connect_once
            from psycopg_pool import ConnectionPool
        except ImportError:
            raise StoreError(
                "store.url needs psycopg: pip install 'modelrouter[postgres]'"
            ) from None
        self.location = redact(url)
        # One connection first: the pool retries a refused one in the background until its
        # timeout, then says only "pool initialization incomplete"; this says why, at once.
        try:
            connect_once(url, connect_timeout=int(CONNECT_TIMEOUT_S)).close()
        except Error as exc:
            raise StoreError(f"{self.location}: {_first_line(exc)}") from None
        self.refusals = (*SqlStore.refusals, DataError, IntegrityError)
        self._repeatable_read = IsolationLevel.REPEATABLE_READ
        self._pool: Any = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            name="modelrouter-store",
            kwargs={"connect_timeout": int(CONNECT_TIMEOUT_S)},
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            if migrate:
                with self._writing() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                    self._migrate(cursor)
            else:
                with self._reading() as cursor:
                    self._check_version(cursor)
        except StoreError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise StoreError(f"{self.location}: {_first_line(exc)}") from None

    # The pool's connections serve both: each use sets the transactions it begins (a local
    # setting, sent with psycopg's BEGIN; no round trip of its own).

    @contextmanager
    def _writing(self) -> Iterator[Cursor]:
        with self._pool.connection() as connection:
            connection.isolation_level = None  # the server's default, READ COMMITTED
            connection.read_only = False
            with connection.transaction():
                yield connection.cursor()

    @contextmanager
    def _reading(self) -> Iterator[Cursor]:
        # REPEATABLE READ: the first query takes the snapshot every later one of the
        # transaction reads, whatever the writers commit (committed by the pool on exit).
        with self._pool.connection() as connection:
            connection.isolation_level = self._repeatable_read
            connection.read_only = True
            with connection.cursor() as cursor:
                yield cursor

    def close(self) -> None:
        """Close the pool's connections."""
        self._pool.close()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]

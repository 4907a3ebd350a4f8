"""The embedded store: one SQLite file in WAL mode (stdlib ``sqlite3``).

Several worker processes write the same file: WAL lets readers run beside the one writer,
and the busy timeout makes a writer wait for the lock instead of failing. One connection
writes and one reads, each behind its own lock, so a stats query never waits for a batch;
each read is one transaction, so its queries see one snapshot.
``synchronous=NORMAL`` in WAL mode survives a killed process (not a power cut) without an
fsync per batch.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from router.store.base import StoreError
from router.store.sql import REQUEST_PARAMS, Cursor, SqlStore

BUSY_TIMEOUT_S = 30.0
# The most request rows one INSERT carries (fewer when the library allows fewer parameters).
MAX_ROWS_PER_INSERT = 256
# The directory and the file may hold prompts (store.keep_text): owner only.
DIR_MODE = 0o700
FILE_MODE = 0o600


class SQLiteStore(SqlStore):
    """A store in one SQLite file."""

    kind = "sqlite"
    dialect = "sqlite"
    placeholder = "?"
    refusals = (*SqlStore.refusals, sqlite3.DataError, sqlite3.IntegrityError)

    def __init__(self, path: Path, *, migrate: bool = True) -> None:
        self.path = path
        self.location = str(path)
        if migrate:
            _create(path)
        elif not path.is_file():
            raise StoreError(f"{path}: no store there")
        try:
            self._writer = self._connect()
            self._reader = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None
        # Rows in chunks of powers of two: the largest within the parameters a statement
        # may have (32,766 since SQLite 3.32, 999 before).
        fits = self._writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // REQUEST_PARAMS
        self.rows_per_insert = 1 << (max(1, min(fits, MAX_ROWS_PER_INSERT)).bit_length() - 1)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            if migrate:
                with self._writing() as cursor:
                    self._migrate(cursor)
            else:
                with self._reading() as cursor:
                    self._check_version(cursor)
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"{path}: {exc}") from None
        except StoreError:
            self.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes BEGIN IMMEDIATE themselves
        # (taking the lock up front, so two workers never deadlock upgrading a read).
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    @contextmanager
    def _writing(self) -> Iterator[Cursor]:
        with self._write_lock:
            cursor = self._writer.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[Cursor]:
        with self._read_lock:
            cursor = self._reader.cursor()
            # A deferred BEGIN takes no lock; the first SELECT fixes the WAL snapshot that
            # every later query of the transaction reads, whatever the writers commit.
            cursor.execute("BEGIN")
            try:
                yield cursor
            finally:
                if self._reader.in_transaction:
                    cursor.execute("ROLLBACK")  # it read only: nothing to keep
                cursor.close()

    def close(self) -> None:
        """Close both connections."""
        for name in ("_writer", "_reader"):
            connection = getattr(self, name, None)
            if connection is not None:
                connection.close()


def _create(path: Path) -> None:
    """Create the directory (owner only, when new) and the file (owner only)."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    except OSError as exc:
        raise StoreError(f"{path}: cannot create the store: {exc.strerror}") from None

"""The store's SQL, written once for SQLite and PostgreSQL.

``SqlStore`` implements ``Store`` over a DB-API cursor; a subclass supplies the
connections (``_writing``, ``_reading``), the dialect and its placeholder. Queries are
written with ``?`` and translated to ``%s`` for psycopg.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from functools import cache
from itertools import chain
from typing import Any, Protocol

from router.store import schema
from router.store.base import Store, StoreError
from router.store.records import (
    FeedbackRecord,
    Record,
    RequestRecord,
    RequestRow,
    RouteRow,
    SessionRecord,
    StoredRequest,
)
from router.store.rows import REQUEST_COLUMNS, ROUTE_COLUMNS, ROUTE_CONSTANTS, request_row
from router.store.stats import Counts, Stats, StatsQuery, build_stats

# Attempt outcomes that count as a tier's error (AttemptOutcome values). A gate rejection
# is the gate doing its job; a cancellation, and a tier skipped for the caller's deadline
# (deadline_skipped), are the caller's.
ERROR_OUTCOMES = (
    "connect_error",
    "timeout",
    "rate_limited",
    "http_error",
    "malformed_stream",
    "error_event",
    "circuit_open",
    "failed_after_commit",
)
# Rows fetched at a time when streaming requests out.
FETCH_ROWS = 1000


class Cursor(Protocol):
    """The part of a DB-API cursor the store uses (sqlite3's and psycopg's both have it)."""

    def execute(self, sql: Any, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: Any, params: Any) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def fetchmany(self, size: int = ...) -> list[Any]: ...


def _literal(value: str | int | None) -> str:
    """Return a constant as an SQL literal."""
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))}) ON CONFLICT (record_key) DO NOTHING"
)
# A Route's row: its own columns as parameters, the columns every Route shares as literals.
_ROUTE_VALUES = ("?",) * len(ROUTE_COLUMNS) + tuple(map(_literal, ROUTE_CONSTANTS.values()))
_INSERT_ROUTE = (
    f"INSERT INTO requests ({', '.join((*ROUTE_COLUMNS, *ROUTE_CONSTANTS))}) "
    f"VALUES ({', '.join(_ROUTE_VALUES)}) ON CONFLICT (record_key) DO NOTHING"
)

_INSERT_ATTEMPT = """INSERT INTO attempts (
    request_key, attempt, tier, tier_index, model, backend, outcome, detail, first_token_ms,
    duration_ms, prompt_tokens, completion_tokens, cost_usd, gate, gate_reason
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (request_key, attempt) DO NOTHING"""

_INSERT_FEEDBACK = """INSERT INTO feedback (request_id, unix_time, tenant, rating, comment, label)
VALUES (?, ?, ?, ?, ?, ?)"""

# A session's floor only rises: a weaker tier never replaces a stronger one.
_UPSERT_SESSION = """INSERT INTO sessions (tenant, session_id, tier, tier_index, unix_time)
VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, session_id) DO UPDATE SET
    tier = CASE WHEN excluded.tier_index > sessions.tier_index
        THEN excluded.tier ELSE sessions.tier END,
    tier_index = CASE WHEN excluded.tier_index > sessions.tier_index
        THEN excluded.tier_index ELSE sessions.tier_index END,
    unix_time = excluded.unix_time"""

_UPSERT_STATE = """INSERT INTO state (key, value, unix_time) VALUES (?, ?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, unix_time = excluded.unix_time"""

# The latest rating of each request id.
# A request's latest rating: of its tenant, or naming none (a caller without API keys,
# rating by id alone). One look-up of the feedback_request_id index per request.
_LATEST_FEEDBACK = """LEFT JOIN feedback f ON f.id = (SELECT MAX(fb.id) FROM feedback fb
    WHERE fb.request_id = r.request_id AND fb.tenant IN (r.tenant, ''))"""
# A rating and a request it rates.
_RATED = "f.request_id = r.request_id AND (f.tenant = r.tenant OR f.tenant = '')"

_IS_COMPLETE = "r.method = 'complete'"
_ERRORS = ", ".join(f"'{outcome}'" for outcome in ERROR_OUTCOMES)


def _filters(query_since: float | None, tenant: str | None, alias: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if query_since is not None:
        clauses.append(f"{alias}.unix_time >= ?")
        params.append(query_since)
    if tenant is not None:
        clauses.append(f"{alias}.tenant = ?")
        params.append(tenant)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _and(where: str, clause: str) -> str:
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


# Parameters of one request row (the most a row binds).
REQUEST_PARAMS = len(REQUEST_COLUMNS)


@cache
def _insert_many_sql(insert: str, rows: int) -> str:
    """Return ``insert`` (of one row) made the INSERT of ``rows`` rows in one statement."""
    head, _, tail = insert.partition(" VALUES ")
    values, _, conflict = tail.partition(" ON CONFLICT ")
    return f"{head} VALUES {', '.join([values] * rows)} ON CONFLICT {conflict}"


class SqlStore(Store):
    """A store over SQL; subclasses provide the connections."""

    dialect: str
    placeholder = "?"
    # The most request rows one INSERT statement carries (1: a statement per row).
    rows_per_insert = 1
    # Whether its text columns hold NUL; where not, write() keeps each NUL as U+FFFD.
    text_holds_nul = True
    # The errors of a write refused for a value it holds: one the driver cannot convert
    # (an integer beyond 64 bits), or the database's data and integrity errors.
    refusals: tuple[type[Exception], ...] = (OverflowError, UnicodeError)

    @abc.abstractmethod
    def _writing(self) -> AbstractContextManager[Cursor]:
        """Return a cursor inside a write transaction (committed on a clean exit)."""

    @abc.abstractmethod
    def _reading(self) -> AbstractContextManager[Cursor]:
        """Return a cursor inside one read-only transaction: its queries see one snapshot."""

    def refuses(self, error: Exception) -> bool:
        """Return whether a failed write was refused for what a record holds."""
        return isinstance(error, self.refusals)

    def _sql(self, text: str) -> str:
        return _translate(text, self.placeholder)

    # -- schema ------------------------------------------------------------------------

    def _migrate(self, cursor: Cursor) -> int:
        """Apply the migrations this database lacks, inside the caller's locked transaction."""
        cursor.execute(schema.VERSION_TABLE)
        cursor.execute("SELECT MAX(version) FROM schema_version")
        found = cursor.fetchone()[0] or 0
        if found > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.location}: schema version {found} was written by a newer modelrouter "
                f"(this one knows up to {schema.SCHEMA_VERSION})"
            )
        for version in range(found + 1, schema.SCHEMA_VERSION + 1):
            for statement in schema.statements(self.dialect, version):
                cursor.execute(statement)
        if found < schema.SCHEMA_VERSION:
            cursor.execute("DELETE FROM schema_version")
            cursor.execute(
                self._sql("INSERT INTO schema_version (version) VALUES (?)"),
                (schema.SCHEMA_VERSION,),
            )
        return int(found)

    def _check_version(self, cursor: Cursor) -> None:
        """Fail unless the database holds exactly this release's schema (read-only opens)."""
        try:
            cursor.execute("SELECT MAX(version) FROM schema_version")
            found = cursor.fetchone()[0]
        except Exception as exc:
            raise StoreError(f"{self.location}: not a modelrouter store ({exc})") from None
        if found != schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.location}: schema version {found}, this modelrouter reads "
                f"{schema.SCHEMA_VERSION} (start the server once to migrate it)"
            )

    # -- writes ------------------------------------------------------------------------

    def write(self, records: Sequence[Record]) -> None:
        """Write a batch of records in one transaction (all or none)."""
        routes: list[RouteRow] = []
        requests: list[RequestRow] = []
        attempts: list[tuple[Any, ...]] = []
        feedback: list[tuple[Any, ...]] = []
        sessions: list[tuple[Any, ...]] = []
        states: list[tuple[Any, ...]] = []
        for record in records:
            if isinstance(record, tuple):  # a RouteRow: Route's record, encoded already
                routes.append(record)
            elif isinstance(record, RequestRecord):
                requests.append(request_row(record))
                attempts.extend(
                    (
                        record.key,
                        a.index,
                        a.tier,
                        a.tier_index,
                        a.model,
                        a.backend,
                        a.outcome,
                        a.detail,
                        a.first_token_ms,
                        a.duration_ms,
                        a.prompt_tokens,
                        a.completion_tokens,
                        a.cost_usd,
                        a.gate,
                        a.gate_reason,
                    )
                    for a in record.attempts
                )
            elif isinstance(record, FeedbackRecord):
                feedback.append(
                    (
                        record.request_id,
                        record.time,
                        record.tenant,
                        record.rating,
                        record.comment,
                        record.label,
                    )
                )
            elif isinstance(record, SessionRecord):
                sessions.append(
                    (record.tenant, record.session_id, record.tier, record.tier_index, record.time)
                )
            else:
                states.append((record.key, json.dumps(record.value), record.time))
        if not self.text_holds_nul:
            routes, requests, attempts, feedback = (
                _without_nul(rows) for rows in (routes, requests, attempts, feedback)
            )
        with self._writing() as cursor:
            if routes:
                self._insert_rows(cursor, _INSERT_ROUTE, routes)
            if requests:
                self._insert_rows(cursor, _INSERT_REQUEST, requests)
            for sql, rows in (
                (_INSERT_ATTEMPT, attempts),
                (_INSERT_FEEDBACK, feedback),
                (_UPSERT_SESSION, sessions),
                (_UPSERT_STATE, states),
            ):
                if rows:
                    cursor.executemany(self._sql(sql), rows)

    def _insert_rows(self, cursor: Cursor, insert: str, rows: list[tuple[Any, ...]]) -> None:
        """Insert rows with ``insert``: one statement per row, or several rows to a statement.

        With ``rows_per_insert`` above 1 the rows go in chunks of powers of two up to it
        (at most a handful of statement texts, each compiled once), which the database
        steps through as one statement each: SQLite's driver gives up the GIL around every
        statement it steps, and a row at a time it passed the GIL between the writer thread
        and the event loop twice a row.
        """
        most = self.rows_per_insert
        start = 0
        while len(rows) - start > 1 and most > 1:
            size = min(most, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + size]
            cursor.execute(
                self._sql(_insert_many_sql(insert, size)), list(chain.from_iterable(chunk))
            )
            start += size
        if start < len(rows):
            cursor.executemany(self._sql(insert), rows[start:])

    # -- reads -------------------------------------------------------------------------

    def served_by(self, request_id: str, tenant: str | None = None) -> tuple[str, str] | None:
        """Return the tier that served the latest stored request with this id (of this
        tenant; of any when None) and the request's tenant (None: no such request)."""
        # The tier that answered a Complete (the decided one when none did), the decided
        # tier of a Route, as the stats count it.
        params: list[Any] = [request_id]
        where = "request_id = ?"
        if tenant is not None:
            where += " AND tenant = ?"
            params.append(tenant)
        with self._reading() as cursor:
            cursor.execute(
                self._sql(
                    f"SELECT COALESCE(answered_tier, tier), tenant FROM requests WHERE {where} "
                    "ORDER BY unix_time DESC LIMIT 1"
                ),
                params,
            )
            row = cursor.fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def session_tier(self, tenant: str, session_id: str) -> str | None:
        """Return the strongest tier a session used, or None for a session not seen."""
        with self._reading() as cursor:
            cursor.execute(
                self._sql("SELECT tier FROM sessions WHERE tenant = ? AND session_id = ?"),
                (tenant, session_id),
            )
            row = cursor.fetchone()
        return None if row is None else str(row[0])

    def state(self, key: str) -> Any:
        """Return the named state last written (decoded JSON), or None."""
        with self._reading() as cursor:
            cursor.execute(self._sql("SELECT value FROM state WHERE key = ?"), (key,))
            row = cursor.fetchone()
        return None if row is None else json.loads(row[0])

    def states(self, prefix: str) -> dict[str, Any]:
        """Return every named state whose key starts with ``prefix`` (decoded JSON), by key."""
        with self._reading() as cursor:
            cursor.execute(
                self._sql("SELECT key, value FROM state WHERE substr(key, 1, ?) = ? ORDER BY key"),
                (len(prefix), prefix),
            )
            return {str(key): json.loads(value) for key, value in cursor.fetchall()}

    def requests(
        self, since: float | None = None, tenant: str | None = None
    ) -> Iterator[StoredRequest]:
        """Yield stored requests, oldest first, each with its latest feedback."""
        where, params = _filters(since, tenant, "r")
        sql = self._sql(
            "SELECT r.request_id, r.unix_time, r.method, r.tenant, r.session_id, r.tier, "
            "r.model, r.score, r.outcome, r.answered_tier, r.answered_model, r.cost_usd, "
            "r.strongest_cost_usd, r.prompt, r.messages, f.rating, f.comment, f.label "
            f"FROM requests r {_LATEST_FEEDBACK}"
            f"{where} ORDER BY r.unix_time, r.record_key"
        )
        with self._reading() as cursor:
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(FETCH_ROWS):
                for row in rows:
                    yield _stored_request(row)

    def stats(self, query: StatsQuery) -> Stats:
        """Return satisfaction, escalation, errors and cost per tier and model."""
        where, params = _filters(query.since, query.tenant, "r")
        groups: dict[tuple[str, str], Counts] = {}

        def group(tier: str, model: str, tier_index: int) -> Counts:
            counts = groups.setdefault((tier, model), Counts())
            counts.tier_index = max(counts.tier_index, int(tier_index))
            return counts

        # One transaction, one snapshot: a batch the writer commits while these queries run
        # is in none of their counts (the next call's), so the counts agree with each other.
        with self._reading() as cursor:
            # Requests, cost and ratings at the tier that served them.
            cursor.execute(
                self._sql(
                    "SELECT COALESCE(r.answered_tier, r.tier), "
                    "COALESCE(r.answered_model, r.model), "
                    "MAX(COALESCE(r.answered_tier_index, r.tier_index)), COUNT(*), "
                    "SUM(CASE WHEN r.method = 'complete' THEN 1 ELSE 0 END), "
                    "SUM(r.cost_usd), SUM(r.strongest_cost_usd), COUNT(f.rating), "
                    "SUM(f.rating), SUM(CASE WHEN f.rating >= ? THEN 1 ELSE 0 END) "
                    f"FROM requests r {_LATEST_FEEDBACK}{where} GROUP BY 1, 2"
                ),
                [query.satisfied_at, *params],
            )
            for (
                tier,
                model,
                index,
                n,
                completions,
                cost,
                strongest,
                rated,
                total,
                ok,
            ) in cursor.fetchall():
                counts = group(tier, model, index)
                counts.requests = int(n)
                counts.completions = int(completions)
                counts.cost_usd = float(cost)
                counts.strongest_cost_usd = float(strongest)
                counts.rated = int(rated)
                counts.rating_sum = float(total or 0.0)
                counts.satisfied = int(ok or 0)
            # Escalations at the tier the router first sent a Complete to.
            cursor.execute(
                self._sql(
                    "SELECT r.tier, r.model, MAX(r.tier_index), COUNT(*), "
                    "SUM(CASE WHEN r.escalations > 0 THEN 1 ELSE 0 END) FROM requests r"
                    f"{_and(where, _IS_COMPLETE)} GROUP BY r.tier, r.model"
                ),
                params,
            )
            for tier, model, index, n, escalated in cursor.fetchall():
                counts = group(tier, model, index)
                counts.decided_completions = int(n)
                counts.escalated = int(escalated)
            # Gate rejections and errors at the tier of each attempt.
            joined = "FROM attempts a JOIN requests r ON r.record_key = a.request_key"
            cursor.execute(
                self._sql(
                    "SELECT a.tier, a.model, MAX(a.tier_index), COUNT(*), "
                    "SUM(CASE WHEN a.outcome = 'gate_rejected' THEN 1 ELSE 0 END), "
                    f"SUM(CASE WHEN a.outcome IN ({_ERRORS}) THEN 1 ELSE 0 END) "
                    f"{joined}{where} GROUP BY a.tier, a.model"
                ),
                params,
            )
            for tier, model, index, n, rejected, errors in cursor.fetchall():
                counts = group(tier, model, index)
                counts.attempts = int(n)
                counts.gate_rejected = int(rejected)
                counts.errors = int(errors)
            # Time to first token at the tier of each attempt.
            cursor.execute(
                self._sql(
                    f"SELECT a.tier, a.model, a.tier_index, a.first_token_ms {joined}"
                    f"{_and(where, 'a.first_token_ms IS NOT NULL')}"
                ),
                params,
            )
            for tier, model, index, ms in cursor.fetchall():
                group(tier, model, index).first_token_ms.append(float(ms))
            # Ratings whose tenant stored no request of their id: kept, and reported.
            f_where, f_params = _filters(query.since, query.tenant, "f")
            cursor.execute(
                self._sql(
                    "SELECT COUNT(*) FROM feedback f"
                    + _and(
                        f_where,
                        f"NOT EXISTS (SELECT 1 FROM requests r WHERE {_RATED})",
                    )
                ),
                f_params,
            )
            unmatched = int(cursor.fetchone()[0])
        return build_stats(
            ((tier, model, counts) for (tier, model), counts in groups.items()),
            query.satisfied_at,
            unmatched,
        )


def _without_nul(rows: list[Any]) -> list[Any]:
    """Return the rows with each NUL of their text as U+FFFD (rows without one as they are)."""
    return [
        tuple(v.replace("\x00", "\ufffd") if type(v) is str else v for v in row)
        if any(type(v) is str and "\x00" in v for v in row)
        else row
        for row in rows
    ]


def _stored_request(row: Sequence[Any]) -> StoredRequest:
    messages = row[14]
    return StoredRequest(
        request_id=row[0],
        time=row[1],
        method=row[2],
        tenant=row[3],
        session_id=row[4],
        tier=row[5],
        model=row[6],
        score=row[7],
        outcome=row[8],
        answered_tier=row[9],
        answered_model=row[10],
        cost_usd=row[11],
        strongest_cost_usd=row[12],
        prompt=row[13],
        messages=(
            None
            if messages is None
            else tuple((role, content) for role, content in json.loads(messages))
        ),
        rating=row[15],
        comment=row[16],
        label=row[17],
    )


@cache
def _translate(text: str, placeholder: str) -> str:
    return text if placeholder == "?" else text.replace("?", placeholder)

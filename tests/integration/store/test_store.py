"""The store, the same tests over SQLite and a real PostgreSQL server."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, cast

import pytest

from router.store import (
    AttemptRecord,
    FeedbackRecord,
    Record,
    RequestRecord,
    SessionRecord,
    StateRecord,
    StatsQuery,
    Store,
    StoreError,
    open_store,
    schema,
)
from router.store.records import RouteRow
from router.store.rows import REQUEST_COLUMNS, ROUTE_COLUMNS, ROUTE_CONSTANTS, request_row
from router.store.sqlite import SQLiteStore

T0 = 1_700_000_000.0
# The keys every row of `modelrouter stats --json` has (issue 11 names them).
JSON_ROW_KEYS = {
    "tier",
    "model",
    "requests",
    "rated",
    "mean_rating",
    "satisfaction",
    "escalation_rate",
    "cost_usd",
    "saved_usd",
}


def attempt(
    index: int,
    tier: str,
    tier_index: int,
    outcome: str = "ok",
    ttft: float | None = 100.0,
    cost: float = 0.001,
    gate: str = "off",
) -> AttemptRecord:
    return AttemptRecord(
        index=index,
        tier=tier,
        tier_index=tier_index,
        model=f"m-{tier}",
        backend="demo",
        outcome=outcome,
        detail="" if outcome == "ok" else outcome,
        first_token_ms=ttft,
        duration_ms=250.0,
        prompt_tokens=10,
        completion_tokens=20,
        cost_usd=cost,
        gate=gate,
        gate_reason="",
    )


def request(
    key: str,
    tier: str = "cheap",
    tier_index: int = 0,
    *,
    method: str = "complete",
    outcome: str = "ok",
    answered: tuple[str, int] | None = None,
    attempts: Sequence[AttemptRecord] = (),
    tenant: str = "acme",
    time_s: float = T0,
    cost: float = 0.001,
    strongest: float = 0.01,
    prompt: str | None = None,
    messages: tuple[tuple[str, str], ...] | None = None,
) -> RequestRecord:
    if answered is None and outcome == "ok" and method == "complete":
        answered = (tier, tier_index)
    return RequestRecord(
        key=f"k-{key}",
        request_id=key,
        time=time_s,
        method=method,
        tenant=tenant,
        session_id="",
        tier=tier,
        tier_index=tier_index,
        model=f"m-{tier}",
        backend="demo",
        score=0.25,
        levels=(0.5, 0.2, 0.1, 0.1, 0.1),
        rules=("greeting",),
        reason="score",
        model_version="test-1",
        hints=(("min_tier", "cheap"),),
        outcome=outcome if method == "complete" else "routed",
        prompt_tokens=10,
        completion_tokens=20,
        cost_usd=cost,
        strongest_cost_usd=strongest,
        answered_tier=None if answered is None else answered[0],
        answered_tier_index=None if answered is None else answered[1],
        answered_model=None if answered is None else f"m-{answered[0]}",
        finish_reason="stop" if outcome == "ok" else "",
        escalations=max(0, len(attempts) - 1),
        first_text_ms=120.0,
        duration_ms=300.0,
        attempts=tuple(attempts),
        prompt=prompt,
        messages=messages,
    )


def rating(request_id: str, value: float, time_s: float = T0 + 10, **kw: str) -> FeedbackRecord:
    return FeedbackRecord(
        request_id=request_id,
        time=time_s,
        tenant=kw.get("tenant", "acme"),
        rating=value,
        comment=kw.get("comment", ""),
        label=kw.get("label", ""),
    )


def traffic() -> list[Record]:
    """Four requests over three tiers, ratings (one replaced), and one unknown rating."""
    return [
        request("r-route", method="route", cost=0.0001, strongest=0.001),
        request("r-cheap", attempts=[attempt(0, "cheap", 0, ttft=100.0)]),
        request(
            "r-climb",
            answered=("strong", 1),
            attempts=[
                attempt(0, "cheap", 0, outcome="gate_rejected", ttft=50.0, gate="rejected"),
                attempt(1, "strong", 1, ttft=300.0, cost=0.004),
            ],
            cost=0.0041,
        ),
        request(
            "r-fail",
            "strong",
            1,
            outcome="error",
            attempts=[
                attempt(0, "strong", 1, outcome="timeout", ttft=None, cost=0.0),
                attempt(1, "expert", 2, outcome="http_error", ttft=None, cost=0.0),
            ],
            cost=0.0,
            strongest=0.0,
        ),
        rating("r-cheap", 0.2, time_s=T0 + 5),
        rating("r-cheap", 0.9, time_s=T0 + 6, comment="fine after all", label="good"),
        rating("r-climb", 0.5),
        rating("never-served", 1.0),
    ]


def test_a_new_store_is_at_the_current_schema_version(store: Store) -> None:
    with store._reading() as cursor:  # type: ignore[attr-defined]
        cursor.execute("SELECT version FROM schema_version")
        assert [tuple(row) for row in cursor.fetchall()] == [(schema.SCHEMA_VERSION,)]


def test_reopening_keeps_the_data_and_applies_no_migration_twice(store_target: str) -> None:
    first = open_store(store_target)
    first.write([request("a", method="route")])
    first.close()
    again = open_store(store_target)
    try:
        assert again.served_by("a") == ("cheap", "acme")
        with again._reading() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SELECT COUNT(*) FROM schema_version")
            assert cursor.fetchone()[0] == 1
    finally:
        again.close()


def test_a_store_from_a_newer_release_is_refused(store_target: str) -> None:
    store = open_store(store_target)
    with store._writing() as cursor:  # type: ignore[attr-defined]
        cursor.execute(f"UPDATE schema_version SET version = {schema.SCHEMA_VERSION + 1}")
    store.close()
    with pytest.raises(StoreError, match="written by a newer modelrouter"):
        open_store(store_target)
    with pytest.raises(StoreError, match="start the server once to migrate"):
        open_store(store_target, migrate=False)


def test_stats_per_tier_and_model(store: Store) -> None:
    store.write(traffic())
    stats = store.stats(StatsQuery(satisfied_at=0.7))
    rows = {(row.tier, row.model): row for row in stats.tiers}
    assert list(rows) == [("cheap", "m-cheap"), ("strong", "m-strong"), ("expert", "m-expert")]
    cheap, strong, expert = rows.values()
    # Served at cheap: the Route decision and the Complete it answered.
    assert (cheap.requests, cheap.completions, cheap.share) == (2, 1, 0.5)
    # Decided to cheap: two Completes, one climbed.
    assert cheap.escalation_rate == 0.5
    # Attempts at cheap: one gate rejection of two, no error.
    assert (cheap.gate_rejection_rate, cheap.error_rate) == (0.5, 0.0)
    assert (cheap.ttft_p50_ms, cheap.ttft_p95_ms) == pytest.approx((75.0, 97.5))
    # The latest rating of r-cheap (0.9) counts, not the replaced 0.2.
    assert (cheap.rated, cheap.mean_rating, cheap.satisfaction) == (1, 0.9, 1.0)
    assert cheap.cost_usd == pytest.approx(0.0011)
    assert cheap.saved_usd == pytest.approx(0.011 - 0.0011)
    # Served at strong: the climbed one (answered) and the failed one (decided, no answer).
    assert (strong.requests, strong.rated, strong.mean_rating, strong.satisfaction) == (
        2,
        1,
        0.5,
        0.0,
    )
    assert strong.escalation_rate == 1.0  # r-fail was decided to strong and climbed
    assert strong.error_rate == pytest.approx(0.5)  # r-fail's timeout; r-climb's ok
    assert strong.ttft_p50_ms == pytest.approx(300.0)
    # Expert only saw an attempt: no request served there.
    assert (expert.requests, expert.error_rate, expert.ttft_p50_ms) == (0, 1.0, None)
    assert (expert.rated, expert.mean_rating, expert.escalation_rate) == (0, None, None)
    total = stats.total
    assert (total.requests, total.completions, total.rated) == (4, 3, 2)
    assert total.mean_rating == pytest.approx(0.7)
    assert total.satisfaction == 0.5
    assert total.escalation_rate == pytest.approx(2 / 3)
    assert total.error_rate == pytest.approx(2 / 5)
    assert stats.unmatched_feedback == 1
    data = stats.as_json()
    assert set(data) == {"tiers", "total", "controllers"} and data["controllers"] == []
    assert data["total"]["unmatched_feedback"] == 1
    for row in data["tiers"]:
        assert set(row) >= JSON_ROW_KEYS


# The stats' SELECTs, in the order they run: requests, escalations, attempts, time to first
# token, unmatched feedback.
STATS_SELECTS = 5


@pytest.mark.parametrize("before_select", range(1, STATS_SELECTS + 1))
def test_stats_read_one_snapshot_while_a_batch_commits_between_their_queries(
    store: Store, monkeypatch: pytest.MonkeyPatch, before_select: int
) -> None:
    """The SELECTs of one stats call read one snapshot: a batch the writer commits between
    two of them is in none of that call's counts, so the per-tier counts agree with each
    other and with the total; the next call counts all of it. (Reading what each SELECT
    found committed, a batch with a tier the earlier ones had not seen raised KeyError in a
    CI run of test_a_reload_never_loses_records.)"""
    store.write(traffic())
    before = store.stats(StatsQuery()).as_json()
    # A batch that changes what every SELECT returns: a Complete decided to cheap and
    # answered by a tier no request reached yet, two attempts (one gate-rejected, both with
    # a time to first token), its rating and a rating of an unknown request id.
    late: list[Record] = [
        request(
            "r-late",
            answered=("mini", 3),
            attempts=[
                attempt(0, "cheap", 0, outcome="gate_rejected", ttft=70.0, gate="rejected"),
                attempt(1, "mini", 3, ttft=40.0, cost=0.002),
            ],
            cost=0.002,
        ),
        rating("r-late", 0.8),
        rating("never-served-late", 0.3),
    ]
    reading = store._reading  # type: ignore[attr-defined]
    selects = 0

    class CommitBeforeOneSelect:
        def __init__(self, cursor: Any) -> None:
            self._cursor = cursor

        def execute(self, sql: str, *args: Any) -> Any:
            nonlocal selects
            if sql.lstrip().upper().startswith("SELECT"):
                selects += 1
                if selects == before_select:
                    store.write(late)
            return self._cursor.execute(sql, *args)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cursor, name)

    @contextmanager
    def racing() -> Iterator[Any]:
        with reading() as cursor:
            yield CommitBeforeOneSelect(cursor)

    monkeypatch.setattr(store, "_reading", racing)
    raced = store.stats(StatsQuery()).as_json()
    monkeypatch.undo()
    assert selects == STATS_SELECTS
    after = store.stats(StatsQuery()).as_json()
    assert after["total"]["requests"] == before["total"]["requests"] + 1
    # Committed before the first SELECT, the batch is wholly in; after it, wholly out.
    assert raced == (after if before_select == 1 else before)


def test_stats_filter_by_time_and_tenant(store: Store) -> None:
    store.write(
        [
            request("old", time_s=T0 - 100),
            request("new", time_s=T0 + 100),
            request("other", tenant="globex", time_s=T0 + 100),
            rating("old", 1.0),
            rating("nobody", 1.0, tenant="globex", time_s=T0 + 200),
        ]
    )
    assert store.stats(StatsQuery()).total.requests == 3
    assert store.stats(StatsQuery(since=T0)).total.requests == 2
    by_acme = store.stats(StatsQuery(since=T0, tenant="acme"))
    assert (by_acme.total.requests, by_acme.total.rated, by_acme.unmatched_feedback) == (1, 0, 0)
    assert store.stats(StatsQuery(tenant="globex")).unmatched_feedback == 1
    empty = store.stats(StatsQuery(tenant="nobody"))
    assert (empty.tiers, empty.total.requests, empty.total.share) == ((), 0, 0.0)


def test_requests_come_back_with_text_and_latest_feedback(store: Store) -> None:
    chat = (("system", "be brief"), ("user", "hello there"))
    store.write(
        [
            request("b", prompt="hello there", messages=chat, time_s=T0 + 1),
            request("a", prompt="what time is it?", time_s=T0),
            request("c", time_s=T0 + 2),
            rating("b", 0.3),
            rating("b", 0.8, comment="ok", label="good", time_s=T0 + 20),
        ]
    )
    rows = list(store.requests())
    assert [r.request_id for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert (a.prompt, a.messages, a.rating) == ("what time is it?", None, None)
    assert (b.prompt, b.messages) == ("hello there", chat)
    assert (b.rating, b.comment, b.label) == (0.8, "ok", "good")
    assert (c.prompt, c.answered_tier, c.answered_model) == (None, "cheap", "m-cheap")
    assert [r.request_id for r in store.requests(since=T0 + 1, tenant="acme")] == ["b", "c"]


def route(key: str, **kw: Any) -> RequestRecord:
    """Return a Route's record: nothing ran, so no answer, usage beyond the prompt or times."""
    return dataclasses.replace(
        request(key, method="route", **kw),
        completion_tokens=0,
        finish_reason="",
        first_text_ms=None,
        duration_ms=None,
    )


def as_route_row(record: RequestRecord) -> RouteRow:
    """Return a Route's record as the row Route hands the store (router.recording.route_row)."""
    columns = dict(zip(REQUEST_COLUMNS, request_row(record), strict=True))
    assert {c: columns[c] for c in ROUTE_CONSTANTS} == ROUTE_CONSTANTS
    return tuple(columns[c] for c in ROUTE_COLUMNS)


def test_a_route_row_is_stored_as_the_record_it_stands_for(store: Store) -> None:
    # Route hands the store its record as a row of the columns that vary, the others being
    # literals of the INSERT; the store writes it as it writes the record, in a batch with
    # records of other kinds.
    chat = (("system", "be brief"), ("user", "it's 'quoted'"))
    records = [
        route("with-text", prompt="it's 'quoted'", messages=chat),
        route("plain", time_s=T0 + 1),
        dataclasses.replace(route("no-rules", time_s=T0 + 2), rules=(), hints=()),
    ]
    twins = [
        dataclasses.replace(r, key=f"k-row-{r.request_id}", request_id=f"row-{r.request_id}")
        for r in records
    ]
    store.write(
        [*records, rating("plain", 0.5), *map(as_route_row, twins), rating("row-plain", 0.5)]
    )
    stored = {r.request_id: r for r in store.requests()}
    assert len(stored) == 6
    with store._reading() as cursor:  # type: ignore[attr-defined]
        cursor.execute(f"SELECT {', '.join(REQUEST_COLUMNS)} FROM requests")
        table = {row[1]: row[2:] for row in cursor.fetchall()}  # by request id, without the keys
    for record in records:
        rid = record.request_id
        assert stored[f"row-{rid}"] == dataclasses.replace(stored[rid], request_id=f"row-{rid}")
        assert table[f"row-{rid}"] == table[rid]


def test_a_session_floor_rises_and_never_falls(store: Store) -> None:
    assert store.session_tier("acme", "s1") is None
    store.write([SessionRecord("acme", "s1", "strong", 1, T0)])
    store.write([SessionRecord("acme", "s1", "cheap", 0, T0 + 1)])
    assert store.session_tier("acme", "s1") == "strong"
    store.write(
        [
            SessionRecord("acme", "s1", "expert", 2, T0 + 2),
            SessionRecord("acme", "s1", "cheap", 0, T0),
        ]
    )
    assert store.session_tier("acme", "s1") == "expert"
    assert store.session_tier("globex", "s1") is None  # sessions are per tenant


def test_the_served_tier_of_a_request_is_the_tier_that_answered(store: Store) -> None:
    store.write(
        [
            request("escalated", answered=("strong", 1)),
            request("failed", "strong", 1, outcome="error"),
            request("routed", "expert", 2, method="route"),
        ]
    )
    assert store.served_by("escalated") == ("strong", "acme")
    assert store.served_by("failed") == ("strong", "acme")
    assert store.served_by("routed", "acme") == ("expert", "acme")
    assert store.served_by("routed", "globex") is None  # another tenant's
    assert store.served_by("never") is None


def test_a_rating_is_matched_to_the_requests_of_its_own_tenant(store: Store) -> None:
    store.write(
        [
            request("shared", tenant="acme", time_s=T0),
            dataclasses.replace(
                request("shared", "strong", 1, tenant="globex", time_s=T0 + 1), key="k-shared-2"
            ),
            rating("shared", 1.0, tenant="acme"),
            rating("shared", 0.0, tenant="initech", time_s=T0 + 20),  # the latest, not theirs
        ]
    )
    assert store.served_by("shared") == ("strong", "globex")  # the latest of any tenant
    assert store.served_by("shared", "acme") == ("cheap", "acme")
    acme = store.stats(StatsQuery(tenant="acme"))
    assert (acme.total.rated, acme.total.mean_rating, acme.unmatched_feedback) == (1, 1.0, 0)
    globex = store.stats(StatsQuery(tenant="globex"))
    assert (globex.total.rated, globex.unmatched_feedback) == (0, 0)
    assert store.stats(StatsQuery(tenant="initech")).unmatched_feedback == 1
    rated = {(r.tenant, r.rating) for r in store.requests()}
    assert rated == {("acme", 1.0), ("globex", None)}


def test_a_rating_naming_no_tenant_rates_its_request_of_any_tenant(store: Store) -> None:
    # Without API keys a caller may rate by id alone, and before the request is stored (a
    # rating at another worker within the flush interval): it is kept as naming none.
    store.write(
        [
            rating("r", 0.5, tenant="", time_s=T0 - 1),
            request("r", tenant="acme"),
            rating("r", 0.0, tenant="globex", time_s=T0 + 20),  # another tenant's
        ]
    )
    acme = store.stats(StatsQuery(tenant="acme"))
    assert (acme.total.rated, acme.total.mean_rating, acme.unmatched_feedback) == (1, 0.5, 0)
    assert store.stats(StatsQuery()).unmatched_feedback == 1  # globex's
    assert [r.rating for r in store.requests()] == [0.5]


def test_a_release_1_rating_without_a_tenant_takes_its_requests_tenant(
    store_target: str,
) -> None:
    # Release 1 matched ratings by id alone, so one naming no tenant rated any tenant's.
    store = open_store(store_target)
    store.write([request("r", tenant="acme"), rating("r", 0.5, tenant=""), rating("x", 1.0)])
    with store._writing() as cursor:  # type: ignore[attr-defined]
        cursor.execute("UPDATE feedback SET tenant = ''")
        cursor.execute("UPDATE schema_version SET version = 1")
    store.close()
    migrated = open_store(store_target)
    try:
        stats = migrated.stats(StatsQuery(tenant="acme"))
        assert (stats.total.rated, stats.total.mean_rating) == (1, 0.5)
        assert migrated.stats(StatsQuery(tenant="")).unmatched_feedback == 1  # x: no request
    finally:
        migrated.close()


def test_named_state_is_replaced(store: Store) -> None:
    assert store.state("controller/acme") is None
    store.write([StateRecord("controller/acme", {"offset": 0.1, "window": [1, 2]}, T0)])
    store.write([StateRecord("controller/acme", {"offset": -0.05}, T0 + 1)])
    assert store.state("controller/acme") == {"offset": -0.05}


def test_named_states_are_listed_by_prefix(store: Store) -> None:
    store.write(
        [
            StateRecord("controller:acme", {"offset": 1.0}, T0),
            StateRecord("controller:50%_off", {"offset": 2.0}, T0),
            StateRecord("controllers", 3, T0),
            StateRecord("feedback.satisfied_at", 0.7, T0),
        ]
    )
    assert store.states("controller:") == {
        "controller:50%_off": {"offset": 2.0},
        "controller:acme": {"offset": 1.0},
    }
    assert store.states("nothing:") == {}


def test_a_batch_is_written_all_or_nothing(store: Store) -> None:
    store.write([request("dup")])
    # A None the record type forbids, on purpose: tenant is NOT NULL in the schema.
    broken = dataclasses.replace(request("broken"), tenant=cast(str, None))
    with pytest.raises(Exception, match=r"(?i)null"):
        store.write([request("x"), broken, request("y"), rating("x", 1.0)])
    assert store.served_by("x") is None and store.served_by("y") is None
    assert store.stats(StatsQuery()).total.rated == 0
    store.write([request("dup")])  # a retried batch does not duplicate requests
    assert store.stats(StatsQuery()).total.requests == 1


def _write_many(target: str, worker: int, count: int) -> None:
    store = open_store(target)
    try:
        for i in range(count):
            store.write([request(f"w{worker}-{i}", method="route"), rating(f"w{worker}-{i}", 1.0)])
    finally:
        store.close()


def test_several_processes_write_one_store(store_target: str) -> None:
    open_store(store_target).close()  # migrated once, as the supervisor does
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(store_target, w, 50)) for w in range(3)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
        assert process.exitcode == 0
    store = open_store(store_target, migrate=False)
    try:
        stats = store.stats(StatsQuery())
        assert (stats.total.requests, stats.total.rated, stats.unmatched_feedback) == (150, 150, 0)
    finally:
        store.close()


def test_opening_for_reading_needs_an_existing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no store there"):
        open_store(tmp_path / "missing.db", migrate=False)
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(StoreError, match=r"junk\.db"):
        open_store(tmp_path / "junk.db")


def test_an_unreachable_postgres_is_a_store_error() -> None:
    pytest.importorskip("psycopg_pool")
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        open_store("postgresql://u:secret@127.0.0.1:1/x")
    assert time.monotonic() - started < 60


def test_sqlite_writes_a_batch_several_rows_to_a_statement_as_it_would_row_by_row(
    tmp_path: Path,
) -> None:
    batch: list[Record] = [
        dataclasses.replace(
            request(f"r{i}", method="route" if i % 3 else "complete", time_s=T0 + i / 7),
            score=i / 301,
            levels=(i / 3, 0.1 + i * 1e-9, 0.0, -0.0, 1 / (i + 1)),
            prompt=None if i % 2 else f"prompt {i} é",
            messages=None if i % 5 else (("user", f"q{i}"), ("assistant", "a")),
            first_text_ms=None if i % 4 else i * 0.1,
        )
        for i in range(300)
    ]
    batch.insert(150, request("r7"))  # the same record key again within the batch: kept once
    batch.append(rating("r1", 0.5))
    tables = []
    for rows_per_insert in (1, None):
        path = tmp_path / f"store-{rows_per_insert}.db"
        store = open_store(path)
        assert isinstance(store, SQLiteStore) and store.rows_per_insert > 1
        if rows_per_insert is not None:
            store.rows_per_insert = rows_per_insert
        try:
            store.write([request("r0")])  # already stored: the batch's r0 is skipped
            store.write(batch)
        finally:
            store.close()
        with closing(sqlite3.connect(path)) as db:
            tables.append(db.execute("SELECT * FROM requests ORDER BY record_key").fetchall())
    assert len(tables[1]) == 300
    assert tables[1] == tables[0]


def test_text_with_nul_characters_is_stored(store: Store) -> None:
    # PostgreSQL's text cannot hold NUL, which is valid UTF-8 a caller (a prompt, a comment)
    # or a backend (an error's detail) may send: that store keeps each NUL as U+FFFD, where
    # SQLite keeps the text as it came.
    nul = "\ufffd" if store.kind == "postgres" else "\x00"
    failed = dataclasses.replace(attempt(0, "cheap", 0, outcome="error"), detail="oops\x00")
    store.write(
        [
            request("a", prompt="say \x00 hi", attempts=[failed], time_s=T0),
            rating("a", 0.5, comment="bad\x00", label="x\x00"),
            StateRecord(key="k", value={"v\x00": "w\x00"}, time=T0),
        ]
    )
    [row] = list(store.requests())
    assert (row.prompt, row.comment, row.label) == (f"say {nul} hi", f"bad{nul}", f"x{nul}")
    assert store.state("k") == {"v\x00": "w\x00"}  # JSON text: NUL escaped, kept
    assert store.stats(StatsQuery()).total.requests == 1

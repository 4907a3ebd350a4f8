"""The store's schema: numbered migrations, applied in order at start-up.

A migration is a list of SQL statements written once for both databases; ``{serial}`` and
``{float}`` stand for the column types that differ. The ``schema_version`` table holds the
number of the last migration applied. Never edit a released migration: add the next one.
"""

from __future__ import annotations

from collections.abc import Mapping

# Column types per dialect.
TYPES: Mapping[str, Mapping[str, str]] = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "float": "REAL"},
    "postgres": {"serial": "BIGSERIAL PRIMARY KEY", "float": "DOUBLE PRECISION"},
}

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: requests with their decision and outcome, attempts, feedback, sessions, state.
    (
        """CREATE TABLE requests (
            record_key TEXT PRIMARY KEY,
            request_id TEXT NOT NULL,
            unix_time {float} NOT NULL,
            method TEXT NOT NULL,
            tenant TEXT NOT NULL,
            session_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            tier_index INTEGER NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            score {float} NOT NULL,
            levels TEXT NOT NULL,
            rules TEXT NOT NULL,
            reason TEXT NOT NULL,
            model_version TEXT NOT NULL,
            hints TEXT NOT NULL,
            outcome TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd {float} NOT NULL,
            strongest_cost_usd {float} NOT NULL,
            answered_tier TEXT,
            answered_tier_index INTEGER,
            answered_model TEXT,
            finish_reason TEXT NOT NULL,
            escalations INTEGER NOT NULL,
            first_text_ms {float},
            duration_ms {float},
            prompt TEXT,
            messages TEXT
        )""",
        "CREATE INDEX requests_request_id ON requests (request_id)",
        "CREATE INDEX requests_time ON requests (unix_time)",
        "CREATE INDEX requests_tenant_time ON requests (tenant, unix_time)",
        """CREATE TABLE attempts (
            request_key TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            tier TEXT NOT NULL,
            tier_index INTEGER NOT NULL,
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT NOT NULL,
            first_token_ms {float},
            duration_ms {float} NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd {float} NOT NULL,
            gate TEXT NOT NULL,
            gate_reason TEXT NOT NULL,
            PRIMARY KEY (request_key, attempt)
        )""",
        """CREATE TABLE feedback (
            id {serial},
            request_id TEXT NOT NULL,
            unix_time {float} NOT NULL,
            tenant TEXT NOT NULL,
            rating {float} NOT NULL,
            comment TEXT NOT NULL,
            label TEXT NOT NULL
        )""",
        "CREATE INDEX feedback_request_id ON feedback (request_id)",
        "CREATE INDEX feedback_time ON feedback (unix_time)",
        """CREATE TABLE sessions (
            tenant TEXT NOT NULL,
            session_id TEXT NOT NULL,
            tier TEXT NOT NULL,
            tier_index INTEGER NOT NULL,
            unix_time {float} NOT NULL,
            PRIMARY KEY (tenant, session_id)
        )""",
        """CREATE TABLE state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            unix_time {float} NOT NULL
        )""",
    ),
    # 2: a rating is its tenant's: one that named no tenant (no API keys) takes the
    # tenant of the request it rated, which release 1 matched by id alone.
    (
        """UPDATE feedback SET tenant = (
            SELECT r.tenant FROM requests r WHERE r.request_id = feedback.request_id
            ORDER BY r.unix_time DESC LIMIT 1
        ) WHERE tenant = '' AND EXISTS (
            SELECT 1 FROM requests r WHERE r.request_id = feedback.request_id
        )""",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def statements(dialect: str, version: int) -> list[str]:
    """Return the statements of migration ``version`` (1-based) for a dialect."""
    types = TYPES[dialect]
    return [sql.format(**types) for sql in MIGRATIONS[version - 1]]

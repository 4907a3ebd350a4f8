"""A request as the ``requests`` table stores it: the columns in order, the values encoded.

Route builds its record straight into a ``RouteRow`` on the event loop: a tuple of strings
and numbers (which the collector stops tracking once it has seen it) holding the columns
whose value varies from Route to Route, ``ROUTE_COLUMNS``; the others are the same for
every Route (``ROUTE_CONSTANTS``) and are literals of the INSERT. The writer thread hands
the rows to the database as they are: Python in that thread holds the GIL the event loop
needs (measured in process, it cost the loop about as much again as it cost the thread),
and so does the driver while it binds a row's parameters, a third fewer without the
constants. A ``RequestRecord`` (Complete, with its attempts) becomes a whole row of
``REQUEST_COLUMNS`` in the writer thread (``request_row``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from router.store.records import RequestRecord, RequestRow

# The columns of a request row, in order (the migration creates them; this is the order
# of the INSERT).
REQUEST_COLUMNS: tuple[str, ...] = (
    "record_key",
    "request_id",
    "unix_time",
    "method",
    "tenant",
    "session_id",
    "tier",
    "tier_index",
    "model",
    "backend",
    "score",
    "levels",
    "rules",
    "reason",
    "model_version",
    "hints",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "cost_usd",
    "strongest_cost_usd",
    "answered_tier",
    "answered_tier_index",
    "answered_model",
    "finish_reason",
    "escalations",
    "first_text_ms",
    "duration_ms",
    "prompt",
    "messages",
)

# The columns every Route row has the same value in: written as literals of its INSERT.
ROUTE_CONSTANTS: dict[str, str | int | None] = {
    "method": "route",
    "outcome": "routed",  # the caller runs the model
    "completion_tokens": 0,
    "answered_tier": None,
    "answered_tier_index": None,
    "answered_model": None,
    "finish_reason": "",
    "escalations": 0,
    "first_text_ms": None,
    "duration_ms": None,
}
# The columns of a RouteRow, in order.
ROUTE_COLUMNS: tuple[str, ...] = tuple(c for c in REQUEST_COLUMNS if c not in ROUTE_CONSTANTS)

NO_RULES_JSON = "[]"
NO_HINTS_JSON = "{}"


def json_floats(values: Sequence[float]) -> str:
    """Return a JSON list of floats (repr is JSON for finite floats, and faster than dumps)."""
    return "[" + ",".join(map(repr, values)) + "]"


def json_rules(rules: Sequence[str]) -> str:
    """Return the fired rules' names as a JSON list (a constant for the usual none)."""
    return json.dumps(rules) if rules else NO_RULES_JSON


def json_hints(hints: Sequence[tuple[str, str]]) -> str:
    """Return the hints that were set, (name, tier) pairs, as a JSON object."""
    return json.dumps(dict(hints)) if hints else NO_HINTS_JSON


def json_messages(messages: Sequence[tuple[str, str]] | None) -> str | None:
    """Return the chat, (role, content) pairs, as a JSON list of pairs (None: not kept)."""
    return None if messages is None else json.dumps([list(m) for m in messages])


def request_row(r: RequestRecord) -> RequestRow:
    """Return a record's row, its values in REQUEST_COLUMNS order."""
    return (
        r.key,
        r.request_id,
        r.time,
        r.method,
        r.tenant,
        r.session_id,
        r.tier,
        r.tier_index,
        r.model,
        r.backend,
        r.score,
        json_floats(r.levels),
        json_rules(r.rules),
        r.reason,
        r.model_version,
        json_hints(r.hints),
        r.outcome,
        r.prompt_tokens,
        r.completion_tokens,
        r.cost_usd,
        r.strongest_cost_usd,
        r.answered_tier,
        r.answered_tier_index,
        r.answered_model,
        r.finish_reason,
        r.escalations,
        r.first_text_ms,
        r.duration_ms,
        r.prompt,
        json_messages(r.messages),
    )

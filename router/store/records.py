"""What the store keeps: one record per request, per rating and per session step.

The service builds these on the request path, so they are plain slotted dataclasses of
values it already has, encoded (JSON of the levels, rules and hints) in the store's writer
thread; except a Route's record, which is built as its ``RouteRow`` (``router.store.rows``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One Complete attempt at one tier."""

    index: int
    tier: str
    tier_index: int
    model: str
    backend: str
    # An AttemptOutcome value: "ok", "gate_rejected", "timeout", ...
    outcome: str
    detail: str
    # None when no token arrived.
    first_token_ms: float | None
    duration_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    # "off" (no gate), "passed", "rejected", or "not_held" (no stronger tier to climb to).
    gate: str
    gate_reason: str


# Not frozen: built on the request path, where a frozen dataclass's __init__ (one
# object.__setattr__ per field) costs twice as much, and a Complete's record is its
# decision's record with the outcome filled in. Nothing changes a record once queued.
@dataclass(slots=True)
class RequestRecord:
    """A request: who sent it, what was decided, and for Complete what happened."""

    # Unique per record across workers and restarts (a request id may be reused).
    key: str
    request_id: str
    time: float  # Unix seconds at the decision
    method: str  # "route" or "complete"
    tenant: str
    session_id: str
    # The decision.
    tier: str
    tier_index: int
    model: str
    backend: str
    score: float
    levels: tuple[float, ...]
    rules: tuple[str, ...]
    reason: str
    model_version: str
    hints: tuple[tuple[str, str], ...]  # (name, tier) for the hints that were set
    # "routed" (Route: the caller runs the model), "ok", "error" or "cancelled".
    outcome: str
    # Prompt tokens: Route's estimate, or the answering attempt's usage.
    prompt_tokens: int
    completion_tokens: int
    # What the request cost (every attempt), and what the same tokens would have cost on
    # the strongest tier. Route records the decision's estimate for the prompt.
    cost_usd: float
    strongest_cost_usd: float
    # The tier that answered (Complete), None when no tier did.
    answered_tier: str | None = None
    answered_tier_index: int | None = None
    answered_model: str | None = None
    finish_reason: str = ""
    escalations: int = 0
    first_text_ms: float | None = None
    duration_ms: float | None = None
    attempts: tuple[AttemptRecord, ...] = ()
    # Only with store.keep_text: the prompt (or the routed user turn) and the chat.
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A caller's rating of an answer, by its request id (known or not)."""

    request_id: str
    time: float
    tenant: str
    rating: float
    comment: str
    label: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A tier a session used: the session's floor rises to it, never falls."""

    tenant: str
    session_id: str
    tier: str
    tier_index: int
    time: float


@dataclass(frozen=True, slots=True)
class StateRecord:
    """A named piece of state (e.g. a tenant's cost controller), stored as JSON."""

    key: str
    value: Any
    time: float


# A request as the requests table stores it: one value per column of
# ``router.store.rows.REQUEST_COLUMNS``, in that order, the levels, rules, hints and messages
# as JSON text.
RequestRow = tuple[Any, ...]
# Route's record: its row without the columns every Route has the same value in, one value
# per column of ``router.store.rows.ROUTE_COLUMNS`` (one tuple per call, nothing for the
# writer thread to encode).
RouteRow = tuple[Any, ...]

Record = RequestRecord | RouteRow | FeedbackRecord | SessionRecord | StateRecord


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A stored request with its latest feedback, as ``Store.requests`` yields it."""

    request_id: str
    time: float
    method: str
    tenant: str
    session_id: str
    tier: str
    model: str
    score: float
    outcome: str
    answered_tier: str | None
    answered_model: str | None
    cost_usd: float
    strongest_cost_usd: float
    prompt: str | None
    messages: tuple[tuple[str, str], ...] | None
    # The latest rating of this request id, if any.
    rating: float | None
    comment: str | None
    label: str | None

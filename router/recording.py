"""Turn a served request into the store's record: the decision, and for Complete what ran.

Called on the request path. A Route's record is its row as the store writes it (one tuple
of the columns that vary from Route to Route; its levels as JSON text, rules and hints
almost always the empty constants), which leaves the writer thread no Python to run per
row; a Complete's record keeps references and numbers, and the writer thread encodes it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from router.domain import (
    Attempt,
    CompletionSummary,
    DecisionReason,
    RouteRequest,
    RoutingDecision,
    TierHints,
)
from router.store.records import AttemptRecord, RequestRecord, RouteRow
from router.store.rows import (
    NO_HINTS_JSON,
    json_floats,
    json_hints,
    json_messages,
    json_rules,
)

NO_HINTS: tuple[tuple[str, str], ...] = ()
# An Enum's .value is a Python-level property: a dictionary is a quarter of its cost.
_REASONS = {reason: reason.value for reason in DecisionReason}


def _hints(hints: TierHints) -> tuple[tuple[str, str], ...]:
    if not (hints.tier or hints.min_tier or hints.max_tier):
        return NO_HINTS
    return tuple(
        (name, value)
        for name, value in (
            ("tier", hints.tier),
            ("min_tier", hints.min_tier),
            ("max_tier", hints.max_tier),
        )
        if value
    )


def _text(
    request: RouteRequest, keep_text: bool
) -> tuple[str | None, tuple[tuple[str, str], ...] | None]:
    """Return the routed text and the chat, when the configuration keeps text."""
    if not keep_text:
        return None, None
    if not request.messages:
        return request.prompt, None
    last_user = next(m for m in reversed(request.messages) if m.role == "user")
    return last_user.content, tuple((m.role, m.content) for m in request.messages)


def route_row(
    key: str, request: RouteRequest, decision: RoutingDecision, *, keep_text: bool
) -> RouteRow:
    """Return the record of a Route, as its row: the decision, its cost estimated on the prompt.

    The values of ``router.store.rows.ROUTE_COLUMNS`` in order (the store writes the tuple
    as it is, with ``ROUTE_CONSTANTS`` for the other columns).
    """
    if keep_text:
        prompt, messages = _text(request, keep_text)
        chat = json_messages(messages)
    else:
        prompt = chat = None
    hints = request.hints
    return (
        key,
        decision.request_id,
        time.time(),
        request.tenant,
        request.session_id,
        decision.tier,
        decision.tier_index,
        decision.model,
        decision.backend,
        decision.score,
        json_floats(decision.levels),
        json_rules(decision.rules),
        _REASONS[decision.reason],
        decision.model_version,
        json_hints(_hints(hints))
        if hints.tier or hints.min_tier or hints.max_tier
        else NO_HINTS_JSON,
        decision.estimated_prompt_tokens,
        decision.estimated_cost_usd,
        decision.strongest_tier_cost_usd,
        prompt,
        chat,
    )


def _attempt(attempt: Attempt, tier_index: Mapping[str, int]) -> AttemptRecord:
    gate = attempt.gate
    return AttemptRecord(
        index=attempt.index,
        tier=attempt.tier,
        tier_index=tier_index.get(attempt.tier, -1),
        model=attempt.model,
        backend=attempt.backend,
        outcome=attempt.outcome.value,
        detail=attempt.detail,
        first_token_ms=attempt.first_token_ms or None,
        duration_ms=attempt.duration_ms,
        prompt_tokens=attempt.prompt_tokens,
        completion_tokens=attempt.completion_tokens,
        cost_usd=attempt.cost_usd,
        gate="off" if not gate.enabled else "passed" if gate.passed else "rejected",
        gate_reason=gate.reason,
    )


def complete_record(
    key: str,
    request: RouteRequest,
    decision: RoutingDecision,
    summary: CompletionSummary | None,
    attempts: Sequence[Attempt],
    *,
    outcome: str,
    escalations: int,
    started: float,
    duration_ms: float,
    tier_index: Mapping[str, int],
    keep_text: bool,
) -> RequestRecord:
    """Return the record of a Complete: the decision, every attempt and what answered.

    ``summary`` is None when no tier answered (``outcome`` "error" or "cancelled"); the
    cost is then that of the failed attempts, against nothing delivered. ``started`` is
    the Unix time of the decision.
    """
    if summary is not None:
        attempts = summary.attempts
        prompt_tokens = summary.usage.prompt_tokens
        completion_tokens = summary.usage.completion_tokens
        cost_usd = summary.cost_usd
        strongest_cost_usd = summary.strongest_tier_cost_usd
    else:
        prompt_tokens = sum(a.prompt_tokens for a in attempts)
        completion_tokens = sum(a.completion_tokens for a in attempts)
        cost_usd = sum(a.cost_usd for a in attempts)
        strongest_cost_usd = 0.0
    prompt, messages = _text(request, keep_text)
    return RequestRecord(
        key=key,
        request_id=decision.request_id,
        time=started,
        method="complete",
        tenant=request.tenant,
        session_id=request.session_id,
        tier=decision.tier,
        tier_index=decision.tier_index,
        model=decision.model,
        backend=decision.backend,
        score=decision.score,
        levels=decision.levels,
        rules=decision.rules,
        reason=decision.reason.value,
        model_version=decision.model_version,
        hints=_hints(request.hints),
        outcome=outcome,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
        strongest_cost_usd=strongest_cost_usd,
        answered_tier=None if summary is None else summary.tier,
        answered_tier_index=None if summary is None else summary.tier_index,
        answered_model=None if summary is None else summary.model,
        finish_reason="" if summary is None else summary.finish_reason,
        escalations=escalations,
        first_text_ms=summary.first_text_ms if summary and summary.delivered_chars else None,
        duration_ms=duration_ms,
        attempts=tuple(_attempt(a, tier_index) for a in attempts),
        prompt=prompt,
        messages=messages,
    )

"""Turn a served request into the store's record: the decision, and for Complete what ran.

Called on the request path, so it copies references and numbers only; the store's writer
thread does the encoding.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from router.domain import (
    Attempt,
    CompletionSummary,
    RouteRequest,
    RoutingDecision,
    TierHints,
)
from router.store.records import AttemptRecord, RequestRecord

NO_HINTS: tuple[tuple[str, str], ...] = ()


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


def route_record(
    key: str, request: RouteRequest, decision: RoutingDecision, *, keep_text: bool
) -> RequestRecord:
    """Return the record of a Route: the decision, its cost estimated on the prompt."""
    prompt, messages = _text(request, keep_text)
    return RequestRecord(
        key=key,
        request_id=decision.request_id,
        time=time.time(),
        method="route",
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
        outcome="routed",
        prompt_tokens=decision.estimated_prompt_tokens,
        completion_tokens=0,
        cost_usd=decision.estimated_cost_usd,
        strongest_cost_usd=decision.strongest_tier_cost_usd,
        prompt=prompt,
        messages=messages,
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
    the Unix time of the decision. It is the decision's record with the outcome filled in.
    """
    record = route_record(key, request, decision, keep_text=keep_text)
    if summary is not None:
        attempts = summary.attempts
        record.prompt_tokens = summary.usage.prompt_tokens
        record.completion_tokens = summary.usage.completion_tokens
        record.cost_usd = summary.cost_usd
        record.strongest_cost_usd = summary.strongest_tier_cost_usd
        record.answered_tier = summary.tier
        record.answered_tier_index = summary.tier_index
        record.answered_model = summary.model
        record.finish_reason = summary.finish_reason
        if summary.delivered_chars:
            record.first_text_ms = summary.first_text_ms
    else:
        record.prompt_tokens = sum(a.prompt_tokens for a in attempts)
        record.completion_tokens = sum(a.completion_tokens for a in attempts)
        record.cost_usd = sum(a.cost_usd for a in attempts)
        record.strongest_cost_usd = 0.0
    record.time = started
    record.method = "complete"
    record.outcome = outcome
    record.escalations = escalations
    record.duration_ms = duration_ms
    record.attempts = tuple(_attempt(a, tier_index) for a in attempts)
    return record

"""Span attributes of a decision and of a Complete attempt (no OpenTelemetry import needed).

The attempt spans use OpenTelemetry's GenAI semantic conventions where one applies
(``gen_ai.operation.name``, ``gen_ai.provider.name`` and the older ``gen_ai.system``,
``gen_ai.request.model``, ``gen_ai.request.max_tokens``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``); what is the router's own goes under ``modelrouter.``.
"""

from __future__ import annotations

from collections.abc import Sequence

from router.domain import Attempt, AttemptOutcome, RoutingDecision

AttributeValue = str | bool | int | float | Sequence[str]


def decision_attributes(decision: RoutingDecision) -> dict[str, AttributeValue]:
    """Return the attributes a Route (or Complete) span gets from its decision."""
    return {
        "modelrouter.request_id": decision.request_id,
        "modelrouter.tier": decision.tier,
        "modelrouter.tier_index": decision.tier_index,
        "modelrouter.score": decision.score,
        "modelrouter.reason": decision.reason.value,
        "modelrouter.model_version": decision.model_version,
        "modelrouter.decision_micros": decision.decision_micros,
    }


def attempt_attributes(attempt: Attempt, provider: str) -> dict[str, AttributeValue]:
    """Return the attributes of an attempt's span, from its record in the summary."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": attempt.model,
        "gen_ai.usage.input_tokens": attempt.prompt_tokens,
        "gen_ai.usage.output_tokens": attempt.completion_tokens,
        "modelrouter.attempt": attempt.index,
        "modelrouter.tier": attempt.tier,
        "modelrouter.backend": attempt.backend,
        "modelrouter.outcome": attempt.outcome.value,
        "modelrouter.duration_ms": attempt.duration_ms,
        "modelrouter.cost_usd": attempt.cost_usd,
    }
    if attempt.first_token_ms:
        attributes["modelrouter.time_to_first_token_ms"] = attempt.first_token_ms
    if attempt.gate.enabled:
        attributes["modelrouter.gate.passed"] = attempt.gate.passed
    return attributes


def attempt_failed(attempt: Attempt) -> str | None:
    """Return the error status text of an attempt that failed (None when it did not)."""
    if attempt.outcome in (AttemptOutcome.OK, AttemptOutcome.GATE_REJECTED):
        return None
    # The outcome, not the detail: upstream error text stays out of the trace.
    outcome: str = attempt.outcome.value
    return outcome

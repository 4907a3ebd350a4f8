"""Convert between protobuf messages and the domain types; the only module that knows both."""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any, TypeVar

from google.protobuf.message import Message

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import TenantLimitsConfig
from router.controller import Snapshot
from router.domain import (
    Attempt,
    AttemptOutcome,
    ChatMessage,
    CircuitState,
    CompleteEvent,
    CompleteRequest,
    CompletionSummary,
    DecisionReason,
    Escalation,
    Feedback,
    FeedbackResult,
    GateReport,
    GenerationOptions,
    InvalidRequest,
    RouteFailure,
    RouteRequest,
    RoutingDecision,
    TextDelta,
    TierHints,
)
from router.service_reports import ServiceInfo, ServiceStats, StoreStatus
from router.store import Stats, TierStats
from router.store.stats import ControllerStats

_Row = TypeVar("_Row", TierStats, StoreStatus, ControllerStats)
_NO_METADATA: MappingProxyType[str, str] = MappingProxyType({})
_NO_HINTS = TierHints()
_NO_GENERATION = GenerationOptions()

_REASONS = {
    DecisionReason.SCORE: pb.DECISION_REASON_SCORE,
    DecisionReason.MIN_TIER: pb.DECISION_REASON_MIN_TIER,
    DecisionReason.MAX_TIER: pb.DECISION_REASON_MAX_TIER,
    DecisionReason.FORCED: pb.DECISION_REASON_FORCED,
    DecisionReason.MARGIN: pb.DECISION_REASON_MARGIN,
    DecisionReason.SESSION_FLOOR: pb.DECISION_REASON_SESSION_FLOOR,
}
# The proto enums mirror the domain's by name.
_OUTCOMES: dict[AttemptOutcome, pb.AttemptOutcome] = {
    outcome: getattr(pb, f"ATTEMPT_OUTCOME_{outcome.name}") for outcome in AttemptOutcome
}
_CIRCUITS: dict[CircuitState, pb.CircuitState] = {
    state: getattr(pb, f"CIRCUIT_STATE_{state.name}") for state in CircuitState
}


def route_request(message: pb.RouteRequest, request_id: str, tenant: str) -> RouteRequest:
    """Return the domain request of a RouteRequest, under the request id and tenant resolved."""
    # Positional, and no generator for the usual request without messages, metadata or
    # hints: this runs on every Route.
    messages = message.messages
    return RouteRequest(
        message.prompt,
        tuple([ChatMessage(m.role, m.content) for m in messages]) if messages else (),
        request_id,
        tenant,
        dict(message.metadata) if message.metadata else _NO_METADATA,
        (
            TierHints(message.hints.min_tier, message.hints.max_tier, message.hints.tier)
            if message.HasField("hints")
            else _NO_HINTS
        ),
        session_id=message.session_id,
    )


def complete_request(
    message: pb.CompleteRequest, request_id: str, tenant: str, deadline: float | None = None
) -> CompleteRequest:
    """Return the domain request of a CompleteRequest (``deadline`` on ``time.monotonic()``)."""
    generation = _NO_GENERATION
    if message.HasField("generation"):
        g = message.generation
        generation = GenerationOptions(
            max_tokens=g.max_tokens,
            temperature=g.temperature if g.HasField("temperature") else None,
            stop=tuple(g.stop),
        )
    return CompleteRequest(route_request(message.route, request_id, tenant), generation, deadline)


def feedback(message: pb.FeedbackRequest, tenant: str) -> Feedback:
    """Return the domain feedback of a FeedbackRequest, under the tenant resolved."""
    return Feedback(message.request_id, message.rating, message.comment, tenant, message.label)


def feedback_response(result: FeedbackResult) -> pb.FeedbackResponse:
    """Return the protobuf of what Feedback did with a rating."""
    return pb.FeedbackResponse(known_request=result.known_request, stored=result.stored)


def stats_query(message: pb.GetStatsRequest) -> tuple[float | None, str | None]:
    """Return the time and tenant a GetStatsRequest asks for (None: no limit)."""
    since = message.since_unix_seconds
    # NaN compares false with every stored time: it would count nothing, silently.
    if not math.isfinite(since):
        raise InvalidRequest(
            "since_unix_seconds", f"{since} is not a finite number of Unix seconds"
        )
    return since or None, message.tenant if message.HasField("tenant") else None


def _values(row: Any) -> dict[str, Any]:
    """Return a dataclass's fields by name (the stats messages mirror them by name)."""
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


def _read(message: Message, name: str) -> Any:
    """Return a field's value, None for an optional one that is not set."""
    field = message.DESCRIPTOR.fields_by_name[name]
    return getattr(message, name) if not field.has_presence or message.HasField(name) else None


def stats_response(report: ServiceStats) -> pb.GetStatsResponse:
    """Return the GetStats answer."""
    stats = report.stats
    return pb.GetStatsResponse(
        tiers=[pb.TierStats(**_values(row)) for row in stats.tiers],
        total=pb.TierStats(**_values(stats.total)),
        satisfied_at=stats.satisfied_at,
        unmatched_feedback=stats.unmatched_feedback,
        store=pb.StoreStatus(**_values(report.store)),
        controllers=[pb.TenantController(**_values(row)) for row in stats.controllers],
    )


def fill_decision(target: pb.RoutingDecision, d: RoutingDecision) -> None:
    """Write a routing decision into an empty RoutingDecision message (a response's own)."""
    # Field by field into the response's own submessage: half the cost of building a
    # RoutingDecision from keywords and copying it into the response.
    target.request_id = d.request_id
    target.tier = d.tier
    target.tier_index = d.tier_index
    target.model = d.model
    target.backend = d.backend
    target.score = d.score
    target.level_probabilities.extend(d.levels)
    if d.rules:
        target.rules.extend(d.rules)
    target.reason = _REASONS[d.reason]
    target.estimated_prompt_tokens = d.estimated_prompt_tokens
    target.estimated_cost_usd = d.estimated_cost_usd
    target.strongest_tier_cost_usd = d.strongest_tier_cost_usd
    target.model_version = d.model_version
    target.decision_micros = d.decision_micros


def fill_route_error(target: pb.RouteError, failure: RouteFailure, code: int) -> None:
    """Write why one request of a batch got no decision (``code``: its gRPC status number)."""
    target.code = code
    target.message = str(failure.error)
    target.request_id = failure.request_id


def decision(d: RoutingDecision) -> pb.RoutingDecision:
    """Return the protobuf of a routing decision."""
    message = pb.RoutingDecision()
    fill_decision(message, d)
    return message


def route_response(d: RoutingDecision) -> pb.RouteResponse:
    """Return the Route answer of a routing decision."""
    response = pb.RouteResponse()
    fill_decision(response.decision, d)
    return response


def gate(g: GateReport) -> pb.GateReport:
    """Return the protobuf of a gate report."""
    return pb.GateReport(
        enabled=g.enabled,
        held_tokens=g.held_tokens,
        held_ms=g.held_ms,
        mean_logprob=g.mean_logprob,
        low_logprob_share=g.low_logprob_share,
        passed=g.passed,
        reason=g.reason,
        window_tokens=g.window_tokens,
        window_ms=g.window_ms,
        min_mean_logprob=g.min_mean_logprob,
        max_low_logprob_share=g.max_low_logprob_share,
    )


def attempt(a: Attempt) -> pb.Attempt:
    """Return the protobuf of one attempt."""
    return pb.Attempt(
        index=a.index,
        tier=a.tier,
        model=a.model,
        backend=a.backend,
        outcome=_OUTCOMES[a.outcome],
        detail=a.detail,
        duration_ms=a.duration_ms,
        first_token_ms=a.first_token_ms,
        prompt_tokens=a.prompt_tokens,
        completion_tokens=a.completion_tokens,
        cost_usd=a.cost_usd,
        gate=gate(a.gate),
    )


def summary(s: CompletionSummary) -> pb.CompletionSummary:
    """Return the protobuf of a completion summary."""
    return pb.CompletionSummary(
        tier=s.tier,
        tier_index=s.tier_index,
        model=s.model,
        backend=s.backend,
        usage=pb.Usage(
            prompt_tokens=s.usage.prompt_tokens,
            completion_tokens=s.usage.completion_tokens,
            reported_by_backend=s.usage.reported_by_backend,
        ),
        cost_usd=s.cost_usd,
        strongest_tier_cost_usd=s.strongest_tier_cost_usd,
        finish_reason=s.finish_reason,
        attempts=[attempt(a) for a in s.attempts],
        delivered_chars=s.delivered_chars,
        duration_ms=s.duration_ms,
        first_text_ms=s.first_text_ms,
    )


def event(e: CompleteEvent) -> pb.CompleteEvent:
    """Return the protobuf of one Complete event."""
    if isinstance(e, TextDelta):
        return pb.CompleteEvent(delta=pb.TextDelta(text=e.text))
    if isinstance(e, RoutingDecision):
        message = pb.CompleteEvent()
        fill_decision(message.decision, e)
        return message
    if isinstance(e, Escalation):
        return pb.CompleteEvent(
            escalation=pb.Escalation(
                from_tier=e.from_tier, to_tier=e.to_tier, attempt=attempt(e.attempt)
            )
        )
    return pb.CompleteEvent(summary=summary(e))


def config_response(info: ServiceInfo) -> pb.GetConfigResponse:
    """Return the GetConfig answer for the configuration in force."""
    config = info.config
    tiers = []
    for i, tier in enumerate(config.tiers):
        g = tier.gate
        tiers.append(
            pb.TierConfig(
                name=tier.name,
                index=i,
                model=tier.model,
                backend=tier.backend,
                input_price_per_mtok=tier.price.input_per_mtok,
                output_price_per_mtok=tier.price.output_per_mtok,
                min_score=info.thresholds[i - 1] if i else 0.0,
                escalation_margin=info.margins[i - 1] if i else 0.0,
                gate=(
                    pb.GateReport(
                        enabled=True,
                        window_tokens=g.window_tokens,
                        window_ms=g.window_ms,
                        min_mean_logprob=g.min_mean_logprob,
                        max_low_logprob_share=g.max_low_logprob_share,
                    )
                    if g is not None
                    else pb.GateReport(enabled=False)
                ),
            )
        )
    return pb.GetConfigResponse(
        tiers=tiers,
        model_version=info.model_version,
        model_source=info.model_source,
        escalation_margin=config.routing.escalation_margin,
        max_attempts=config.completion.max_attempts,
        backends=[
            pb.BackendStatus(
                name=b.name,
                kind=b.kind,
                circuit=_CIRCUITS[b.circuit],
                recent_failures=b.recent_failures,
                open_seconds_left=b.open_seconds_left,
            )
            for b in info.backends
        ],
        fastpath=info.fastpath,
        max_prompt_bytes=config.server.max_prompt_bytes,
        max_concurrent_rpcs=config.server.max_concurrent_rpcs,
        # serve() resolves 0 (one per core); a server built in-process is one process.
        workers=config.server.workers or 1,
        controllers=[controller(c) for c in info.controllers],
        tenant_limits=[
            tenant_limits(tenant, config.tenants[tenant].limits)
            for tenant in sorted(config.tenants)
            if config.tenants[tenant].limits.any
        ],
        limits_counted_in="redis" if config.limits.redis_url else "process",
        replica_id=info.replica_id,
        worker_index=info.worker_index,
    )


def tenant_limits(tenant: str, limits: TenantLimitsConfig) -> pb.TenantLimits:
    """Return a tenant's configured limits as GetConfig reports them (unset ones absent)."""
    return pb.TenantLimits(
        tenant=tenant,
        requests_per_s=limits.requests_per_s,
        burst=limits.burst_in_force,
        tokens_per_minute=limits.tokens_per_minute,
        usd_per_day=limits.usd_per_day,
        usd_per_month=limits.usd_per_month,
    )


def controller(snapshot: Snapshot) -> pb.TenantController:
    """Return a tenant controller's state as GetConfig reports it: GetStats's fields, and
    this process's share of the tenant's requests and the target's value it aims at."""
    return pb.TenantController(
        **_values(snapshot.as_stats()), share=snapshot.share, aim=snapshot.aim
    )


def _dataclass_of(kind: type[_Row], message: Message) -> _Row:
    """Return the dataclass a stats message mirrors field by field."""
    return kind(**{f.name: _read(message, f.name) for f in dataclasses.fields(kind)})


def stats_of(message: pb.GetStatsResponse) -> ServiceStats:
    """Return the domain stats of a GetStats answer (for ``modelrouter stats --target``)."""
    return ServiceStats(
        stats=Stats(
            tiers=tuple(_dataclass_of(TierStats, row) for row in message.tiers),
            total=_dataclass_of(TierStats, message.total),
            satisfied_at=message.satisfied_at,
            unmatched_feedback=message.unmatched_feedback,
            controllers=tuple(
                dataclasses.replace(row, thresholds=tuple(row.thresholds))
                for row in (_dataclass_of(ControllerStats, c) for c in message.controllers)
            ),
        ),
        store=_dataclass_of(StoreStatus, message.store),
    )

"""Protobuf <-> domain conversion: every enum value maps, optional fields stay optional."""

from __future__ import annotations

import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.controller import Pricing, Settings, Target, TargetKind, TenantController
from router.domain import (
    AttemptOutcome,
    ChatMessage,
    CircuitState,
    DecisionReason,
    GateReport,
    InvalidRequest,
    RoutingDecision,
    TierHints,
)
from router.server import convert


def test_every_domain_enum_has_its_proto_value() -> None:
    assert len(convert._OUTCOMES) == len(AttemptOutcome) == len(pb.AttemptOutcome.keys()) - 1
    assert len(convert._CIRCUITS) == len(CircuitState) == len(pb.CircuitState.keys()) - 1
    assert len(convert._REASONS) == len(DecisionReason) == len(pb.DecisionReason.keys()) - 1
    assert convert._OUTCOMES[AttemptOutcome.GATE_REJECTED] == pb.ATTEMPT_OUTCOME_GATE_REJECTED


def test_request_conversion_keeps_unset_fields_unset() -> None:
    message = pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", metadata={"a": "b"}))
    request = convert.complete_request(message, "rid", "")
    assert request.route.request_id == "rid"
    assert dict(request.route.metadata) == {"a": "b"}
    assert request.generation.temperature is None
    message.generation.temperature = 0.0
    assert convert.complete_request(message, "rid", "").generation.temperature == 0.0


def test_gate_report_optional_logprobs() -> None:
    absent = convert.gate(GateReport(enabled=True))
    assert not absent.HasField("mean_logprob")
    present = convert.gate(GateReport(enabled=True, mean_logprob=-0.5, low_logprob_share=0.0))
    assert present.mean_logprob == -0.5 and present.HasField("low_logprob_share")


def test_a_decision_fills_every_field_of_its_message() -> None:
    decision = RoutingDecision(
        request_id="r-1",
        tier="strong",
        tier_index=1,
        model="gpt",
        backend="openai",
        score=0.625,
        levels=(0.1, 0.2, 0.3, 0.25, 0.15),
        rules=("code", "legal"),
        reason=DecisionReason.MARGIN,
        estimated_prompt_tokens=12,
        estimated_cost_usd=3e-5,
        strongest_tier_cost_usd=1.8e-4,
        model_version="default-abc",
        decision_micros=4.5,
    )
    response = convert.route_response(decision)
    event = convert.event(decision)
    assert response.decision == event.decision == convert.decision(decision)
    # Every field of the message set, each to the decision's value.
    filled = {field.name: value for field, value in response.decision.ListFields()}
    assert set(filled) == {field.name for field in pb.RoutingDecision.DESCRIPTOR.fields}
    assert filled["level_probabilities"] == list(decision.levels)
    assert filled["rules"] == list(decision.rules)
    assert filled["reason"] == pb.DECISION_REASON_MARGIN
    assert filled["request_id"] == "r-1" and filled["decision_micros"] == 4.5


def test_route_request_conversion_reads_every_part() -> None:
    message = pb.RouteRequest(
        messages=[pb.Message(role="user", content="hi")],
        tenant="t",
        metadata={"k": "v"},
        hints=pb.TierHints(min_tier="strong"),
    )
    request = convert.route_request(message, "rid", "t")
    assert request.messages == (ChatMessage("user", "hi"),)
    assert (request.tenant, request.request_id, dict(request.metadata)) == ("t", "rid", {"k": "v"})
    assert request.hints == TierHints(min_tier="strong")
    bare = convert.route_request(pb.RouteRequest(prompt="hi"), "rid", "")
    assert (bare.prompt, bare.messages, bare.hints) == ("hi", (), TierHints())
    assert dict(bare.metadata) == {}


def tenant_controller(kind: TargetKind, value: float, share: float) -> TenantController:
    pricing = Pricing(
        thresholds=(0.4, 0.8),
        margins=(0.0, 0.0),
        input_price=(1e-7, 1e-6, 1e-5),
        output_price=(2e-7, 2e-6, 2e-5),
        model_version="m-1",
    )
    c = TenantController("acme", Target(kind, value), Settings(), pricing, clock=lambda: 1_000.0)
    c.share = share  # as ControllerStore.refresh_shares sets it in a worker
    return c


def test_get_config_reports_a_worker_share_and_the_spend_it_aims_at() -> None:
    spend = convert.controller(tenant_controller("usd_per_hour", 8.0, 0.25).snapshot())
    assert (spend.target, spend.share) == (8.0, 0.25)
    assert spend.aim == pytest.approx(2.0)
    # A share target is aimed at as it is, whatever share a reload carried over to it.
    share = convert.controller(tenant_controller("strong_share", 0.3, 0.25).snapshot())
    assert (share.target, share.share, share.aim) == (0.3, 1.0, 0.3)
    # GetStats reports the controller without them.
    stats = pb.TenantController(
        **convert._values(tenant_controller("usd_per_hour", 8.0, 0.25).snapshot().as_stats())
    )
    assert not stats.HasField("share") and not stats.HasField("aim")


@pytest.mark.parametrize("since", [float("nan"), float("inf"), float("-inf")])
def test_stats_query_rejects_a_since_that_is_not_a_time(since: float) -> None:
    with pytest.raises(InvalidRequest, match=r"^since_unix_seconds: ") as caught:
        convert.stats_query(pb.GetStatsRequest(since_unix_seconds=since))
    assert caught.value.field == "since_unix_seconds"


@pytest.mark.parametrize(
    ("since", "expected"), [(0.0, None), (1_700_000_000.5, 1_700_000_000.5), (-60.0, -60.0)]
)
def test_stats_query_reads_since_as_a_time_and_zero_as_no_limit(
    since: float, expected: float | None
) -> None:
    # A time before 1970 is still a time: it counts every stored request, as 0 does.
    assert convert.stats_query(pb.GetStatsRequest(since_unix_seconds=since)) == (expected, None)

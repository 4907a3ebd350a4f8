"""Protobuf <-> domain conversion: every enum value maps, optional fields stay optional."""

from __future__ import annotations

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.domain import AttemptOutcome, CircuitState, DecisionReason, GateReport
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

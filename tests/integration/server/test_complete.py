"""Complete round trips against the demo backend over a real gRPC server."""

from __future__ import annotations

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.backends.demo import canned_tokens


async def collect(call: grpc.aio.UnaryStreamCall) -> list[pb.CompleteEvent]:  # type: ignore[type-arg]
    return [event async for event in call]


@pytest.mark.parametrize(
    "route",
    [
        pb.RouteRequest(prompt="What are your business hours?", request_id="c-1"),
        pb.RouteRequest(
            messages=[
                pb.Message(role="system", content="Answer briefly."),
                pb.Message(role="user", content="What are your business hours?"),
            ],
            request_id="c-1",
        ),
    ],
    ids=["prompt", "messages"],
)
async def test_complete_streams_decision_text_and_summary(
    stub: router_pb2_grpc.ModelRouterStub, route: pb.RouteRequest
) -> None:
    call = stub.Complete(
        pb.CompleteRequest(route=route, generation=pb.GenerationOptions(stop=["zz"]))
    )
    events = await collect(call)
    assert dict(await call.initial_metadata())["x-request-id"] == "c-1"
    assert await call.code() == grpc.StatusCode.OK
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "decision" and kinds[-1] == "summary"
    assert set(kinds[1:-1]) == {"delta"}
    decision, summary = events[0].decision, events[-1].summary
    assert decision.request_id == "c-1"
    text = "".join(e.delta.text for e in events[1:-1])
    assert text == "".join(canned_tokens(decision.model))
    assert text.startswith("[modelrouter demo backend]")
    assert (summary.tier, summary.tier_index, summary.model) == (
        decision.tier,
        decision.tier_index,
        decision.model,
    )
    assert summary.finish_reason == "stop"
    assert summary.delivered_chars == len(text)
    assert summary.usage.completion_tokens == len(canned_tokens(decision.model))
    assert [(a.tier, a.outcome) for a in summary.attempts] == [
        (decision.tier, pb.ATTEMPT_OUTCOME_OK)
    ]
    assert summary.cost_usd > 0 and summary.strongest_tier_cost_usd >= summary.cost_usd


async def test_complete_max_tokens_truncates(stub: router_pb2_grpc.ModelRouterStub) -> None:
    request = pb.CompleteRequest(
        route=pb.RouteRequest(prompt="hello", hints=pb.TierHints(tier="strong")),
        generation=pb.GenerationOptions(max_tokens=3),
    )
    events = await collect(stub.Complete(request))
    deltas = [e.delta.text for e in events if e.WhichOneof("event") == "delta"]
    assert deltas == canned_tokens("demo-strong")[:3]
    assert events[-1].summary.finish_reason == "length"
    assert events[-1].summary.tier == "strong"

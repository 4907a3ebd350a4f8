"""RouteBatch over gRPC: Route's answer for each request, in order, errors in their places."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.config import Config
from router.server import RunningServer
from router.telemetry import metrics
from router.validation import MAX_BATCH_REQUESTS
from tests.integration.server.support import SERVICE, router_stub

# Valid and invalid requests mixed: each must get what Route gives it.
REQUESTS = [
    pb.RouteRequest(prompt="What are your business hours?", request_id="batch-0"),
    pb.RouteRequest(prompt="   "),
    pb.RouteRequest(prompt="Review this contract clause for compliance issues", tenant="acme"),
    pb.RouteRequest(prompt="hi", request_id="has a space"),
    pb.RouteRequest(messages=[pb.Message(role="robot", content="beep")]),
    pb.RouteRequest(
        messages=[
            pb.Message(role="system", content="Be brief."),
            pb.Message(role="user", content="Compare plan A vs plan B for my usage pattern"),
        ],
        hints=pb.TierHints(min_tier="strong"),
    ),
    pb.RouteRequest(prompt="x", hints=pb.TierHints(tier="nonexistent")),
    pb.RouteRequest(prompt="Prove that the square root of 2 is irrational", tenant="t" * 129),
    pb.RouteRequest(prompt="Solve 3x + 5 = 20", metadata={"source": "batch"}),
]


def trailer(call_or_error: Any, metadata: Any = None) -> str:
    found = dict(metadata if metadata is not None else call_or_error.trailing_metadata() or ())
    return str(found["x-request-id"])


async def route_one(
    stub: router_pb2_grpc.ModelRouterStub, request: pb.RouteRequest
) -> pb.RoutingDecision | tuple[int, str]:
    """Return Route's decision for a request, or its status code number and message."""
    try:
        reply: pb.RouteResponse = await stub.Route(request)
        return reply.decision
    except grpc.aio.AioRpcError as exc:
        return exc.code().value[0], exc.details() or ""


def without_own_fields(decision: pb.RoutingDecision) -> pb.RoutingDecision:
    """Return a copy without what differs between two calls (generated id, timing)."""
    copy = pb.RoutingDecision()
    copy.CopyFrom(decision)
    copy.ClearField("decision_micros")
    if not decision.request_id.startswith("batch-"):
        copy.ClearField("request_id")
    return copy


async def test_each_request_gets_what_route_gives_it_in_order(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    server: RunningServer = await start_server(make_config())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with structlog.testing.capture_logs() as logs:
            call = stub.RouteBatch(pb.RouteBatchRequest(requests=REQUESTS))
            response = await call
        batch_id = trailer(None, await call.trailing_metadata())
        expected = [await route_one(stub, request) for request in REQUESTS]

    assert len(response.results) == len(REQUESTS)
    seen_ids = set()
    for request, result, want in zip(REQUESTS, response.results, expected, strict=True):
        if isinstance(want, tuple):
            assert result.WhichOneof("result") == "error", request
            assert (result.error.code, result.error.message) == want
            assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request_id = result.error.request_id
        else:
            assert result.WhichOneof("result") == "decision", request
            assert without_own_fields(result.decision) == without_own_fields(want)
            request_id = result.decision.request_id
        # The caller's id when it was valid, a fresh one otherwise; never the batch's.
        if request.request_id == "batch-0":
            assert request_id == "batch-0"
        else:
            assert request_id and request_id != request.request_id
        seen_ids.add(request_id)
    assert len(seen_ids) == len(REQUESTS) and batch_id not in seen_ids

    [line] = [e for e in logs if e["event"] == "rpc"]
    assert line["method"] == "RouteBatch" and line["status"] == "OK"
    assert line["request_id"] == batch_id
    errors = sum(1 for w in expected if isinstance(w, tuple))
    assert (line["items"], line["item_errors"]) == (len(REQUESTS), errors)

    current = metrics.current()
    assert current is not None
    current.flush(server.interceptor.in_flight, server.service.info().model_version, [])
    handled = registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "RouteBatch",
         "grpc_code": "OK"},
    )  # fmt: skip
    assert handled == 1
    items = "modelrouter_route_batch_items_total"
    assert registry.get_sample_value(items, {"grpc_code": "OK"}) == len(REQUESTS) - errors
    assert registry.get_sample_value(items, {"grpc_code": "INVALID_ARGUMENT"}) == errors
    # Decisions are counted per tier for the batch's requests and the Route calls alike.
    decided = sum(
        registry.get_sample_value("modelrouter_route_decisions_total", {"tier": tier}) or 0
        for tier in ("cheap", "strong", "expert")
    )
    assert decided == 2 * (len(REQUESTS) - errors)


async def test_a_batch_request_id_can_be_rated(stub: router_pb2_grpc.ModelRouterStub) -> None:
    response = await stub.RouteBatch(
        pb.RouteBatchRequest(requests=[pb.RouteRequest(prompt="hello"), REQUESTS[0]])
    )
    for result in response.results:
        rated = await stub.Feedback(
            pb.FeedbackRequest(request_id=result.decision.request_id, rating=1.0)
        )
        assert rated.known_request


async def test_an_empty_batch_gets_an_empty_answer(stub: router_pb2_grpc.ModelRouterStub) -> None:
    assert list((await stub.RouteBatch(pb.RouteBatchRequest())).results) == []


async def test_more_than_the_limit_fails_the_batch_naming_the_field(
    stub: router_pb2_grpc.ModelRouterStub,
) -> None:
    requests = [pb.RouteRequest(prompt="hi")] * (MAX_BATCH_REQUESTS + 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RouteBatch(pb.RouteBatchRequest(requests=requests))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        f"requests: {MAX_BATCH_REQUESTS + 1} requests, over the limit of {MAX_BATCH_REQUESTS}"
    )
    assert trailer(caught.value)
    full = await stub.RouteBatch(pb.RouteBatchRequest(requests=requests[:MAX_BATCH_REQUESTS]))
    assert len(full.results) == MAX_BATCH_REQUESTS
    assert all(r.WhichOneof("result") == "decision" for r in full.results)

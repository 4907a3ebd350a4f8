"""gRPC metrics counted by the interceptor, the servicer and the engine; the log line's sampling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import Config
from router.server import RunningServer
from router.telemetry import metrics
from tests.integration.server.support import SERVICE, router_stub

# The cheap tier on a port where nothing listens: a request forced onto it escalates.
DOWN = {"down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}}


def escalating(make_config: Callable[..., Config]) -> Config:
    """Return a configuration whose cheap tier is down (the other two on the demo backend)."""
    tiers = make_config().model_dump()["tiers"]
    tiers[0]["backend"] = "down"
    backends = {**DOWN, "demo": {"kind": "demo"}}
    return make_config(tiers=tiers, backends=backends, **{"logging": {"rpc_sample": 0.0}})


def flush(server: RunningServer) -> None:
    current = metrics.current()
    assert current is not None
    current.flush(server.interceptor.in_flight, server.service.info().model_version, [])


def grpc_value(registry: CollectorRegistry, name: str, method: str, **labels: str) -> float | None:
    kind = "server_stream" if method == "Complete" else "unary"
    service = labels.pop("service", SERVICE)
    return registry.get_sample_value(
        name, {"grpc_type": kind, "grpc_service": service, "grpc_method": method, **labels}
    )


async def test_rpcs_counted_by_method_and_code_and_sampled_logs(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    server = await start_server(escalating(make_config))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                await stub.Route(pb.RouteRequest(prompt="What are your business hours?"))
            for _ in range(2):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Route(pb.RouteRequest(prompt=""))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # Complete forced onto the cheap tier: it fails to connect and climbs.
            request = pb.CompleteRequest(
                route=pb.RouteRequest(prompt="hi", hints={"tier": "cheap"})
            )
            events = [event async for event in stub.Complete(request)]
            # Complete straight on the strong tier: no escalation.
            request = pb.CompleteRequest(
                route=pb.RouteRequest(prompt="hi", hints={"tier": "strong"})
            )
            plain = [event async for event in stub.Complete(request)]
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest(service=""))
    flush(server)
    value = registry.get_sample_value

    # rpc_sample 0: no line for a successful Route or a plain Complete; every error and
    # the escalated Complete have theirs.
    lines = [line for line in logs if line["event"] == "rpc"]
    assert sorted((line["method"], line["status"]) for line in lines) == [
        ("Complete", "OK"),
        ("Route", "INVALID_ARGUMENT"),
        ("Route", "INVALID_ARGUMENT"),
    ]
    assert [e.WhichOneof("event") for e in plain].count("escalation") == 0

    assert grpc_value(registry, "grpc_server_started_total", "Route") == 5
    assert grpc_value(registry, "grpc_server_handled_total", "Route", grpc_code="OK") == 3
    assert (
        grpc_value(registry, "grpc_server_handled_total", "Route", grpc_code="INVALID_ARGUMENT")
        == 2
    )
    assert grpc_value(registry, "grpc_server_handling_seconds_count", "Route") == 5
    assert grpc_value(registry, "grpc_server_started_total", "Complete") == 2
    assert grpc_value(registry, "grpc_server_handled_total", "Complete", grpc_code="OK") == 2
    health_service = "grpc.health.v1.Health"
    assert (
        grpc_value(
            registry, "grpc_server_handled_total", "Check", service=health_service, grpc_code="OK"
        )
        == 1
    )

    # Decisions of Route and Complete alike: three OK Routes and two Completes.
    decisions = {
        tier: value("modelrouter_route_decisions_total", {"tier": tier}) or 0
        for tier in ("cheap", "strong", "expert")
    }
    assert sum(decisions.values()) == 5
    assert value("modelrouter_decision_seconds_count") == 5
    assert value("modelrouter_route_score_count") == 5

    # The escalated Complete, attempt by attempt, as its summary tells it.
    [summary] = [e.summary for e in events if e.WhichOneof("event") == "summary"]
    [first, second] = summary.attempts
    assert (first.tier, first.backend, second.tier) == ("cheap", "down", "strong")
    outcome = pb.AttemptOutcome.Name(first.outcome).removeprefix("ATTEMPT_OUTCOME_").lower()
    attempts = "modelrouter_completion_attempts_total"
    assert value(attempts, {"tier": "cheap", "backend": "down", "outcome": outcome}) == 1
    assert value(attempts, {"tier": "strong", "backend": "demo", "outcome": "ok"}) == 2
    assert (
        value(
            "modelrouter_escalations_total",
            {"from_tier": "cheap", "to_tier": "strong", "reason": outcome},
        )
        == 1
    )
    [plain_summary] = [e.summary for e in plain if e.WhichOneof("event") == "summary"]
    output = summary.usage.completion_tokens + plain_summary.usage.completion_tokens
    assert value("modelrouter_tokens_total", {"tier": "strong", "kind": "output"}) == output
    assert value("modelrouter_cost_usd_total", {"tier": "strong"}) == pytest.approx(
        summary.cost_usd + plain_summary.cost_usd
    )
    assert value("modelrouter_cost_baseline_usd_total") == pytest.approx(
        summary.strongest_tier_cost_usd + plain_summary.strongest_tier_cost_usd
    )
    assert value("modelrouter_completion_seconds_count", {"tier": "strong"}) == 2
    assert value("modelrouter_time_to_first_token_seconds_count", {"tier": "strong"}) == 2
    assert value("modelrouter_inflight_rpcs") == 0


async def test_feedback_counted_by_the_served_tier(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    server = await start_server(make_config())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        decision = (await stub.Route(pb.RouteRequest(prompt="hi", request_id="fb-1"))).decision
        await stub.Feedback(pb.FeedbackRequest(request_id="fb-1", rating=1.0))
        await stub.Feedback(pb.FeedbackRequest(request_id="never-served", rating=0.0))
    flush(server)
    value = registry.get_sample_value
    assert value("modelrouter_feedback_total", {"tier": decision.tier}) == 1
    assert value("modelrouter_feedback_total", {"tier": "unknown"}) == 1


async def test_feedback_on_another_worker_is_counted_by_the_tier_in_the_store(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    # Two servers on one store, as two workers or replicas: the second never saw the request.
    config = make_config()
    first, second = await start_server(config), await start_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        route = pb.RouteRequest(prompt="hi", request_id="fb-2", hints=pb.TierHints(tier="expert"))
        await router_stub(channel).Route(route)
    writer = first.service.store
    assert writer is not None
    for _ in range(600):  # written a flush interval later
        if writer.written >= 2:  # the settings record and the request
            break
        await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        response = await router_stub(channel).Feedback(
            pb.FeedbackRequest(request_id="fb-2", rating=1.0)
        )
    assert response.known_request
    flush(second)
    assert registry.get_sample_value("modelrouter_feedback_total", {"tier": "expert"}) == 1

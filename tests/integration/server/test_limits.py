"""Per-tenant limits over gRPC, counted in the server's memory: rates, tokens and budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import Config
from router.server import RunningServer
from router.telemetry import metrics
from tests.integration.server.support import (
    ServeProcess,
    error_trailers,
    failure,
    router_stub,
    slow_demo,
    write_config,
)

TIMEOUT_S = 30.0


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    """Return the RetryInfo delay of an error status, read the way a Python caller would."""
    # grpc-stubs types from_call for a grpc.Call; it reads only code(), details() and
    # trailing_metadata(), which a grpc.aio error has as well.
    status = rpc_status.from_call(cast(grpc.Call, error))
    assert status is not None, "no grpc-status-details-bin trailer"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToNanoseconds()) / 1e9
    raise AssertionError(f"no RetryInfo in {status}")


def limited(**limits: Any) -> dict[str, Any]:
    return {"acme": {"limits": limits}}


async def serve(start_server: Callable[..., Any], config: Config) -> tuple[RunningServer, Any]:
    server: RunningServer = await start_server(config)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return server, channel


def complete(
    prompt: str = "hello", tenant: str = "acme", max_tokens: int = 0
) -> pb.CompleteRequest:
    return pb.CompleteRequest(
        route=pb.RouteRequest(prompt=prompt, tenant=tenant, hints=pb.TierHints(tier="cheap")),
        generation=pb.GenerationOptions(max_tokens=max_tokens),
    )


async def test_over_the_request_rate_is_resource_exhausted_with_retry_info(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    # Slow enough that a loaded machine does not refill the bucket between the calls.
    config = make_config(tenants=limited(requests_per_s=0.5, burst=3))
    server, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        for _ in range(3):
            await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        error = await failure(
            stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "tenant 'acme' is over its rate of 0.5 requests per second" in str(error.details())
        assert "tenants.acme.limits.requests_per_s" in str(error.details())
        assert error_trailers(error)["x-request-id"]
        delay = retry_delay_s(error)
        assert 0 < delay <= 2.0
        # Other tenants (and requests without one) are not limited.
        for tenant in ("globex", ""):
            await stub.Route(pb.RouteRequest(prompt="hi", tenant=tenant), timeout=TIMEOUT_S)
        # Complete counts against the same rate.
        stream_error = await failure(stub.Complete(complete(), timeout=TIMEOUT_S))
        assert stream_error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await asyncio.sleep(retry_delay_s(stream_error) + 0.05)
        await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
    current = metrics.current()
    assert current is not None
    current.flush(server.interceptor.in_flight, "", [])
    rejected = registry.get_sample_value(
        "modelrouter_limit_rejections_total", {"tenant": "acme", "limit": "requests_per_s"}
    )
    assert rejected == 2


async def test_requests_without_a_tenant_are_the_default_tenant(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants={"default": {"limits": {"requests_per_s": 0.2}}})
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        await stub.Route(pb.RouteRequest(prompt="hi"), timeout=TIMEOUT_S)
        error = await failure(stub.Route(pb.RouteRequest(prompt="hi"), timeout=TIMEOUT_S))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)


async def test_tokens_per_minute_count_what_complete_used(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    # One Complete uses its prompt (a token) and the demo's answer (34 tokens); the next is
    # admitted when the bucket holds its prompt's estimate (6 tokens for "hello").
    config = make_config(tenants=limited(tokens_per_minute=40))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        events = [e async for e in stub.Complete(complete("hello"), timeout=TIMEOUT_S)]
        usage = events[-1].summary.usage
        assert usage.prompt_tokens + usage.completion_tokens > 30
        # Route spends no tokens.
        await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        # 40 a minute: 5 are left, and they refill at two every three seconds.
        error = await failure(stub.Complete(complete("hello"), timeout=TIMEOUT_S))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over its 40 tokens per minute" in str(error.details())
        assert 0 < retry_delay_s(error) <= 60


async def test_a_daily_budget_is_never_overspent_by_concurrent_requests(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    # The cheap tier at $1 per million tokens each way, 64 tokens at most per answer: one
    # request holds at most (prompt + 64) micro-dollars while it runs.
    tiers = make_config().model_dump()["tiers"]
    tiers[0]["price"] = {"input_per_mtok": 1.0, "output_per_mtok": 1.0}
    tiers[0]["max_tokens"] = 64
    budget = 200e-6  # two requests' worst case (69e-6), five of their real cost (35e-6)
    config = make_config(tiers=tiers, backends=slow_demo(200), tenants=limited(usd_per_day=budget))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)

        async def one() -> float | grpc.aio.AioRpcError:
            try:
                events = [e async for e in stub.Complete(complete("hi"), timeout=TIMEOUT_S)]
            except grpc.aio.AioRpcError as exc:
                return exc
            return float(events[-1].summary.cost_usd)

        results: list[float | grpc.aio.AioRpcError] = []
        for _ in range(4):  # waves of concurrent requests, until the budget is spent
            results.extend(await asyncio.gather(*(one() for _ in range(6))))
        spent = sum(r for r in results if isinstance(r, float))
        refused = [r for r in results if not isinstance(r, float)]
    assert spent <= budget
    # The reservations were settled at the real cost: more ran than two worst cases allow.
    served = len(results) - len(refused)
    assert served > 2
    assert refused, "the budget never ran out"
    for error in refused:
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "budget of $0.0002 per day (UTC)" in str(error.details())
        assert 0 < retry_delay_s(error) <= 86_400


async def test_a_climb_holds_the_stronger_tier_before_it_starts(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    # The cheap tier is down; the strong one costs more than the budget has left.
    tiers = make_config().model_dump()["tiers"]
    tiers[0]["backend"] = "down"
    tiers[0]["price"] = {"input_per_mtok": 0.0, "output_per_mtok": 0.0}
    tiers[1]["price"] = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}
    backends = {
        "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "demo": {"kind": "demo"},
    }
    config = make_config(tiers=tiers, backends=backends, tenants=limited(usd_per_day=0.01))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        call = stub.Complete(complete("hi"), timeout=TIMEOUT_S)
        seen = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in call:
                seen.append(event.WhichOneof("event"))
        assert seen == ["decision", "escalation"]
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "usd_per_day" in str(caught.value.details())


@pytest.mark.slow
def test_several_workers_without_redis_warn_that_they_count_apart(
    tmp_path: Path, model_path: Path, serve_process: Callable[..., ServeProcess]
) -> None:
    config = write_config(tmp_path / "router.yaml", model_path, tenants=limited(requests_per_s=5))
    process = serve_process("--config", str(config), "--port", "0", "--workers", "2")
    (line,) = process.wait_for("tenant limits counted per worker")
    assert line["tenants"] == ["acme"] and line["workers"] == 2
    assert "limits.redis_url" in line["hint"]


async def test_an_invalid_request_uses_none_of_the_tenants_rate(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=limited(requests_per_s=0.2, burst=2))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        blank = pb.RouteRequest(prompt=" ", tenant="acme")
        for _ in range(3):
            error = await failure(stub.Route(blank, timeout=TIMEOUT_S))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
            error = await failure(stub.Complete(pb.CompleteRequest(route=blank), timeout=TIMEOUT_S))
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        batch = await stub.RouteBatch(pb.RouteBatchRequest(requests=[blank] * 3))
        assert [r.error.code for r in batch.results] == [
            grpc.StatusCode.INVALID_ARGUMENT.value[0]
        ] * 3
        # The whole burst is left for valid requests, and used by them.
        for _ in range(2):
            await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        error = await failure(
            stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        )
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_complete_refused_by_a_limit_leaves_no_trace(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    # The first Complete spends most of the minute's 40 tokens; the second is refused.
    config = make_config(tenants=limited(tokens_per_minute=40))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        [e async for e in stub.Complete(complete("hello"), timeout=TIMEOUT_S)]
        refused = pb.CompleteRequest(
            route=pb.RouteRequest(
                prompt="hello",
                tenant="acme",
                request_id="refused-1",
                session_id="s-1",
                hints=pb.TierHints(tier="strong"),
            )
        )
        error = await failure(stub.Complete(refused, timeout=TIMEOUT_S))
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        # Its session did not rise to the tier it was refused at, nor is its id known.
        after = await stub.Route(
            pb.RouteRequest(prompt="hi", tenant="acme", session_id="s-1"), timeout=TIMEOUT_S
        )
        assert after.decision.reason != pb.DECISION_REASON_SESSION_FLOOR
        assert after.decision.tier != "strong"
        rated = await stub.Feedback(
            pb.FeedbackRequest(request_id="refused-1", rating=1.0, tenant="acme"),
            timeout=TIMEOUT_S,
        )
        assert not rated.known_request


async def test_a_prompt_over_the_whole_tokens_per_minute_is_refused_for_good(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=limited(tokens_per_minute=40))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        error = await failure(stub.Complete(complete("word " * 200), timeout=TIMEOUT_S))
        # No wait would fit it: no RetryInfo telling the caller to try again.
        assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert "more than the tokens_per_minute of 40" in str(error.details())
        status = rpc_status.from_call(cast(grpc.Call, error))
        assert status is None or not any(
            d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details
        )
        # Nothing was taken: a prompt that fits is served at once.
        [e async for e in stub.Complete(complete("hello"), timeout=TIMEOUT_S)]


async def test_a_complete_refused_by_its_tokens_gives_its_rate_back(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    # Two requests a burst, refilled one every 100 s: each refused Complete gives its back.
    config = make_config(tenants=limited(requests_per_s=0.01, burst=2, tokens_per_minute=40))
    _, channel = await serve(start_server, config)
    async with channel:
        stub = router_stub(channel)
        for _ in range(2):  # bigger than the whole minute's tokens
            error = await failure(stub.Complete(complete("word " * 200), timeout=TIMEOUT_S))
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
        [e async for e in stub.Complete(complete("hello"), timeout=TIMEOUT_S)]
        error = await failure(stub.Complete(complete("hello"), timeout=TIMEOUT_S))
        assert "tokens per minute" in str(error.details())  # over the tokens left
        await stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        error = await failure(
            stub.Route(pb.RouteRequest(prompt="hi", tenant="acme"), timeout=TIMEOUT_S)
        )
        assert "requests_per_s" in str(error.details())

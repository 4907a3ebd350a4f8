"""The store behind a real gRPC server: what is recorded, GetStats, sticky sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.config import Config, StoreConfig
from router.server import RunningServer
from router.store import open_store
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.fakes.support import fake, fake_config
from tests.integration.server.support import router_stub

__all__ = ["fake"]  # the fixture

# Thresholds no random test model reaches: every prompt scores to the cheapest tier.
HIGH_THRESHOLDS = (0.999, 0.9999)
GATE = {"window_tokens": 4, "window_ms": 5000}


def cheap_tiers(make_config: Callable[..., Config], **sections: Any) -> Config:
    """Return the test configuration with thresholds that send every prompt to cheap."""
    config = make_config(**sections)
    tiers = [
        tier.model_copy(update={"min_score": threshold})
        for tier, threshold in zip(config.tiers, (None, *HIGH_THRESHOLDS), strict=True)
    ]
    return config.model_copy(update={"tiers": tiers})


def with_store(config: Config, target: str, **settings: Any) -> Config:
    """Return the configuration writing to a store (SQLite path or PostgreSQL URL)."""
    key = "url" if target.startswith("postgresql://") else "path"
    store = StoreConfig(**{key: target, "flush_interval_s": 0.05, **settings})
    return config.model_copy(update={"store": store})


async def stats_when(
    stub: router_pb2_grpc.ModelRouterStub,
    done: Callable[[pb.GetStatsResponse], bool],
    request: pb.GetStatsRequest | None = None,
    timeout_s: float = 60.0,
) -> pb.GetStatsResponse:
    """Return GetStats once ``done`` holds (records are written a flush interval later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats: pb.GetStatsResponse = await stub.GetStats(request or pb.GetStatsRequest())
        if done(stats):
            return stats
        assert time.monotonic() < deadline, f"stats never settled: {stats}"
        await asyncio.sleep(0.05)


async def complete(stub: router_pb2_grpc.ModelRouterStub, **route: Any) -> list[pb.CompleteEvent]:
    call = stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(**route)))
    return [event async for event in call]


async def test_requests_attempts_and_feedback_reach_the_store(
    start_server: Callable[..., Any], fake: FakeOpenAIServer, store_target: str
) -> None:
    # Cheap's gate rejects the low-confidence start; strong answers.
    config = fake_config(
        fake,
        ("lowlp", "ok", "ok"),
        tier_extra={0: {"gate": GATE}, 1: {"min_score": 0.999}, 2: {"min_score": 0.9999}},
    )
    server: RunningServer = await start_server(with_store(config, store_target))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        routed = await stub.Route(pb.RouteRequest(prompt="hello", tenant="acme"))
        events = await complete(stub, prompt="hello again", tenant="acme", request_id="c-1")
        summary = events[-1].summary
        assert (events[0].decision.tier, summary.tier) == ("cheap", "strong")
        known = await stub.Feedback(
            pb.FeedbackRequest(request_id="c-1", rating=0.9, tenant="acme", label="good")
        )
        assert (known.known_request, known.stored) == (True, True)
        unknown = await stub.Feedback(pb.FeedbackRequest(request_id="never-served", rating=0.2))
        assert (unknown.known_request, unknown.stored) == (False, True)
        stats = await stats_when(stub, lambda s: s.total.rated == 1 and s.unmatched_feedback == 1)
    assert stats.satisfied_at == pytest.approx(0.7)
    assert stats.store.kind == ("postgres" if "://" in store_target else "sqlite")
    assert stats.store.dropped == 0 and stats.store.written >= 4
    rows = {(row.tier, row.model): row for row in stats.tiers}
    cheap, strong = rows[("cheap", "lowlp")], rows[("strong", "ok")]
    assert (cheap.requests, cheap.completions, cheap.rated) == (1, 0, 0)  # the Route
    assert cheap.escalation_rate == 1.0 and cheap.gate_rejection_rate == 1.0
    assert (strong.requests, strong.completions, strong.rated) == (1, 1, 1)
    assert (strong.mean_rating, strong.satisfaction, strong.error_rate) == (0.9, 1.0, 0.0)
    assert strong.ttft_p50_ms > 0 and not strong.HasField("escalation_rate")
    assert strong.cost_usd == pytest.approx(summary.cost_usd)
    assert strong.saved_usd == pytest.approx(summary.strongest_tier_cost_usd - summary.cost_usd)
    assert stats.total.requests == 2 and stats.total.share == 1.0
    by_tenant = await stub_stats(server, pb.GetStatsRequest(tenant="acme"))
    assert by_tenant.total.requests == 2 and by_tenant.unmatched_feedback == 0
    default_tenant = await stub_stats(server, pb.GetStatsRequest(tenant=""))
    assert default_tenant.total.requests == 0 and default_tenant.unmatched_feedback == 1
    later = await stub_stats(server, pb.GetStatsRequest(since_unix_seconds=time.time() + 60))
    assert later.total.requests == 0

    store = open_store(store_target)
    try:
        stored = {r.request_id: r for r in store.requests()}
    finally:
        store.close()
    assert set(stored) == {routed.decision.request_id, "c-1"}
    done = stored["c-1"]
    assert (done.method, done.tier, done.answered_tier, done.outcome) == (
        "complete",
        "cheap",
        "strong",
        "ok",
    )
    assert (done.rating, done.label) == (0.9, "good")
    assert done.prompt is None and done.messages is None  # keep_text is off


async def stub_stats(server: RunningServer, request: pb.GetStatsRequest) -> pb.GetStatsResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response: pb.GetStatsResponse = await router_stub(channel).GetStats(request)
        return response


async def test_prompt_text_is_kept_only_when_asked(
    start_server: Callable[..., Any], make_config: Callable[..., Config], tmp_path: Path
) -> None:
    for keep, name in ((False, "off.db"), (True, "on.db")):
        config = with_store(make_config(), str(tmp_path / name), keep_text=keep)
        server = await start_server(config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_stub(channel)
            await stub.Route(pb.RouteRequest(prompt="my account number is 1234"))
            chat = [
                pb.Message(role="system", content="be brief"),
                pb.Message(role="user", content="and my card is 5678"),
            ]
            await complete(stub, messages=chat)
            await stats_when(stub, lambda s: s.total.requests == 2)
        store = open_store(tmp_path / name)
        try:
            texts = sorted(((r.prompt, r.messages) for r in store.requests()), key=repr)
        finally:
            store.close()
        if keep:
            assert texts == [
                ("and my card is 5678", (("system", "be brief"), ("user", "and my card is 5678"))),
                ("my account number is 1234", None),
            ]
        else:
            assert texts == [(None, None), (None, None)]


async def test_get_stats_needs_a_store(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(store=None))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetStats(pb.GetStatsRequest())
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "store: null" in (error.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetStats(pb.GetStatsRequest(tenant="t" * 129))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("since", [float("nan"), float("inf"), float("-inf")])
async def test_get_stats_rejects_a_since_that_is_not_a_time(
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
    tmp_path: Path,
    since: float,
) -> None:
    server = await start_server(with_store(make_config(), str(tmp_path / "store.db")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await router_stub(channel).GetStats(pb.GetStatsRequest(since_unix_seconds=since))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.value.details() or "").startswith("since_unix_seconds: ")


async def route_in(
    stub: router_pb2_grpc.ModelRouterStub, session: str, **extra: Any
) -> pb.RoutingDecision:
    response = await stub.Route(pb.RouteRequest(prompt="hi", session_id=session, **extra))
    decision: pb.RoutingDecision = response.decision
    return decision


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "store"])
async def test_a_session_never_moves_to_a_cheaper_tier(
    start_server: Callable[..., Any], make_config: Callable[..., Config], stored: bool
) -> None:
    config = cheap_tiers(make_config) if stored else cheap_tiers(make_config, store=None)
    server = await start_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        first = await route_in(stub, "s-1")
        assert (first.tier, first.reason) == ("cheap", pb.DECISION_REASON_SCORE)
        forced = await route_in(stub, "s-1", hints=pb.TierHints(tier="strong"))
        assert (forced.tier, forced.reason) == ("strong", pb.DECISION_REASON_FORCED)
        after = await route_in(stub, "s-1")
        assert (after.tier, after.reason) == ("strong", pb.DECISION_REASON_SESSION_FLOOR)
        # Complete too, and the floor rises again with the tier used.
        events = await complete(stub, prompt="hi", session_id="s-1")
        assert events[0].decision.reason == pb.DECISION_REASON_SESSION_FLOOR
        assert events[-1].summary.tier == "strong"
        await route_in(stub, "s-1", hints=pb.TierHints(min_tier="expert"))
        assert (await route_in(stub, "s-1")).tier == "expert"
        # The caller's limits win over the floor; it is not lowered by them.
        capped = await route_in(stub, "s-1", hints=pb.TierHints(max_tier="cheap"))
        assert (capped.tier, capped.reason) == ("cheap", pb.DECISION_REASON_MAX_TIER)
        assert (await route_in(stub, "s-1")).tier == "expert"
        # Other sessions, another tenant's session of the same id, and no session: cheap.
        assert (await route_in(stub, "s-2")).tier == "cheap"
        assert (await route_in(stub, "s-1", tenant="globex")).tier == "cheap"
        assert (await stub.Route(pb.RouteRequest(prompt="hi"))).decision.tier == "cheap"
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await route_in(stub, "has space")
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.value.details() or "").startswith("session_id: ")
        if stored:
            await stats_when(stub, lambda s: s.store.queued == 0 and s.total.requests >= 10)
    if stored:
        # Another worker or replica on the same store sees the session's floor.
        other = await start_server(config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{other.port}") as channel:
            decision = await route_in(router_stub(channel), "s-1")
            assert (decision.tier, decision.reason) == (
                "expert",
                pb.DECISION_REASON_SESSION_FLOOR,
            )


async def test_the_session_floor_can_be_turned_off(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(cheap_tiers(make_config, routing={"session_floor": False}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        await route_in(stub, "s-1", hints=pb.TierHints(tier="expert"))
        assert (await route_in(stub, "s-1")).tier == "cheap"


async def test_each_decision_of_a_batch_is_recorded_like_a_route(
    start_server: Callable[..., Any], make_config: Callable[..., Config], store_target: str
) -> None:
    server: RunningServer = await start_server(with_store(make_config(), store_target))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        batch = await stub.RouteBatch(
            pb.RouteBatchRequest(
                requests=[
                    pb.RouteRequest(prompt="hello", tenant="acme", request_id="b-1"),
                    pb.RouteRequest(request_id="b-2"),  # no prompt: an error, not recorded
                    pb.RouteRequest(prompt="what is 2 + 2?", request_id="b-3"),
                ]
            )
        )
        kinds = [result.WhichOneof("result") for result in batch.results]
        assert kinds == ["decision", "error", "decision"]
        await stats_when(stub, lambda s: s.total.requests == 2)
    store = open_store(store_target)
    try:
        stored = {r.request_id: r for r in store.requests()}
    finally:
        store.close()
    assert set(stored) == {"b-1", "b-3"}
    assert {r.method for r in stored.values()} == {"route"}
    assert (stored["b-1"].tenant, stored["b-3"].tenant) == ("acme", "")
    assert stored["b-3"].tier == batch.results[2].decision.tier

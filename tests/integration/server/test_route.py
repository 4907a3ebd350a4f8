"""Route, Feedback and GetConfig round trips over a real gRPC server."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.auth import digest
from router.config import Config
from router.domain import ChatMessage
from router.server import RunningServer
from tests.integration.server.support import TIERS, error_trailers, router_stub

QUERY = "Compare plan A vs plan B for my usage pattern, step by step."


async def test_route_prompt_round_trip(
    server: RunningServer, stub: router_pb2_grpc.ModelRouterStub
) -> None:
    call = stub.Route(pb.RouteRequest(prompt=QUERY, tenant="acme", metadata={"team": "search"}))
    response = await call
    d = response.decision
    metadata = dict(await call.trailing_metadata())
    assert metadata["x-request-id"] == d.request_id != ""
    router = server.service._runtime.router
    expected = router.score(QUERY)
    assert d.score == pytest.approx(expected.score, abs=1e-12)
    assert list(d.level_probabilities) == pytest.approx(expected.levels)
    assert math.isclose(sum(d.level_probabilities), 1.0, rel_tol=1e-9)
    assert d.tier_index == bisect.bisect_right(router.thresholds, d.score)
    assert d.tier == TIERS[d.tier_index]
    assert d.model == f"demo-{d.tier}" and d.backend == "demo"
    assert d.reason == pb.DECISION_REASON_SCORE
    assert d.model_version == router.version
    assert d.decision_micros > 0
    tokens = math.ceil(len(QUERY) / 4) + 4  # one user turn's framing
    assert d.estimated_prompt_tokens == tokens
    prices = [0.24, 2.5, 15.0]
    assert d.estimated_cost_usd == pytest.approx(tokens * prices[d.tier_index] / 1e6)
    assert d.strongest_tier_cost_usd == pytest.approx(tokens * 15.0 / 1e6)


async def test_request_id_is_echoed_or_generated(stub: router_pb2_grpc.ModelRouterStub) -> None:
    call = stub.Route(pb.RouteRequest(prompt="hi", request_id="req-42"))
    assert (await call).decision.request_id == "req-42"
    assert dict(await call.trailing_metadata())["x-request-id"] == "req-42"
    rejected = stub.Route(pb.RouteRequest(prompt="", request_id="req-43"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await rejected
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_trailers(error.value)["x-request-id"] == "req-43"
    first = (await stub.Route(pb.RouteRequest(prompt="hi"))).decision.request_id
    second = (await stub.Route(pb.RouteRequest(prompt="hi"))).decision.request_id
    assert first and second and first != second


async def test_route_messages_scores_the_last_user_turn_in_context(
    server: RunningServer, stub: router_pb2_grpc.ModelRouterStub
) -> None:
    messages = [
        ("system", "You are a helpful assistant."),
        ("user", "What are your business hours?"),
        ("assistant", "We are open 9 to 5."),
        ("user", "Analyze this error log and suggest a fix: segfault in malloc"),
    ]
    response = await stub.Route(
        pb.RouteRequest(messages=[pb.Message(role=r, content=c) for r, c in messages])
    )
    rt = server.service._runtime
    expected = rt.router.score_chat([ChatMessage(r, c) for r, c in messages], rt.context_weight)
    assert response.decision.score == pytest.approx(expected.score, abs=1e-12)
    only_last = rt.router.score(messages[-1][1])
    assert response.decision.score != only_last.score  # the context counted
    tokens = math.ceil(sum(len(c) for _, c in messages) / 4) + 4 * len(messages)
    assert response.decision.estimated_prompt_tokens == tokens


@pytest.mark.parametrize(
    ("hints", "tier", "reason"),
    [
        (pb.TierHints(tier="strong"), "strong", pb.DECISION_REASON_FORCED),
        (pb.TierHints(tier="cheap", max_tier="strong"), "cheap", pb.DECISION_REASON_FORCED),
        (pb.TierHints(min_tier="expert"), "expert", pb.DECISION_REASON_MIN_TIER),
    ],
)
async def test_hints(
    stub: router_pb2_grpc.ModelRouterStub, hints: pb.TierHints, tier: str, reason: int
) -> None:
    d = (await stub.Route(pb.RouteRequest(prompt="hello", hints=hints))).decision
    assert (d.tier, d.tier_index, d.reason) == (tier, TIERS.index(tier), reason)


async def test_max_tier_lowers_the_choice(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    # Thresholds at their lowest so every query scores into the expert tier.
    tiers = make_config().model_dump()["tiers"]
    tiers[1]["min_score"], tiers[2]["min_score"] = 0.0001, 0.0002
    server = await start_server(make_config(tiers=tiers))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        d = (await stub.Route(pb.RouteRequest(prompt="hello"))).decision
        assert d.tier == "expert"
        hints = pb.TierHints(max_tier="strong")
        d = (await stub.Route(pb.RouteRequest(prompt="hello", hints=hints))).decision
        assert (d.tier, d.reason) == ("strong", pb.DECISION_REASON_MAX_TIER)


async def test_escalation_margin_climbs_one_tier(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    tiers = make_config().model_dump()["tiers"]
    tiers[1]["min_score"], tiers[2]["min_score"] = 0.98, 0.99
    server = await start_server(make_config(tiers=tiers, routing={"escalation_margin": 0.99}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        d = (await stub.Route(pb.RouteRequest(prompt="hello"))).decision
        assert d.score < 0.98
        assert (d.tier, d.reason) == ("strong", pb.DECISION_REASON_MARGIN)


async def test_a_tier_margin_overrides_the_global_one_in_route_and_get_config(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    tiers = make_config().model_dump(exclude_none=True)["tiers"]
    tiers[1]["min_score"], tiers[2]["min_score"] = 0.98, 0.99
    wide = make_config(tiers=tiers, routing={"escalation_margin": 0.99})
    tiers[1]["escalation_margin"] = 0.0  # strong: none of its own, whatever the default
    narrow = make_config(tiers=tiers, routing={"escalation_margin": 0.99})
    for config, tier, reason, margins in [
        (wide, "strong", pb.DECISION_REASON_MARGIN, [0.0, 0.99, 0.99]),
        (narrow, "cheap", pb.DECISION_REASON_SCORE, [0.0, 0.0, 0.99]),
    ]:
        server = await start_server(config)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_stub(channel)
            d = (await stub.Route(pb.RouteRequest(prompt="hello"))).decision
            assert d.score < 0.98
            assert (d.tier, d.reason) == (tier, reason)
            response = await stub.GetConfig(pb.GetConfigRequest())
            assert [t.escalation_margin for t in response.tiers] == pytest.approx(margins)
            assert response.escalation_margin == pytest.approx(0.99)


async def test_the_request_id_is_checked_once_per_request(
    server: RunningServer, stub: router_pb2_grpc.ModelRouterStub
) -> None:
    service = server.service
    checked: list[str] = []
    original = service.assign_request_id

    def counting(given: str) -> str:
        checked.append(given)
        return original(given)

    service.assign_request_id = counting  # type: ignore[method-assign]
    await stub.Route(pb.RouteRequest(prompt="hi", request_id="once-1"))
    assert checked == ["once-1"]
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", request_id="once-2"))
    assert [e.WhichOneof("event") async for e in stub.Complete(request)][-1] == "summary"
    assert checked == ["once-1", "once-2"]


async def test_get_config(server: RunningServer, stub: router_pb2_grpc.ModelRouterStub) -> None:
    response = await stub.GetConfig(pb.GetConfigRequest())
    assert [t.name for t in response.tiers] == list(TIERS)
    assert [t.index for t in response.tiers] == [0, 1, 2]
    assert [t.min_score for t in response.tiers] == pytest.approx([0.0, 0.4, 0.7])
    assert response.tiers[2].input_price_per_mtok == 15.0
    assert response.tiers[2].output_price_per_mtok == 75.0
    assert not response.tiers[0].gate.enabled
    rt = server.service._runtime
    assert response.model_version == rt.router.version
    assert response.model_source == rt.model_source
    assert response.fastpath in ("compiled", "python")
    assert response.max_prompt_bytes == 256 * 1024
    assert response.max_concurrent_rpcs == 1000
    assert response.max_attempts == 3
    assert [(b.name, b.kind, b.circuit) for b in response.backends] == [
        ("demo", "demo", pb.CIRCUIT_STATE_CLOSED)
    ]


async def test_get_config_reports_configured_thresholds_and_gates(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    tiers = make_config().model_dump()["tiers"]
    tiers[1]["min_score"], tiers[2]["min_score"] = 0.3, 0.9
    tiers[0]["gate"] = {"window_tokens": 5}
    server = await start_server(make_config(tiers=tiers))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await router_stub(channel).GetConfig(pb.GetConfigRequest())
    assert [t.min_score for t in response.tiers] == pytest.approx([0.0, 0.3, 0.9])
    gate = response.tiers[0].gate
    assert (gate.enabled, gate.window_tokens, gate.window_ms) == (True, 5, 400.0)


async def test_get_config_reports_each_tenants_limits_and_no_secret(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    key, api_key, header, redis_password = "mrk_config-reader", "sk-upstream", "h-val", "r-pass"
    config = make_config(
        auth={
            "enabled": True,
            "keys": [{"sha256": digest(key), "tenant": "acme", "methods": ["GetConfig"]}],
        },
        backends={
            "demo": {"kind": "demo"},
            "openai": {
                "kind": "openai",
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": api_key,
                "headers": {"x-org": header},
            },
        },
        tenants={
            "acme": {
                "limits": {
                    "requests_per_s": 50,
                    "burst": 100,
                    "tokens_per_minute": 200_000,
                    "usd_per_day": 40,
                    "usd_per_month": 800,
                }
            },
            "globex": {"limits": {"requests_per_s": 2.5}},  # burst: one second's worth
            "default": {"limits": {"usd_per_month": 100}},
            "search": {"target": {"strong_share": 0.3}},  # a target and no limit
        },
        # Connected on the first limited call only: no Redis is needed here.
        limits={"redis_url": f"redis://:{redis_password}@127.0.0.1:9/0"},
    )
    server = await start_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await router_stub(channel).GetConfig(
            pb.GetConfigRequest(), metadata=(("authorization", f"Bearer {key}"),)
        )
    assert response.limits_counted_in == "redis"
    assert [t.tenant for t in response.tenant_limits] == ["acme", "default", "globex"]
    acme, default, globex = response.tenant_limits
    assert (
        acme.requests_per_s,
        acme.burst,
        acme.tokens_per_minute,
        acme.usd_per_day,
        acme.usd_per_month,
    ) == (50.0, 100, 200_000, 40.0, 800.0)
    assert (globex.requests_per_s, globex.burst) == (2.5, 3)
    assert default.usd_per_month == 100.0
    unset = ["requests_per_s", "burst", "tokens_per_minute", "usd_per_day", "usd_per_month"]
    assert [f for f in unset if globex.HasField(f)] == ["requests_per_s", "burst"]
    assert [f for f in unset if default.HasField(f)] == ["usd_per_month"]
    answer = response.SerializeToString() + str(response).encode()
    for secret in (key, digest(key), api_key, header, redis_password):
        assert secret.encode() not in answer
    # Without a Redis the limits are counted in each worker process.
    server = await start_server(make_config())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        response = await router_stub(channel).GetConfig(pb.GetConfigRequest())
    assert (response.limits_counted_in, len(response.tenant_limits)) == ("process", 0)
    # Built in process: no replica id, and no worker index (one process).
    assert (response.replica_id, response.HasField("worker_index")) == ("", False)


async def test_feedback_knows_the_ids_served_lately_without_a_store(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(server={"feedback_capacity": 2}, store=None))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        rids = [(await stub.Route(pb.RouteRequest(prompt="hi"))).decision.request_id]
        answer = await stub.Feedback(pb.FeedbackRequest(request_id=rids[0], rating=0.9))
        # Known, but not kept: there is no store.
        assert (answer.known_request, answer.stored) == (True, False)
        unknown = await stub.Feedback(pb.FeedbackRequest(request_id="never-seen", rating=0.1))
        assert not unknown.known_request
        for _ in range(2):
            rids.append((await stub.Route(pb.RouteRequest(prompt="hi"))).decision.request_id)
        # The memory is bounded: the oldest id went first.
        first = await stub.Feedback(pb.FeedbackRequest(request_id=rids[0], rating=0.9))
        last = await stub.Feedback(pb.FeedbackRequest(request_id=rids[-1], rating=0.9))
        assert (first.known_request, last.known_request) == (False, True)

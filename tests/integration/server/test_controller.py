"""The online cost controller over a real gRPC server: targets held, hints kept, GetConfig."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import Config
from router.loading import load_router
from router.server import RunningServer
from router.training.data import read_rows
from tests.integration.server.support import router_stub
from tests.unit.training.support import SAMPLE

# Distinct real queries: a stream, not one query repeated; shuffled, as the sample file is
# ordered by source.
QUERIES = [row.text for row in read_rows(SAMPLE)]
random.Random(1).shuffle(QUERIES)


def stream(passes: int) -> list[str]:
    """Return the queries ``passes`` times, each pass in another order."""
    out = []
    for i in range(passes):
        shuffled = list(QUERIES)
        random.Random(100 + i).shuffle(shuffled)
        out += shuffled
    return out


SMALL_WINDOW = {"window_requests": 200, "min_requests": 50, "update_every": 10}


def tenants(**targets: dict[str, float]) -> dict[str, Any]:
    return {name: {"target": target} for name, target in targets.items()}


async def route_all(
    server: RunningServer, tenant: str, queries: list[str], **hints: str
) -> list[pb.RoutingDecision]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        out = []
        for query in queries:
            request = pb.RouteRequest(prompt=query, tenant=tenant, hints=pb.TierHints(**hints))
            out.append((await stub.Route(request)).decision)
        return out


async def get_config(server: RunningServer) -> pb.GetConfigResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        return await router_stub(channel).GetConfig(pb.GetConfigRequest())  # type: ignore[no-any-return]


def share_above_cheapest(decisions: list[pb.RoutingDecision]) -> float:
    return sum(d.tier_index >= 1 for d in decisions) / len(decisions)


async def test_get_config_lists_each_tenant_controller_before_any_request(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=tenants(acme={"strong_share": 0.3}, default={"usd_per_hour": 5.0}))
    server = await start_server(config)
    response = await get_config(server)
    thresholds = [t.min_score for t in response.tiers[1:]]
    by_tenant = {c.tenant: c for c in response.controllers}
    assert sorted(by_tenant) == ["acme", "default"]
    acme = by_tenant["acme"]
    assert (acme.target_kind, acme.target) == ("strong_share", 0.3)
    assert acme.offset == 0.0 and list(acme.thresholds) == pytest.approx(thresholds)
    assert not acme.HasField("realised") and acme.window_requests == 0 and acme.updates == 0
    assert (by_tenant["default"].target_kind, by_tenant["default"].target) == ("usd_per_hour", 5.0)
    # One process: all of each tenant's requests, so each aims at its target as it is.
    assert (acme.share, acme.aim) == (1.0, 0.3)
    assert (by_tenant["default"].share, by_tenant["default"].aim) == (1.0, 5.0)


async def test_route_holds_a_tenant_share_and_leaves_other_tenants_alone(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=tenants(acme={"strong_share": 0.3}), controller=SMALL_WINDOW)
    server = await start_server(config)
    acme = await route_all(server, "acme", stream(3))
    tail = acme[-200:]
    assert share_above_cheapest(tail) == pytest.approx(0.3, abs=0.05)
    # Another tenant (and the default one, which has no target here) keeps the configured
    # thresholds: the same query, the same tier as a router with no controller at all.
    router, _ = load_router(config)
    others = await route_all(server, "globex", QUERIES[:100])
    assert [d.tier_index for d in others] == [router.route(q).tier_index for q in QUERIES[:100]]
    uncontrolled = share_above_cheapest((await route_all(server, "", stream(3)))[-200:])
    assert abs(uncontrolled - 0.3) > 0.05  # so the controller did move acme's traffic
    state = {c.tenant: c for c in (await get_config(server)).controllers}["acme"]
    assert state.offset != 0.0 and state.updates > 0
    assert state.window_requests == 200
    assert state.realised == pytest.approx(share_above_cheapest(tail), abs=1e-9)
    assert not state.saturated


@pytest.mark.parametrize(
    ("target", "hints", "expected"),
    [
        # The controller pushes every threshold up (target 0), the caller asks for more.
        (0.0, {"tier": "strong"}, {1}),
        (0.0, {"min_tier": "expert"}, {2}),
        # The controller pulls every threshold down (target 1), the caller caps it.
        (1.0, {"max_tier": "cheap"}, {0}),
        (1.0, {"tier": "cheap"}, {0}),
    ],
)
async def test_the_controller_never_overrides_a_caller_hint(
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
    target: float,
    hints: dict[str, str],
    expected: set[int],
) -> None:
    config = make_config(tenants=tenants(acme={"strong_share": target}), controller=SMALL_WINDOW)
    server = await start_server(config)
    await route_all(server, "acme", QUERIES)  # the offset goes far toward its limit
    state = (await get_config(server)).controllers[0]
    assert state.offset > 2.0 if target == 0.0 else state.offset < -2.0
    decisions = await route_all(server, "acme", QUERIES[:50], **hints)
    assert {d.tier_index for d in decisions} == expected


async def test_escalations_count_toward_the_target(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    """The cheap tier's backend is down: every request climbs, so the share stays above."""
    config = make_config(
        tenants=tenants(acme={"strong_share": 0.2}),
        controller=SMALL_WINDOW,
        tiers=[
            {
                "name": "cheap",
                "model": "down-cheap",
                "backend": "down",
                "price": {"input_per_mtok": 0.24, "output_per_mtok": 0.24},
                "timeouts": {"connect_s": 2},
            },
            {
                "name": "strong",
                "model": "demo-strong",
                "backend": "demo",
                "price": {"input_per_mtok": 2.5, "output_per_mtok": 10},
            },
            {
                "name": "expert",
                "model": "demo-expert",
                "backend": "demo",
                "price": {"input_per_mtok": 15, "output_per_mtok": 75},
            },
        ],
        backends={
            "demo": {"kind": "demo", "tokens_per_second": 100000},
            "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
        },
    )
    server = await start_server(config)
    answered = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        for query in QUERIES[:120]:
            request = pb.CompleteRequest(
                route=pb.RouteRequest(prompt=query, tenant="acme"),
                generation=pb.GenerationOptions(max_tokens=4),
            )
            async for event in stub.Complete(request):
                if event.HasField("summary"):
                    answered.append(event.summary.tier_index)
    assert len(answered) == 120 and min(answered) >= 1
    state = (await get_config(server)).controllers[0]
    assert state.realised == 1.0  # escalations counted: nothing answered on the cheap tier
    assert state.window_requests == 120
    # It raises the thresholds step by step toward the limit, and says the target is out
    # of reach.
    assert state.offset == 8 * 0.5 and state.saturated


async def test_a_reload_keeps_the_window_and_aims_at_the_new_target(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=tenants(acme={"strong_share": 0.3}), controller=SMALL_WINDOW)
    server = await start_server(config)
    await route_all(server, "acme", QUERIES)
    before = (await get_config(server)).controllers[0]
    new = make_config(tenants=tenants(acme={"strong_share": 0.5}), controller=SMALL_WINDOW)
    router, source = load_router(new)
    server.service.reload(new, router, source)
    after = (await get_config(server)).controllers[0]
    assert after.target == 0.5
    assert (after.offset, after.window_requests) == (before.offset, before.window_requests)
    decisions = await route_all(server, "acme", stream(2))
    assert share_above_cheapest(decisions[-200:]) == pytest.approx(0.5, abs=0.05)
    # A configuration without the target drops the controller: configured thresholds again.
    plain = make_config()
    router, source = load_router(plain)
    server.service.reload(plain, router, source)
    assert list((await get_config(server)).controllers) == []


async def test_the_default_tenant_is_a_request_without_tenant(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    config = make_config(tenants=tenants(default={"strong_share": 0.3}), controller=SMALL_WINDOW)
    server = await start_server(config)
    await route_all(server, "", QUERIES[:60])
    state = (await get_config(server)).controllers[0]
    assert (state.tenant, state.window_requests) == ("default", 60)

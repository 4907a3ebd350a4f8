"""API keys over gRPC: the tenant from the key, methods per key, health open or protected."""

from __future__ import annotations

import asyncio
import hashlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import structlog
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.auth import digest, new_key
from router.config import RPC_METHODS, Config, ConfigError
from router.loading import load_router
from router.server import RunningServer
from router.telemetry import metrics
from tests.integration.server.support import error_trailers, failure, router_stub

ACME_KEY = "mrk_acme-test-key"
GLOBEX_KEY = "mrk_globex-route-only"
TIMEOUT_S = 10.0


def auth_section(*, protect_health: bool = False) -> dict[str, Any]:
    return {
        "enabled": True,
        "protect_health": protect_health,
        "keys": [
            {"sha256": digest(ACME_KEY), "tenant": "acme", "methods": ["Route", "Complete"]},
            {"sha256": digest(GLOBEX_KEY), "tenant": "globex", "methods": ["Route"]},
        ],
    }


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


@pytest.fixture
async def secured(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> RunningServer:
    server: RunningServer = await start_server(make_config(auth=auth_section()))
    return server


@pytest.fixture
async def channel(secured: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{secured.port}") as ch:
        yield ch


async def stored(server: RunningServer, records: int) -> None:
    """Wait until the server's store writer has written ``records`` (a flush interval on)."""
    writer = server.service.store
    assert writer is not None
    for _ in range(600):
        if writer.written >= records:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{writer.written} records written, not {records}")


async def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    value = error_trailers(error).get(key)
    return None if value is None else str(value)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing authorization metadata: send 'authorization: Bearer KEY'"),
        (bearer("mrk_not-a-key-of-ours"), "unknown API key"),
        ((("authorization", ACME_KEY),), "authorization metadata must be 'Bearer KEY'"),
    ],
)
async def test_no_key_or_an_unknown_key_is_unauthenticated(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    stub = router_stub(channel)
    with structlog.testing.capture_logs() as logs:
        error = await failure(
            stub.Route(pb.RouteRequest(prompt="hi"), metadata=metadata, timeout=TIMEOUT_S)
        )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == message
    request_id = await trailer(error, "x-request-id")
    assert request_id
    lines = [line for line in logs if line.get("event") == "rpc"]
    assert lines[-1]["status"] == "UNAUTHENTICATED"
    assert lines[-1]["request_id"] == request_id
    assert all(ACME_KEY not in repr(line) for line in logs)


async def test_the_tenant_comes_from_the_key(channel: grpc.aio.Channel) -> None:
    stub = router_stub(channel)
    with structlog.testing.capture_logs() as logs:
        await stub.Route(pb.RouteRequest(prompt="hi"), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S)
        await stub.Route(
            pb.RouteRequest(prompt="hi", tenant="acme"),
            metadata=bearer(ACME_KEY),
            timeout=TIMEOUT_S,
        )
        events = stub.Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")),
            metadata=bearer(ACME_KEY),
            timeout=TIMEOUT_S,
        )
        assert [e async for e in events][-1].HasField("summary")
    tenants = [line["tenant"] for line in logs if line.get("event") == "rpc"]
    assert tenants == ["acme", "acme", "acme"]
    assert all(ACME_KEY not in repr(line) for line in logs)


async def test_a_tenant_field_naming_another_tenant_is_permission_denied(
    channel: grpc.aio.Channel,
) -> None:
    stub = router_stub(channel)
    error = await failure(
        stub.Route(
            pb.RouteRequest(prompt="hi", tenant="globex"),
            metadata=bearer(ACME_KEY),
            timeout=TIMEOUT_S,
        )
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        "tenant: the API key belongs to tenant 'acme', the request names 'globex'; leave "
        "tenant empty or set it to the key's tenant"
    )
    assert await trailer(error, "x-request-id")
    stream_error = await failure(
        stub.Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", tenant="globex")),
            metadata=bearer(ACME_KEY),
            timeout=TIMEOUT_S,
        )
    )
    assert stream_error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_method_the_key_may_not_call_is_permission_denied(
    channel: grpc.aio.Channel, registry: CollectorRegistry
) -> None:
    stub = router_stub(channel)
    error = await failure(
        stub.GetConfig(pb.GetConfigRequest(), metadata=bearer(GLOBEX_KEY), timeout=TIMEOUT_S)
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (
        error.details() == "the API key of tenant 'globex' may not call GetConfig (allowed: Route)"
    )
    completes = await failure(
        stub.Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")),
            metadata=bearer(GLOBEX_KEY),
            timeout=TIMEOUT_S,
        )
    )
    assert completes.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_a_batch_needs_its_own_method_and_each_request_the_keys_tenant(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    section = auth_section()
    section["keys"][0]["methods"] = ["Route", "RouteBatch"]
    server: RunningServer = await start_server(make_config(auth=section))
    batch = pb.RouteBatchRequest(
        requests=[
            pb.RouteRequest(prompt="hi"),
            pb.RouteRequest(prompt="hi", tenant="acme"),
            pb.RouteRequest(prompt="hi", tenant="globex"),
        ]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with structlog.testing.capture_logs() as logs:
            answer = await stub.RouteBatch(batch, metadata=bearer(ACME_KEY), timeout=TIMEOUT_S)
        denied = await failure(
            stub.RouteBatch(batch, metadata=bearer(GLOBEX_KEY), timeout=TIMEOUT_S)
        )
    first, second, third = answer.results
    assert first.HasField("decision") and second.HasField("decision")
    assert third.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert "the API key belongs to tenant 'acme'" in third.error.message
    [line] = [line for line in logs if line.get("event") == "rpc"]
    assert (line["tenant"], line["items"], line["item_errors"]) == ("acme", 3, 1)
    assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
    assert str(denied.details()).endswith("may not call RouteBatch (allowed: Route)")


async def test_a_key_sees_the_stats_of_its_own_tenant_only(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    section = auth_section()
    section["keys"][0]["methods"] = ["Route", "GetStats"]
    server: RunningServer = await start_server(make_config(auth=section))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        await stub.Route(pb.RouteRequest(prompt="hi"), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S)
        for _ in range(2):
            await stub.Route(
                pb.RouteRequest(prompt="hi"), metadata=bearer(GLOBEX_KEY), timeout=TIMEOUT_S
            )
        await stored(server, 3)
        own = await stub.GetStats(
            pb.GetStatsRequest(), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S
        )
        assert own.total.requests == 1
        other = await failure(
            stub.GetStats(
                pb.GetStatsRequest(tenant="globex"), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S
            )
        )
        assert other.code() is grpc.StatusCode.PERMISSION_DENIED
        denied = await failure(
            stub.GetStats(pb.GetStatsRequest(), metadata=bearer(GLOBEX_KEY), timeout=TIMEOUT_S)
        )
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_auth_failures_are_counted_by_method_and_reason(
    registry: CollectorRegistry,
    start_server: Callable[..., Any],
    make_config: Callable[..., Config],
) -> None:
    server: RunningServer = await start_server(make_config(auth=auth_section()))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        await failure(stub.Route(pb.RouteRequest(prompt="hi"), timeout=TIMEOUT_S))
        await failure(
            stub.Route(pb.RouteRequest(prompt="hi"), metadata=bearer("x"), timeout=TIMEOUT_S)
        )
        await failure(
            stub.GetConfig(pb.GetConfigRequest(), metadata=bearer(GLOBEX_KEY), timeout=TIMEOUT_S)
        )
        await failure(
            stub.Route(
                pb.RouteRequest(prompt="hi", tenant="acme"),
                metadata=bearer(GLOBEX_KEY),
                timeout=TIMEOUT_S,
            )
        )
    current = metrics.current()
    assert current is not None
    current.flush(0, "", [])
    name = "modelrouter_auth_failures_total"
    for method, reason in [
        ("Route", "missing_key"),
        ("Route", "unknown_key"),
        ("GetConfig", "method_denied"),
        ("Route", "tenant_mismatch"),
    ]:
        assert registry.get_sample_value(name, {"grpc_method": method, "reason": reason}) == 1


async def _health(channel: grpc.aio.Channel, metadata: Any = ()) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), metadata=metadata, timeout=TIMEOUT_S
    )
    return int(response.status)


async def _list_services(channel: grpc.aio.Channel, metadata: Any = ()) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for response in stub.ServerReflectionInfo(
        requests(), metadata=metadata, timeout=TIMEOUT_S
    ):
        names.extend(s.name for s in response.list_services_response.service)
    return names


async def test_health_and_reflection_stay_open_by_default(channel: grpc.aio.Channel) -> None:
    assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    assert "modelrouter.v1.ModelRouter" in await _list_services(channel)


async def test_protect_health_asks_health_and_reflection_for_a_key(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server: RunningServer = await start_server(make_config(auth=auth_section(protect_health=True)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        error = await failure(_health(channel))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        error = await failure(_list_services(channel, bearer("wrong")))
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        # Any configured key will do, whatever its methods.
        assert await _health(channel, bearer(GLOBEX_KEY)) == health_pb2.HealthCheckResponse.SERVING
        assert "modelrouter.v1.ModelRouter" in await _list_services(channel, bearer(GLOBEX_KEY))


async def test_a_protected_health_refusal_carries_the_request_id_and_its_log_line(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server: RunningServer = await start_server(make_config(auth=auth_section(protect_health=True)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with structlog.testing.capture_logs() as logs:
            error = await failure(_health(channel, bearer("wrong")))
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    request_id = await trailer(error, "x-request-id")
    assert request_id
    lines = [line for line in logs if line.get("event") == "rpc"]
    assert [(line["method"], line["status"], line["request_id"]) for line in lines] == [
        ("Check", "UNAUTHENTICATED", request_id)
    ]


async def test_keys_follow_a_reload(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server: RunningServer = await start_server(make_config(auth=auth_section()))
    rotated = auth_section()
    rotated["keys"] = [{"sha256": digest("mrk_new"), "tenant": "acme", "methods": ["Route"]}]
    config = make_config(auth=rotated)
    router, source = load_router(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        await stub.Route(pb.RouteRequest(prompt="hi"), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S)
        server.service.reload(config, router, source)
        error = await failure(
            stub.Route(pb.RouteRequest(prompt="hi"), metadata=bearer(ACME_KEY), timeout=TIMEOUT_S)
        )
        assert error.code() is grpc.StatusCode.UNAUTHENTICATED
        await stub.Route(
            pb.RouteRequest(prompt="hi"), metadata=bearer("mrk_new"), timeout=TIMEOUT_S
        )


def test_keys_new_prints_a_key_and_the_line_that_admits_it(
    make_config: Callable[..., Config],
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "keys", "new", "--tenant", "acme corp"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stdout.splitlines() if not line.startswith("#")]
    key, entry = lines
    assert key.startswith("mrk_") and len(key) > 40
    (parsed,) = yaml.safe_load(entry)
    assert parsed == {
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "tenant": "acme corp",
        "methods": list(RPC_METHODS),
    }
    config = make_config(auth={"enabled": True, "keys": [parsed]})
    assert config.auth.keys[0].tenant == "acme corp"


def test_keys_new_refuses_an_unknown_method() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "keys", "new", "--tenant", "t", "--methods", "Rout"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "--methods" in result.stderr
    assert result.stdout == ""


def test_new_keys_differ() -> None:
    assert len({new_key()[0] for _ in range(100)}) == 100


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (
            {"enabled": True, "keys": [{"sha256": "hunter2", "tenant": "a", "methods": ["Route"]}]},
            "auth.keys[0].sha256: not a SHA-256 hex digest",
        ),
        ({"enabled": True}, "auth.keys: auth is enabled but no key is configured"),
        (
            {"enabled": True, "keys": [{"sha256": "a" * 64, "tenant": "a", "methods": ["Delete"]}]},
            "auth.keys[0].methods[0]: Input should be 'Route'",
        ),
        (
            {
                "enabled": True,
                "keys": [
                    {"sha256": "a" * 64, "tenant": "a", "methods": ["Route"]},
                    {"sha256": "A" * 64, "tenant": "b", "methods": ["Route"]},
                ],
            },
            "auth.keys[1].sha256: the same digest is listed twice",
        ),
    ],
)
def test_bad_auth_configuration_names_the_key(
    make_config: Callable[..., Config], auth: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(auth=auth)


@pytest.mark.parametrize("remembered", [10_000, 1], ids=["in-memory", "from-the-store"])
async def test_a_key_rates_the_requests_of_its_own_tenant_only(
    start_server: Callable[..., Any], make_config: Callable[..., Config], remembered: int
) -> None:
    section = auth_section()
    for key in section["keys"]:
        key["methods"] = ["Route", "Feedback", "GetStats"]
    # With room for one request id, the worker forgets acme's: the store is asked instead.
    config = make_config(auth=section, server={"feedback_capacity": remembered})
    server: RunningServer = await start_server(config)
    acme, globex = bearer(ACME_KEY), bearer(GLOBEX_KEY)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        await stub.Route(pb.RouteRequest(prompt="hi", request_id="a-1"), metadata=acme)
        await stub.Route(pb.RouteRequest(prompt="hi", request_id="g-1"), metadata=globex)
        await stored(server, 2)
        own = await stub.Feedback(pb.FeedbackRequest(request_id="a-1", rating=1.0), metadata=acme)
        assert own.known_request
        # Another tenant's rating of the same id neither finds the request nor replaces
        # the rating of its own tenant: it is globex's, for an id globex never served.
        other = await stub.Feedback(
            pb.FeedbackRequest(request_id="a-1", rating=0.0), metadata=globex
        )
        assert (other.known_request, other.stored) == (False, True)
        # Naming another tenant is refused; the error carries the id it rated.
        denied = await failure(
            stub.Feedback(
                pb.FeedbackRequest(request_id="a-1", rating=0.0, tenant="acme"), metadata=globex
            )
        )
        assert denied.code() is grpc.StatusCode.PERMISSION_DENIED
        assert await trailer(denied, "x-request-id") == "a-1"
        await stored(server, 4)
        acme_stats = await stub.GetStats(pb.GetStatsRequest(), metadata=acme)
        assert (acme_stats.total.rated, acme_stats.total.mean_rating) == (1, 1.0)
        assert acme_stats.unmatched_feedback == 0
        globex_stats = await stub.GetStats(pb.GetStatsRequest(), metadata=globex)
        assert (globex_stats.total.rated, globex_stats.unmatched_feedback) == (0, 1)

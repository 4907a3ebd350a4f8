"""Every bad input, the limits and unexpected failures: exact status codes and messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

import grpc
import pytest
import structlog

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.completion.engine import CompletionEngine
from router.config import Config
from router.domain import ChatMessage, GenerationOptions, RoutingDecision
from router.validation import MAX_MESSAGES
from tests.integration.server.support import failure, router_stub, slow_demo

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def msgs(*turns: tuple[str, str]) -> list[pb.Message]:
    return [pb.Message(role=r, content=c) for r, c in turns]


async def rejection(call: Any) -> tuple[grpc.StatusCode, str | None]:
    """Return the status code and message a unary call or a whole stream ends with."""
    error = await failure(call)
    return error.code(), error.details()


ROUTE_CASES = [
    (pb.RouteRequest(), "prompt: empty: set a non-blank prompt or a list of messages"),
    (
        pb.RouteRequest(prompt=" \n\t"),
        "prompt: empty: set a non-blank prompt or a list of messages",
    ),
    (
        pb.RouteRequest(prompt="hi", messages=msgs(("user", "hi"))),
        "prompt: set either prompt or messages, not both",
    ),
    (pb.RouteRequest(messages=msgs(("system", "be brief"))), "messages: no turn has role 'user'"),
    (
        pb.RouteRequest(messages=msgs(("user", "hi"), ("robot", "beep"))),
        "messages[1].role: 'robot' is not one of system, user, assistant",
    ),
    (
        pb.RouteRequest(messages=msgs(*[("user", "hi")] * 1001)),
        "messages: 1001 turns, over the limit of 1000",
    ),
    (
        pb.RouteRequest(messages=msgs(("user", "first"), ("user", "  "))),
        "messages[1].content: the last user turn is empty",
    ),
    (
        pb.RouteRequest(prompt="x" * 1025),
        "prompt: 1025 bytes, over the limit of 1024 bytes (server.max_prompt_bytes)",
    ),
    (
        pb.RouteRequest(prompt="é" * 513),
        "prompt: 1026 bytes, over the limit of 1024 bytes (server.max_prompt_bytes)",
    ),
    (
        pb.RouteRequest(messages=msgs(("system", "s" * 600), ("user", "u" * 600))),
        "messages: 1200 bytes, over the limit of 1024 bytes (server.max_prompt_bytes)",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(min_tier="gold")),
        "hints.min_tier: unknown tier 'gold' (configured: cheap, strong, expert)",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(max_tier="Cheap")),
        "hints.max_tier: unknown tier 'Cheap' (configured: cheap, strong, expert)",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(tier="premium")),
        "hints.tier: unknown tier 'premium' (configured: cheap, strong, expert)",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(min_tier="expert", max_tier="strong")),
        "hints.min_tier: 'expert' is above hints.max_tier 'strong'",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(tier="expert", max_tier="strong")),
        "hints.tier: 'expert' is above hints.max_tier 'strong'",
    ),
    (
        pb.RouteRequest(prompt="hi", hints=pb.TierHints(tier="cheap", min_tier="strong")),
        "hints.tier: 'cheap' is below hints.min_tier 'strong'",
    ),
    (
        pb.RouteRequest(prompt="hi", request_id="r" * 129),
        "request_id: 129 characters, over the limit of 128",
    ),
    (
        pb.RouteRequest(prompt="hi", request_id="has space"),
        "request_id: must be printable ASCII without spaces",
    ),
    (
        pb.RouteRequest(prompt="hi", request_id="naïve"),
        "request_id: must be printable ASCII without spaces",
    ),
    (
        pb.RouteRequest(prompt="hi", tenant="t" * 129),
        "tenant: 129 characters, over the limit of 128",
    ),
    (
        pb.RouteRequest(prompt="hi", tenant="acme\x00"),
        "tenant: must not contain control characters",
    ),
    (
        pb.RouteRequest(prompt="hi", metadata={f"k{i}": "v" for i in range(33)}),
        "metadata: 33 entries, over the limit of 32",
    ),
    (pb.RouteRequest(prompt="hi", metadata={"": "v"}), "metadata: empty key"),
    (
        pb.RouteRequest(prompt="hi", metadata={"k" * 65: "v"}),
        f"metadata: key '{'k' * 64}...' has 65 characters, over the limit of 64",
    ),
    (
        pb.RouteRequest(prompt="hi", metadata={"k": "v" * 257}),
        "metadata['k']: 257 characters, over the limit of 256",
    ),
]


@pytest.fixture
async def limited(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> AsyncIterator[router_pb2_grpc.ModelRouterStub]:
    server = await start_server(make_config(server={"max_prompt_bytes": 1024}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield router_stub(channel)


@pytest.mark.parametrize(("request_", "message"), ROUTE_CASES, ids=[m for _, m in ROUTE_CASES])
async def test_route_rejects(
    limited: router_pb2_grpc.ModelRouterStub, request_: pb.RouteRequest, message: str
) -> None:
    assert await rejection(limited.Route(request_)) == (INVALID, message)


@pytest.mark.parametrize(
    ("request_", "message"), ROUTE_CASES[:3], ids=[m for _, m in ROUTE_CASES[:3]]
)
async def test_complete_rejects_the_same_requests(
    limited: router_pb2_grpc.ModelRouterStub, request_: pb.RouteRequest, message: str
) -> None:
    call = limited.Complete(pb.CompleteRequest(route=request_))
    assert await rejection(call) == (INVALID, message)


GENERATION_CASES = [
    (pb.GenerationOptions(temperature=2.5), "generation.temperature: 2.5 is outside [0, 2]"),
    (pb.GenerationOptions(temperature=-0.1), "generation.temperature: -0.1 is outside [0, 2]"),
    (
        pb.GenerationOptions(temperature=float("nan")),
        "generation.temperature: nan is outside [0, 2]",
    ),
    (
        pb.GenerationOptions(stop=["a", "b", "c", "d", "e"]),
        "generation.stop: 5 sequences, over the limit of 4",
    ),
    (pb.GenerationOptions(stop=["END", ""]), "generation.stop[1]: must not be empty"),
    (
        pb.GenerationOptions(stop=["s" * 65]),
        "generation.stop[0]: 65 characters, over the limit of 64",
    ),
]


@pytest.mark.parametrize(
    ("generation", "message"), GENERATION_CASES, ids=[m for _, m in GENERATION_CASES]
)
async def test_complete_rejects_generation_options(
    stub: router_pb2_grpc.ModelRouterStub, generation: pb.GenerationOptions, message: str
) -> None:
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt="hi"), generation=generation)
    assert await rejection(stub.Complete(request)) == (INVALID, message)


FEEDBACK_CASES = [
    (pb.FeedbackRequest(rating=1.0), "request_id: required: the id of the answer being rated"),
    (pb.FeedbackRequest(request_id="r1", rating=1.5), "rating: 1.5 is outside [0, 1]"),
    (pb.FeedbackRequest(request_id="r1", rating=float("nan")), "rating: nan is outside [0, 1]"),
    (
        pb.FeedbackRequest(request_id="r1", rating=1.0, comment="c" * 2049),
        "comment: 2049 characters, over the limit of 2048",
    ),
    (
        pb.FeedbackRequest(request_id="r1", rating=1.0, tenant="t" * 129),
        "tenant: 129 characters, over the limit of 128",
    ),
    (
        pb.FeedbackRequest(request_id="r1", rating=1.0, tenant="a\nb"),
        "tenant: must not contain control characters",
    ),
]


@pytest.mark.parametrize(
    ("request_", "message"), FEEDBACK_CASES, ids=[m for _, m in FEEDBACK_CASES]
)
async def test_feedback_rejects(
    stub: router_pb2_grpc.ModelRouterStub, request_: pb.FeedbackRequest, message: str
) -> None:
    assert await rejection(stub.Feedback(request_)) == (INVALID, message)


async def test_message_over_the_size_limit_is_resource_exhausted(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(server={"max_message_bytes": 1024}))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        assert (await stub.Route(pb.RouteRequest(prompt="x" * 900))).decision.tier
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Route(pb.RouteRequest(prompt="x" * 2000))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max (2003 vs. 1024)" in (caught.value.details() or "")


async def test_concurrency_cap_is_resource_exhausted_and_health_still_answers(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    config = make_config(server={"max_concurrent_rpcs": 1}, backends=slow_demo(20))
    server = await start_server(config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        stream = stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")))
        first = await stream.read()
        assert first.WhichOneof("event") == "decision"
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(grpc.aio.AioRpcError) as caught,
        ):
            await stub.Route(pb.RouteRequest(prompt="hi", request_id="unread"))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == (
            "1 RPCs in flight, the limit is 1 (server.max_concurrent_rpcs): retry with backoff"
        )
        # Rejected before the request was read: a generated id, the one in the log line.
        [line] = [e for e in logs if e["event"] == "rpc"]
        assert line["request_id"] == _trailer(caught.value) not in ("", "unread")
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
        await _until(lambda: server.interceptor.in_flight == 0)
        assert (await stub.Route(pb.RouteRequest(prompt="hi"))).decision.tier


class ExplodingEngine(CompletionEngine):
    """The real engine, but its run fails the way a bug would."""

    def run(
        self,
        decision: RoutingDecision,
        messages: Sequence[ChatMessage],
        generation: GenerationOptions,
        *,
        max_tier_index: int,
        deadline: float | None = None,
    ) -> Any:
        raise KeyError("secret internal detail")


async def test_unexpected_error_is_internal_without_details(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(), engine_factory=ExplodingEngine)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        call = stub.Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", request_id="r-9"))
        )
        with structlog.testing.capture_logs() as logs:
            events = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for event in call:
                    events.append(event)
    assert [e.WhichOneof("event") for e in events] == ["decision"]
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert details == "internal error; the server log has the details under request id r-9"
    assert "secret" not in details and "Traceback" not in details
    [line] = [entry for entry in logs if entry["event"] == "rpc"]
    assert line["status"] == "INTERNAL" and line["request_id"] == "r-9"
    assert "secret internal detail" in line["error"]
    assert isinstance(line["exc_info"], KeyError)


def all_tiers_down(make_config: Callable[..., Config]) -> Config:
    """Return a configuration whose every tier is on a backend that refuses connections."""
    # Port 9 on loopback: nothing listens, the connection is refused at once.
    backends = {"down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}}
    tiers = make_config().model_dump()["tiers"]
    for tier in tiers:
        tier["backend"] = "down"
    return make_config(tiers=tiers, backends=backends)


async def test_all_tiers_down_is_unavailable_naming_each_attempt(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(all_tiers_down(make_config))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        request = pb.CompleteRequest(
            route=pb.RouteRequest(prompt="hi", hints=pb.TierHints(tier="cheap"))
        )
        events = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in stub.Complete(request):
                events.append(event.WhichOneof("event"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert events == ["decision", "escalation", "escalation"]
    details = caught.value.details() or ""
    assert details.startswith("no tier could answer: attempt 0 tier 'cheap'")
    assert "attempt 1 tier 'strong'" in details and "attempt 2 tier 'expert'" in details


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_deadline_exceeded_on_a_stream_is_logged_and_released(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(backends=slow_demo(10)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with structlog.testing.capture_logs() as logs:
            call = stub.Complete(
                pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")), timeout=0.5
            )
            kinds = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for event in call:
                    kinds.append(event.WhichOneof("event"))
            await _until(lambda: any(e["event"] == "rpc" for e in logs))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert kinds[0] == "decision" and "summary" not in kinds
    [line] = [e for e in logs if e["event"] == "rpc"]
    assert line["status"] == "DEADLINE_EXCEEDED"
    assert server.interceptor.in_flight == 0


async def test_client_cancellation_stops_the_stream(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    server = await start_server(make_config(backends=slow_demo(10)))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = router_stub(channel)
        with structlog.testing.capture_logs() as logs:
            call = stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")))
            assert (await call.read()).WhichOneof("event") == "decision"
            assert (await call.read()).WhichOneof("event") == "delta"
            assert call.cancel()
            await _until(lambda: any(e["event"] == "rpc" for e in logs))
    [line] = [e for e in logs if e["event"] == "rpc"]
    assert line["status"] == "CANCELLED"
    assert server.interceptor.in_flight == 0
    attempts = [e for e in logs if e["event"] == "completion_attempt"]
    assert [a["outcome"] for a in attempts] == ["cancelled"]


async def test_a_chat_of_max_messages_turns_is_accepted(
    stub: router_pb2_grpc.ModelRouterStub,
) -> None:
    response = await stub.Route(pb.RouteRequest(messages=msgs(*[("user", "hi")] * MAX_MESSAGES)))
    assert response.decision.tier


def _trailer(error: grpc.aio.AioRpcError) -> str:
    """Return the x-request-id trailer of a failed call."""
    # grpc.aio returns (key, value) pairs; grpc-stubs types them as _Metadatum.
    metadata = cast(Sequence[tuple[str, str]], error.trailing_metadata())
    return dict(metadata)["x-request-id"]


async def test_a_tenant_may_be_any_text_without_control_characters(
    stub: router_pb2_grpc.ModelRouterStub,
) -> None:
    # A no-break space, an emoji sequence joined by U+200D, a soft hyphen: not control
    # characters, though str.isprintable() says no to each.
    for tenant in ("caf\u00e9\u00a0bar", "team-\U0001f468\u200d\U0001f4bb", "co\u00adop"):
        response = await stub.Route(pb.RouteRequest(prompt="hi", tenant=tenant))
        assert response.decision.tier


async def test_errors_carry_the_request_id_trailer(
    limited: router_pb2_grpc.ModelRouterStub,
) -> None:
    with structlog.testing.capture_logs() as logs:
        # Rejected after the id was accepted: the caller's id, on Route and on Complete.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limited.Route(pb.RouteRequest(prompt=" ", request_id="bad-route"))
        assert _trailer(caught.value) == "bad-route"
        call = limited.Complete(pb.CompleteRequest(route=pb.RouteRequest(request_id="bad-c")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == INVALID
        assert _trailer(caught.value) == "bad-c"
        generation = pb.GenerationOptions(temperature=9)
        call = limited.Complete(
            pb.CompleteRequest(
                route=pb.RouteRequest(prompt="hi", request_id="g"), generation=generation
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert _trailer(caught.value) == "g"
        # An invalid id cannot be echoed: a generated one, the same as in the log line.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limited.Route(pb.RouteRequest(prompt="hi", request_id="has space"))
        generated = _trailer(caught.value)
        assert generated and " " not in generated
        # Feedback names the request it rates: a valid id is the rating's, even refused.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limited.Feedback(pb.FeedbackRequest(request_id="rated-1", rating=2.0))
        assert _trailer(caught.value) == "rated-1"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await limited.Feedback(pb.FeedbackRequest(request_id="bad id", rating=1.0))
        generated_feedback = _trailer(caught.value)
        assert generated_feedback != "bad id" and " " not in generated_feedback
    statuses = {e["request_id"]: e["status"] for e in logs if e["event"] == "rpc"}
    assert statuses == {
        "bad-route": "INVALID_ARGUMENT",
        "bad-c": "INVALID_ARGUMENT",
        "g": "INVALID_ARGUMENT",
        generated: "INVALID_ARGUMENT",
        "rated-1": "INVALID_ARGUMENT",
        generated_feedback: "INVALID_ARGUMENT",
    }


async def test_stream_errors_after_the_decision_carry_the_request_id_trailer(
    start_server: Callable[..., Any], make_config: Callable[..., Config]
) -> None:
    down = await start_server(all_tiers_down(make_config))
    exploding = await start_server(make_config(), engine_factory=ExplodingEngine)
    for server, code in (
        (down, grpc.StatusCode.UNAVAILABLE),
        (exploding, grpc.StatusCode.INTERNAL),
    ):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = router_stub(channel).Complete(
                pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", request_id="mid-1"))
            )
            kinds = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for event in call:
                    kinds.append(event.WhichOneof("event"))
        assert kinds[0] == "decision"
        assert caught.value.code() == code
        assert _trailer(caught.value) == "mid-1"
        assert dict(await call.initial_metadata())["x-request-id"] == "mid-1"


async def test_caller_strings_are_clipped_in_the_log(
    stub: router_pb2_grpc.ModelRouterStub,
) -> None:
    huge = "t" * 100_000
    with structlog.testing.capture_logs() as logs:
        for call in (
            stub.Route(pb.RouteRequest(prompt="hi", tenant=huge)),
            stub.Feedback(pb.FeedbackRequest(request_id="r1", rating=1.0, tenant=huge)),
            stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi", tenant=huge))),
        ):
            code, message = await rejection(call)
            assert (code, message) == (INVALID, "tenant: 100000 characters, over the limit of 128")
    lines = [e for e in logs if e["event"] == "rpc"]
    assert sorted(line["method"] for line in lines) == ["Complete", "Feedback", "Route"]
    for line in lines:
        assert line["tenant"] == "t" * 128 + "...(100000 chars)"


ROUTE = pb.RouteRequest(prompt="hello world", request_id="r-1").SerializeToString()
# Field 1 (a string) holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xc3\x28"
UNDECODABLE = {
    "Route": ("RouteRequest", [b"\xff\xff\xff\xff", ROUTE[:-3], NOT_UTF8]),
    "Complete": (
        "CompleteRequest",
        [b"\xff\xff\xff\xff", b"\x0a" + bytes([len(ROUTE)]) + ROUTE[:-3], b"\x0a\x04" + NOT_UTF8],
    ),
    "Feedback": ("FeedbackRequest", [b"\xff\xff\xff\xff", b"\x0a\x05r-", NOT_UTF8]),
    # No string field: an unknown field that claims more bytes than there are.
    "GetConfig": ("GetConfigRequest", [b"\xff\xff\xff\xff", b"\x0a\x05ab"]),
}


@pytest.mark.parametrize("method", sorted(UNDECODABLE))
async def test_an_undecodable_request_is_invalid_argument_with_its_trailer_and_log_line(
    server: Any, method: str
) -> None:
    message_type, payloads = UNDECODABLE[method]
    path = f"/modelrouter.v1.ModelRouter/{method}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        # No serializers: the bytes go on the wire as they are.
        unary = channel.unary_unary(path, None, None)
        send = channel.unary_stream(path, None, None) if method == "Complete" else unary
        trailers = []
        with structlog.testing.capture_logs() as logs:
            for payload in payloads:
                error = await failure(send(payload))
                assert error.code() == INVALID, (payload, error.details())
                assert error.details() == (
                    f"request: not a valid modelrouter.v1.{message_type} (not protobuf, "
                    "truncated, or a string field that is not UTF-8)"
                )
                trailers.append(_trailer(error))
        # The server still answers a good request on the same connection.
        if method == "Route":
            reply = pb.RouteResponse.FromString(await unary(ROUTE))
            assert reply.decision.request_id == "r-1"
    lines = [e for e in logs if e["event"] == "rpc"]
    assert [(e["method"], e["status"]) for e in lines] == [(method, "INVALID_ARGUMENT")] * len(
        payloads
    )
    # Each answer carries the request id the server made up, and its log line names the same id.
    assert all(trailers) and len(set(trailers)) == len(trailers)
    assert [e["request_id"] for e in lines] == trailers

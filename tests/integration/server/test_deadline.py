"""Deadline-aware escalation over real gRPC: real deadlines, a fake provider slowed per attempt."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
import structlog

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.server import RunningServer
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.fakes.support import eventually, fake, fake_config
from tests.integration.server.support import router_stub

__all__ = ["fake"]

# The strong tier's first token comes this late while the test teaches the router its pace.
SLOW_S = 1.5
# The caller's deadline in the test: the cheap tier fails well within it, even on a loaded
# machine, and the strong tier's first token cannot come before it.
DEADLINE_S = 1.0


def _request(max_tier: str = "") -> pb.CompleteRequest:
    return pb.CompleteRequest(
        route=pb.RouteRequest(prompt="hello", hints=pb.TierHints(tier="cheap", max_tier=max_tier))
    )


async def _complete(
    channel: grpc.aio.Channel, request: pb.CompleteRequest, timeout: float | None
) -> tuple[list[pb.CompleteEvent], grpc.aio.AioRpcError | None, grpc.aio.Metadata | None]:
    """Return a Complete call's events, its error (None when it ended OK) and trailers."""
    call = router_stub(channel).Complete(request, timeout=timeout)
    events = []
    try:
        async for event in call:
            events.append(event)
    except grpc.aio.AioRpcError as exc:
        return events, exc, await call.trailing_metadata()
    return events, None, await call.trailing_metadata()


@asynccontextmanager
async def _flaky_cheap_slow_strong(
    fake: FakeOpenAIServer, start_server: Callable[..., Any]
) -> AsyncIterator[grpc.aio.Channel]:
    """Yield a channel to a server whose cheap tier fails and whose strong tier is slow."""
    fake.scenarios["flaky"] = "http:500"
    server: RunningServer = await start_server(fake_config(fake, ("flaky", "ok", "ok")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await _teach_strong(channel, fake)
        yield channel


async def _teach_strong(channel: grpc.aio.Channel, fake: FakeOpenAIServer) -> None:
    """Send five Completes to the strong tier at once, each slowed to SLOW_S to first token."""
    fake.attempt_delays = [SLOW_S] * 5
    request = pb.CompleteRequest(
        route=pb.RouteRequest(prompt="hello", hints=pb.TierHints(tier="strong"))
    )
    runs = await asyncio.gather(*(_complete(channel, request, 30) for _ in range(5)))
    assert [error for _, error, _ in runs] == [None] * 5


async def test_complete_ends_with_deadline_exceeded_naming_the_attempts_before_the_deadline(
    fake: FakeOpenAIServer, start_server: Callable[..., Any]
) -> None:
    async with _flaky_cheap_slow_strong(fake, start_server) as channel:
        asked = len(fake.requests)
        started = time.monotonic()
        events, error, trailers = await _complete(channel, _request("strong"), DEADLINE_S)
        answered_after = time.monotonic() - started

        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The router's own answer, before the caller's deadline (a deadline the client
        # saw pass would say only "Deadline Exceeded").
        assert answered_after < DEADLINE_S
        details = error.details() or ""
        assert details.startswith(
            "no tier could answer before the deadline: "
            "attempt 0 tier 'cheap' (fake0/flaky): http_error: HTTP 500"
        )
        assert "attempt 1 tier 'strong' (fake1/ok): deadline_skipped: not started: " in details
        assert [e.WhichOneof("event") for e in events] == ["decision", "escalation"]
        assert events[1].escalation.attempt.outcome == pb.ATTEMPT_OUTCOME_HTTP_ERROR
        assert trailers is not None and dict(trailers)["x-request-id"]
        # The strong tier was never asked: only the cheap tier's call reached the provider.
        assert [r.model for r in fake.requests[asked:]] == ["flaky"]

        # With time enough the same request climbs to the slow tier and is answered there.
        fake.attempt_delays = [SLOW_S]
        events, error, _ = await _complete(channel, _request("strong"), 30)
        assert error is None
        summary = events[-1].summary
        assert summary.tier == "strong"
        assert [a.outcome for a in summary.attempts] == [
            pb.ATTEMPT_OUTCOME_HTTP_ERROR,
            pb.ATTEMPT_OUTCOME_OK,
        ]


async def test_the_climb_passes_over_the_slow_tier_to_one_that_fits(
    fake: FakeOpenAIServer, start_server: Callable[..., Any]
) -> None:
    async with _flaky_cheap_slow_strong(fake, start_server) as channel:
        events, error, _ = await _complete(channel, _request(), DEADLINE_S)
    assert error is None
    summary = events[-1].summary
    assert summary.tier == "expert"
    assert [(a.tier, a.outcome) for a in summary.attempts] == [
        ("cheap", pb.ATTEMPT_OUTCOME_HTTP_ERROR),
        ("strong", pb.ATTEMPT_OUTCOME_DEADLINE_SKIPPED),
        ("expert", pb.ATTEMPT_OUTCOME_OK),
    ]


async def test_a_deadline_passing_mid_attempt_cancels_the_upstream_at_once(
    fake: FakeOpenAIServer, start_server: Callable[..., Any]
) -> None:
    server: RunningServer = await start_server(fake_config(fake))
    fake.attempt_delays = [60.0]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with structlog.testing.capture_logs() as logs:
            deadline_at = time.monotonic() + 0.5
            events, error, _ = await _complete(channel, _request(), 0.5)
            assert await eventually(lambda: fake.requests[0].disconnected_at is not None)
            assert await eventually(lambda: any(e["event"] == "completion_attempt" for e in logs))
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [e.WhichOneof("event") for e in events] == ["decision"]
    disconnected_at = fake.requests[0].disconnected_at
    assert disconnected_at is not None
    # At once: a loaded machine may add a few hundred milliseconds, a minute it may not.
    assert disconnected_at - deadline_at < 2.0
    assert fake.requests[0].tokens_sent == 0 and len(fake.requests) == 1
    [attempt] = [e for e in logs if e["event"] == "completion_attempt"]
    assert attempt["outcome"] == "cancelled"
    assert server.interceptor.in_flight == 0


@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_a_call_without_a_tight_deadline_escalates_as_before(
    fake: FakeOpenAIServer, start_server: Callable[..., Any], timeout: float | None
) -> None:
    fake.scenarios["flaky"] = "http:500"
    server: RunningServer = await start_server(fake_config(fake, ("flaky", "ok", "ok")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events, error, _ = await _complete(channel, _request(), timeout)
    assert error is None and events[-1].summary.tier == "strong"

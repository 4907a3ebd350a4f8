"""Upstream error text stays in the server: callers get a classified reason, the log an excerpt.

The excerpt has the configured secrets and bearer/API-key patterns masked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import structlog

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import Config
from tests.fakes.fake_openai import FakeOpenAIServer, FakeServerThread
from tests.integration.server.support import router_stub

API_KEY = "sk-test-Zq8v2LmN4pR6tY0wX3cB"
PROXY_TOKEN = "proxy-7f3e9a1c5b2d"
SECRETS = (API_KEY, PROXY_TOKEN)
# What the fake's 401 body says besides the secrets: upstream text all the same.
UPSTREAM_WORDS = ("Incorrect API key", "invalid_request_error")


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeServerThread(tokens_per_second=2000.0, tokens=8) as server:
        yield server


def upstream_config(
    make_config: Callable[..., Config], fake: FakeOpenAIServer, models: tuple[str, ...]
) -> Config:
    """Return the test configuration with its tiers on the fake, asking it for ``models``."""
    backend = {
        "kind": "openai",
        "base_url": fake.base_url,
        "api_key": API_KEY,
        "headers": {"x-proxy-auth": PROXY_TOKEN},
    }
    tiers = make_config().model_dump()["tiers"]
    for tier, model in zip(tiers, models, strict=True):
        tier.update(backend="upstream", model=model)
    return make_config(tiers=tiers, backends={"upstream": backend})


def assert_no_upstream_text(text: str) -> None:
    for secret in (*SECRETS, *UPSTREAM_WORDS):
        assert secret not in text, text


def completion_request() -> pb.CompleteRequest:
    # Forced onto the cheapest tier, free to climb from there.
    return pb.CompleteRequest(
        route=pb.RouteRequest(prompt="hi", request_id="leak-1", hints=pb.TierHints(tier="cheap"))
    )


async def test_a_401_that_echoes_the_key_reaches_no_caller(
    start_server: Callable[..., Any], make_config: Callable[..., Config], fake: FakeOpenAIServer
) -> None:
    server = await start_server(upstream_config(make_config, fake, ("echo:401",) * 3))
    with structlog.testing.capture_logs() as logs:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = router_stub(channel).Complete(completion_request())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call:
                    pass
    assert fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"  # it was sent
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    message = caught.value.details() or ""
    assert "http_error: HTTP 401" in message
    assert_no_upstream_text(message)
    attempts = [e for e in logs if e["event"] == "completion_attempt"]
    assert len(attempts) == 3
    for line in attempts:
        assert line["outcome"] == "http_error"
        assert_no_upstream_text(line["detail"])
        # The log keeps what the provider said, with the secrets masked.
        excerpt = line["upstream"]
        assert "Incorrect API key provided" in excerpt and "***" in excerpt
        for secret in SECRETS:
            assert secret not in excerpt
            assert secret[:12] not in excerpt
    [rpc] = [e for e in logs if e["event"] == "rpc"]
    assert_no_upstream_text(rpc["error"])


async def test_an_escalation_and_the_summary_carry_no_upstream_text(
    start_server: Callable[..., Any], make_config: Callable[..., Config], fake: FakeOpenAIServer
) -> None:
    server = await start_server(upstream_config(make_config, fake, ("echo:401", "error:0", "ok")))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        events = [event async for event in router_stub(channel).Complete(completion_request())]
    escalations = [e.escalation for e in events if e.WhichOneof("event") == "escalation"]
    summary = events[-1].summary
    assert [a.outcome for a in summary.attempts] == [
        pb.ATTEMPT_OUTCOME_HTTP_ERROR,
        pb.ATTEMPT_OUTCOME_ERROR_EVENT,
        pb.ATTEMPT_OUTCOME_OK,
    ]
    assert summary.attempts[0].detail.startswith("HTTP 401")
    # The fake's error event says "injected error event": its text is upstream text too.
    for attempt in (*summary.attempts, *(e.attempt for e in escalations)):
        assert_no_upstream_text(attempt.detail)
        assert "injected" not in attempt.detail

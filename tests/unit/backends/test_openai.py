import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router.backends import (
    BackendError,
    BackendRequest,
    BackendTimeout,
    Chunk,
    ConnectFailed,
    ErrorEvent,
    HTTPStatusFailed,
    MalformedStream,
    RateLimited,
    create_backend,
)
from router.backends.openai import OpenAIBackend, _logprobs
from router.config import ConfigError, OpenAIBackendConfig, TimeoutsConfig, parse_config
from router.domain import AttemptOutcome, ChatMessage, GenerationOptions
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.fakes.support import eventually

# Limits that the fault tests reach; the other tests stream under limits that a loaded
# machine (a load average of 18 on two cores) does not reach by accident.
FAST = TimeoutsConfig(connect_s=0.3, first_token_s=0.5, idle_s=0.3, total_s=5.0)
PATIENT = TimeoutsConfig(connect_s=10.0, first_token_s=30.0, idle_s=30.0, total_s=60.0)


def _backend(base_url: str, **extra: Any) -> OpenAIBackend:
    backend = create_backend("fake", OpenAIBackendConfig(kind="openai", base_url=base_url, **extra))
    assert isinstance(backend, OpenAIBackend)
    return backend


def _request(
    model: str = "ok",
    *,
    logprobs: bool = False,
    max_tokens: int = 64,
    timeouts: TimeoutsConfig = PATIENT,
    **generation: Any,
) -> BackendRequest:
    return BackendRequest(
        model=model,
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hello there")),
        generation=GenerationOptions(**generation),
        max_tokens=max_tokens,
        logprobs=logprobs,
        timeouts=timeouts,
    )


async def _drain(stream: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def test_a_normal_stream_yields_text_usage_and_finish(fake: FakeOpenAIServer) -> None:
    backend = _backend(fake.base_url)
    try:
        chunks = await _drain(backend.stream(_request()))
    finally:
        await backend.aclose()
    text = "".join(c.text for c in chunks)
    assert text.startswith("The quick answer")
    assert sum(c.tokens for c in chunks) == 16
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage and usage[-1].completion_tokens == 16
    assert all(c.logprobs is None for c in chunks)


async def test_the_request_asks_for_usage_and_logprobs_when_wanted(
    fake: FakeOpenAIServer,
) -> None:
    backend = _backend(fake.base_url, api_key="sk-test", headers={"x-team": "search"})
    try:
        chunks = await _drain(
            backend.stream(_request(logprobs=True, temperature=0.2, stop=("END",), max_tokens=5))
        )
        await _drain(backend.stream(_request()))
    finally:
        await backend.aclose()
    gated, plain = fake.requests
    assert gated.path == "/v1/chat/completions"
    assert gated.headers["authorization"] == "Bearer sk-test"
    assert gated.headers["x-team"] == "search"
    assert gated.body["stream"] is True
    assert gated.body["stream_options"] == {"include_usage": True}
    assert gated.body["logprobs"] is True and gated.body["top_logprobs"] == 1
    assert gated.body["temperature"] == 0.2 and gated.body["stop"] == ["END"]
    assert gated.body["max_tokens"] == 5
    assert gated.body["messages"][0] == {"role": "system", "content": "be brief"}
    assert "logprobs" not in plain.body and "temperature" not in plain.body
    logprobs = [lp for c in chunks if c.logprobs for lp in c.logprobs]
    assert len(logprobs) == 5 and all(lp == pytest.approx(-0.15) for lp in logprobs)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


async def test_one_pool_is_reused_across_requests(fake: FakeOpenAIServer) -> None:
    backend = _backend(fake.base_url)
    try:
        for _ in range(3):
            await _drain(backend.stream(_request()))
        assert fake.total_connections == 1
        assert fake.open_connections == 1  # kept alive in the pool
    finally:
        await backend.aclose()
    assert await eventually(lambda: fake.open_connections == 0)


async def test_usage_is_absent_when_the_server_sends_none(fake: FakeOpenAIServer) -> None:
    backend = _backend(fake.base_url)
    try:
        chunks = await _drain(backend.stream(_request("nousage")))
    finally:
        await backend.aclose()
    assert all(c.usage is None for c in chunks)
    assert sum(c.tokens for c in chunks) == 16


@pytest.mark.parametrize(
    ("model", "error", "outcome", "detail"),
    [
        ("http:429", RateLimited, AttemptOutcome.RATE_LIMITED, "HTTP 429"),
        ("http:500", HTTPStatusFailed, AttemptOutcome.HTTP_ERROR, "HTTP 500"),
        ("http:404", HTTPStatusFailed, AttemptOutcome.HTTP_ERROR, "HTTP 404"),
        ("slow-first:5", BackendTimeout, AttemptOutcome.TIMEOUT, "first_token timeout"),
        ("stall:3", BackendTimeout, AttemptOutcome.TIMEOUT, "idle timeout"),
        ("malformed:2", MalformedStream, AttemptOutcome.MALFORMED_STREAM, "not JSON"),
        ("cut:4", MalformedStream, AttemptOutcome.MALFORMED_STREAM, "stream cut"),
        ("error:2", ErrorEvent, AttemptOutcome.ERROR_EVENT, "the provider sent an error event"),
    ],
)
async def test_each_fault_raises_its_typed_error_and_closes_the_connection(
    fake: FakeOpenAIServer,
    model: str,
    error: type[BackendError],
    outcome: AttemptOutcome,
    detail: str,
) -> None:
    backend = _backend(fake.base_url)
    try:
        with pytest.raises(error, match=detail) as caught:
            await _drain(backend.stream(_request(model, timeouts=FAST)))
        assert caught.value.outcome is outcome
        # Nothing is left streaming at the server: the failed response was closed.
        assert await eventually(lambda: fake.requests[-1].finished_at is not None)
        assert fake.open_connections <= 1
    finally:
        await backend.aclose()
    assert await eventually(lambda: fake.open_connections == 0)


async def test_a_total_timeout_ends_a_slow_but_steady_stream(fake: FakeOpenAIServer) -> None:
    fake.tokens_per_second = 20.0  # 16 tokens take 0.75 s
    backend = _backend(fake.base_url)
    limits = TimeoutsConfig(connect_s=1.0, first_token_s=1.0, idle_s=1.0, total_s=0.3)
    try:
        with pytest.raises(BackendTimeout, match=r"total timeout after 0\.3 s"):
            await _drain(backend.stream(_request(timeouts=limits)))
    finally:
        await backend.aclose()
    assert await eventually(lambda: fake.requests[-1].disconnected_at is not None)


async def test_connection_refused_is_a_connect_error(fake: FakeOpenAIServer) -> None:
    backend = _backend(f"http://127.0.0.1:{fake.refused_port}/v1")
    try:
        with pytest.raises(ConnectFailed, match=r"^connect failed: ClientConnectorError") as caught:
            await _drain(backend.stream(_request()))
    finally:
        await backend.aclose()
    assert caught.value.outcome is AttemptOutcome.CONNECT_ERROR
    assert "Cannot connect" in caught.value.upstream


async def test_a_connect_that_hangs_times_out_as_a_connect_error(
    fake: FakeOpenAIServer,
) -> None:
    backend = _backend(f"http://127.0.0.1:{fake.blackhole_port}/v1")
    try:
        with pytest.raises(ConnectFailed, match=r"connect timeout after 0\.3 s"):
            # Only the connect limit is short: the first-token one also runs during connect.
            hang = TimeoutsConfig(connect_s=0.3, first_token_s=30.0, idle_s=30.0, total_s=60.0)
            await _drain(backend.stream(_request(timeouts=hang)))
    finally:
        await backend.aclose()


async def test_closing_the_stream_mid_way_closes_the_upstream_connection(
    fake: FakeOpenAIServer,
) -> None:
    fake.tokens_per_second = 50.0
    backend = _backend(fake.base_url)
    try:
        stream = backend.stream(_request())
        async for chunk in stream:
            if chunk.text:
                break
        await stream.aclose()
        assert await eventually(lambda: fake.requests[0].disconnected_at is not None)
        assert fake.requests[0].tokens_sent < 16
        # Closed, not returned to the pool: an unfinished response's connection is dropped.
        assert await eventually(lambda: fake.open_connections == 0)
    finally:
        await backend.aclose()


def test_both_logprob_shapes_are_read() -> None:
    chat = {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]}
    legacy = {"tokens": ["a"], "token_logprobs": [-0.25], "top_logprobs": [{"a": -0.25}]}
    assert _logprobs(chat) == [-0.5, -1.0]
    assert _logprobs(legacy) == [-0.25]
    assert _logprobs(None) is None
    with pytest.raises(MalformedStream):
        _logprobs({"content": [{"token": "a"}]})


async def test_waiting_for_a_pooled_connection_is_not_a_connect_timeout(
    fake: FakeOpenAIServer,
) -> None:
    fake.tokens_per_second = 20.0  # the first stream holds the only connection for ~0.8 s
    backend = _backend(fake.base_url, max_connections=1)
    slow_pool = TimeoutsConfig(connect_s=0.1, first_token_s=5.0, idle_s=1.0, total_s=10.0)
    try:
        first = backend.stream(_request(timeouts=slow_pool))
        head = await anext(first)
        # The second request must queue for the pool well past connect_s, then succeed.
        second = asyncio.create_task(_drain(backend.stream(_request(timeouts=slow_pool))))
        rest = await _drain(first)
        chunks = await second
    finally:
        await backend.aclose()
    assert "".join(c.text for c in [head, *rest]).startswith("The quick answer")
    assert sum(c.tokens for c in chunks) == 16
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    first_record, second_record = fake.requests
    # The second request really waited: it reached the server after the first finished.
    assert first_record.finished_at is not None
    assert second_record.started_at >= first_record.finished_at
    assert fake.total_connections == 1


async def test_a_recorded_stream_is_replayed_into_text_finish_and_usage(
    fake: FakeOpenAIServer,
) -> None:
    backend = _backend(fake.base_url)
    try:
        chunks = await _drain(backend.stream(_request("replay:openai_chat_stream.sse")))
    finally:
        await backend.aclose()
    assert "".join(c.text for c in chunks) == "Our business hours are 9am to 5pm."
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert [(u.prompt_tokens, u.completion_tokens) for c in chunks if (u := c.usage)] == [(19, 7)]


@pytest.mark.parametrize(
    ("fixture", "detail"),
    [
        ("openai_finish_reason_not_a_string", "'finish_reason' is not a string: {'type': 'stop'}"),
        ("openai_usage_negative", "'usage.completion_tokens' is not a non-negative integer: -7"),
        (
            "openai_usage_not_an_integer",
            "'usage.prompt_tokens' is not a non-negative integer: '19'",
        ),
        ("openai_usage_fractional", "'usage.completion_tokens' is not a non-negative integer: 7.5"),
        ("openai_usage_not_an_object", "'usage' is not an object: [19, 7]"),
    ],
)
async def test_a_mistyped_finish_reason_or_usage_is_a_malformed_stream(
    fake: FakeOpenAIServer, fixture: str, detail: str
) -> None:
    backend = _backend(fake.base_url)
    chunks: list[Chunk] = []
    try:
        with pytest.raises(MalformedStream) as caught:
            async for chunk in backend.stream(_request(f"replay:{fixture}.sse")):
                chunks.append(chunk)
    finally:
        await backend.aclose()
    # The value the provider sent is for the log only.
    assert f"{caught.value}: {caught.value.upstream}" == detail
    assert caught.value.outcome is AttemptOutcome.MALFORMED_STREAM
    # The text before the bad event was passed on, and no bad value was.
    assert "".join(c.text for c in chunks) == "Our business hours are 9am to 5pm."
    assert all(c.finish_reason in (None, "stop") and c.usage is None for c in chunks)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
async def test_the_token_limit_is_sent_in_the_configured_field(
    fake: FakeOpenAIServer, field: str
) -> None:
    backend = _backend(fake.base_url, max_tokens_field=field)
    try:
        chunks = await _drain(backend.stream(_request(max_tokens=4)))
    finally:
        await backend.aclose()
    (request,) = fake.requests
    other = ({"max_tokens", "max_completion_tokens"} - {field}).pop()
    assert request.body[field] == 4 and other not in request.body
    assert sum(c.tokens for c in chunks) == 4
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


def test_the_token_limit_field_defaults_to_max_tokens_and_rejects_others() -> None:
    tier = {"model": "m", "backend": "api", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}
    data: dict[str, Any] = {
        "version": 1,
        "tiers": [{"name": "cheap", **tier}, {"name": "strong", **tier}],
        "backends": {"api": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    }
    backend = parse_config(data, environ={}).backends["api"]
    assert isinstance(backend, OpenAIBackendConfig) and backend.max_tokens_field == "max_tokens"
    data["backends"]["api"]["max_tokens_field"] = "max_output_tokens"
    with pytest.raises(ConfigError, match=r"^backends\.api\.max_tokens_field: Input "):
        parse_config(data, environ={})

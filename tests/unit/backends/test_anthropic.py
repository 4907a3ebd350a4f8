import pytest

from router.backends import (
    BackendRequest,
    ErrorEvent,
    HTTPStatusFailed,
    MalformedStream,
    create_backend,
)
from router.backends.anthropic import AnthropicParser
from router.backends.sse import SSEEvent
from router.config import AnthropicBackendConfig, TimeoutsConfig
from router.domain import ChatMessage, GenerationOptions
from tests.fakes.fake_openai import FakeOpenAIServer
from tests.fakes.support import eventually


def _request(model: str = "claude-sonnet-4-6") -> BackendRequest:
    return BackendRequest(
        model=model,
        messages=(
            ChatMessage("system", "You answer for ACME."),
            ChatMessage("user", "What are your business hours?"),
        ),
        generation=GenerationOptions(temperature=1.5, stop=("\n\n",)),
        max_tokens=100,
        logprobs=False,
        timeouts=TimeoutsConfig(connect_s=1.0, first_token_s=2.0, idle_s=2.0, total_s=5.0),
    )


async def test_the_recorded_messages_stream_is_replayed_into_chunks(
    fake: FakeOpenAIServer,
) -> None:
    backend = create_backend(
        "claude", AnthropicBackendConfig(kind="anthropic", base_url=fake.anthropic_url, api_key="k")
    )
    try:
        chunks = [chunk async for chunk in backend.stream(_request())]
    finally:
        await backend.aclose()
    assert "".join(c.text for c in chunks) == (
        "Hello! Our business hours are 9am to 5pm, Monday to Friday."
    )
    final = [c for c in chunks if c.finish_reason]
    assert len(final) == 1 and final[0].finish_reason == "stop"
    assert final[0].usage is not None
    assert (final[0].usage.prompt_tokens, final[0].usage.completion_tokens) == (25, 15)
    (request,) = fake.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "k"
    assert request.headers["anthropic-version"] == "2023-06-01"
    body = request.body
    assert body["system"] == "You answer for ACME."
    assert body["messages"] == [{"role": "user", "content": "What are your business hours?"}]
    assert body["max_tokens"] == 100 and body["stream"] is True
    assert body["temperature"] == 1.0 and body["stop_sequences"] == ["\n\n"]
    assert await eventually(lambda: fake.requests[0].completed)


async def test_an_overloaded_status_is_an_http_error(fake: FakeOpenAIServer) -> None:
    backend = create_backend(
        "claude", AnthropicBackendConfig(kind="anthropic", base_url=fake.anthropic_url)
    )
    try:
        with pytest.raises(HTTPStatusFailed, match=r"^HTTP 529$") as caught:
            _ = [chunk async for chunk in backend.stream(_request("http:529"))]
    finally:
        await backend.aclose()
    assert "overloaded_error" in caught.value.upstream  # for the log only


def test_an_error_event_raises() -> None:
    parser = AnthropicParser()
    start = '{"type":"message_start","message":{"usage":{"input_tokens":3}}}'
    assert parser.feed(SSEEvent("message_start", start)) is None
    error = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    with pytest.raises(ErrorEvent, match=r"^the provider sent an error event$") as caught:
        parser.feed(SSEEvent("error", error))
    assert caught.value.upstream == "overloaded_error: Overloaded"
    with pytest.raises(MalformedStream, match="before message_stop"):
        parser.close()


@pytest.mark.parametrize(
    ("fixture", "detail"),
    [
        ("anthropic_stop_reason_not_a_string", "'stop_reason' is not a string: ['end_turn']"),
        ("anthropic_usage_negative", "'output_tokens' is not a non-negative integer: -15"),
        ("anthropic_usage_not_an_integer", "'input_tokens' is not a non-negative integer: '25'"),
    ],
)
async def test_a_mistyped_stop_reason_or_usage_is_a_malformed_stream(
    fake: FakeOpenAIServer, fixture: str, detail: str
) -> None:
    backend = create_backend(
        "claude", AnthropicBackendConfig(kind="anthropic", base_url=fake.anthropic_url)
    )
    try:
        with pytest.raises(MalformedStream) as caught:
            _ = [chunk async for chunk in backend.stream(_request(f"replay:{fixture}.sse"))]
    finally:
        await backend.aclose()
    # The value the provider sent is for the log only.
    assert f"{caught.value}: {caught.value.upstream}" == detail


def test_an_error_event_whose_error_is_not_an_object_still_raises_an_error_event() -> None:
    with pytest.raises(ErrorEvent) as caught:
        AnthropicParser().feed(SSEEvent("error", '{"type":"error","error":"Overloaded"}'))
    assert caught.value.upstream == "'Overloaded'"

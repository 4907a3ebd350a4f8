"""Anthropic's Messages API, streamed: its own event types over the shared SSE reader."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router.backends.base import BackendRequest, Chunk, TokenUsage, register
from router.backends.errors import ErrorEvent, MalformedStream
from router.backends.httpbase import (
    HTTPBackend,
    json_object,
    loads_event,
    optional_text,
    token_count,
)
from router.backends.sse import SSEEvent
from router.config import AnthropicBackendConfig

# Anthropic's stop reasons in the OpenAI vocabulary the summary reports.
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


@register("anthropic")
class AnthropicBackend(HTTPBackend):
    """Stream ``POST {base_url}/v1/messages`` with ``stream: true``."""

    config: AnthropicBackendConfig

    def base_url(self) -> str:
        """Return the configured base URL (https://api.anthropic.com by default)."""
        return self.config.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        """Return the API key and version headers."""
        headers = {"anthropic-version": self.config.api_version}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        return headers

    def path(self) -> str:
        """Return the Messages API path."""
        return "/v1/messages"

    def body(self, request: BackendRequest) -> Mapping[str, Any]:
        """Return a streaming Messages request; system turns go to the ``system`` field."""
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        body: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
            "stream": True,
        }
        if system:
            body["system"] = system
        generation = request.generation
        if generation.temperature is not None:
            # Anthropic's range is [0, 1]; the API accepts OpenAI's [0, 2].
            body["temperature"] = min(generation.temperature, 1.0)
        if generation.stop:
            body["stop_sequences"] = list(generation.stop)
        return body

    def parser(self) -> AnthropicParser:
        """Return a parser of Messages API stream events."""
        return AnthropicParser()


class AnthropicParser:
    """Turn message_start / content_block_delta / message_delta events into chunks."""

    __slots__ = ("prompt_tokens", "stopped")

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.stopped = False

    def feed(self, event: SSEEvent) -> Chunk | None:
        """Return the event's chunk; raise ErrorEvent or MalformedStream."""
        if self.stopped:
            return None  # read to the end so the connection can go back to the pool
        obj = loads_event(event)
        kind = obj.get("type", event.event)
        if kind == "content_block_delta":
            text = json_object(obj.get("delta"), "delta").get("text")
            if isinstance(text, str) and text:
                return Chunk(text=text, tokens=1)
        elif kind == "message_start":
            message = json_object(obj.get("message"), "message")
            usage = json_object(message.get("usage"), "message.usage")
            self.prompt_tokens = token_count(usage.get("input_tokens", 0), "input_tokens")
        elif kind == "message_delta":
            delta = json_object(obj.get("delta"), "delta")
            usage = json_object(obj.get("usage"), "usage")
            reason = optional_text(delta.get("stop_reason"), "stop_reason")
            completion = token_count(usage.get("output_tokens", 0), "output_tokens")
            return Chunk(
                finish_reason=_FINISH_REASONS.get(reason, reason) if reason else None,
                usage=TokenUsage(self.prompt_tokens, completion),
            )
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            error = obj.get("error")
            if not isinstance(error, dict):
                raise ErrorEvent("the provider sent an error event", repr(error))
            raise ErrorEvent(
                "the provider sent an error event",
                f"{error.get('type', 'error')}: {error.get('message', '')}",
            )
        # ping, content_block_start and content_block_stop carry nothing we need.
        return None

    def close(self) -> None:
        """Raise MalformedStream if message_stop never came."""
        if not self.stopped:
            raise MalformedStream("stream ended before message_stop")

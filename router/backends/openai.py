"""Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, Ollama, LiteLLM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from router.config import OpenAIBackendConfig

_DONE = "[DONE]"


@register("openai")
class OpenAIBackend(HTTPBackend):
    """Stream ``POST {base_url}/chat/completions`` with ``stream: true``."""

    config: OpenAIBackendConfig

    def base_url(self) -> str:
        """Return the configured base URL (e.g. https://api.openai.com/v1)."""
        return self.config.base_url.rstrip("/")

    def headers(self) -> dict[str, str]:
        """Return the bearer token (when configured) and the configured extra headers."""
        headers = dict(self.config.headers)
        if self.config.api_key:
            headers["authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def path(self) -> str:
        """Return the chat-completions path."""
        return "/chat/completions"

    def body(self, request: BackendRequest) -> Mapping[str, Any]:
        """Return a streaming chat-completions request asking for usage (and logprobs)."""
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            self.config.max_tokens_field: request.max_tokens,
        }
        generation = request.generation
        if generation.temperature is not None:
            body["temperature"] = generation.temperature
        if generation.stop:
            body["stop"] = list(generation.stop)
        if request.logprobs:
            body["logprobs"] = True
            body["top_logprobs"] = 1
        return body

    def parser(self) -> OpenAIParser:
        """Return a parser of ``chat.completion.chunk`` events."""
        return OpenAIParser()


class OpenAIParser:
    """Turn ``chat.completion.chunk`` events into chunks, up to ``[DONE]``."""

    __slots__ = ("done", "finished")

    def __init__(self) -> None:
        self.done = self.finished = False

    def feed(self, event: SSEEvent) -> Chunk | None:
        """Return the event's chunk; raise ErrorEvent or MalformedStream."""
        if self.done:
            return None  # read to the end so the connection can go back to the pool
        if event.data == _DONE:
            self.done = True
            return None
        obj = loads_event(event)
        error = obj.get("error")
        if error is not None or event.event == "error":
            raise ErrorEvent(
                "the provider sent an error event", _error_text(error if error is not None else obj)
            )
        chunk = _chunk(obj)
        if chunk is not None and chunk.finish_reason is not None:
            self.finished = True
        return chunk

    def close(self) -> None:
        """Raise MalformedStream if neither a finish reason nor ``[DONE]`` came."""
        if not (self.done or self.finished):
            raise MalformedStream("stream ended before a finish reason or [DONE]")


def _chunk(obj: Mapping[str, Any]) -> Chunk | None:
    usage = _usage(obj.get("usage"))
    choices = obj.get("choices")
    if not choices:
        return None if usage is None else Chunk(usage=usage)
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise MalformedStream("'choices' is not a list of objects")
    choice = choices[0]
    delta = json_object(choice.get("delta"), "delta")
    text = delta.get("content") or ""
    if not isinstance(text, str):
        raise MalformedStream("'delta.content' is not a string")
    logprobs = _logprobs(choice.get("logprobs"))
    tokens = len(logprobs) if logprobs is not None else (1 if text else 0)
    return Chunk(
        text=text,
        tokens=tokens,
        logprobs=logprobs,
        finish_reason=optional_text(choice.get("finish_reason"), "finish_reason"),
        usage=usage,
    )


def _logprobs(value: Any) -> Sequence[float] | None:
    """Read per-token log-probabilities in the chat or the legacy completions shape."""
    if not value:
        return None
    try:
        content = value.get("content")
        if content is not None:
            # Chat shape: {"content": [{"token": "Hi", "logprob": -0.1, ...}, ...]}
            return [float(item["logprob"]) for item in content]
        legacy = value.get("token_logprobs")
        if legacy is not None:
            # Completions shape, which llama-cpp-python streams for chat too.
            return [float(lp) for lp in legacy if lp is not None]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise MalformedStream("unreadable 'logprobs'") from None
    return None


def _usage(value: Any) -> TokenUsage | None:
    """Read the usage object (None when the chunk carries none)."""
    if value is None:
        return None
    usage = json_object(value, "usage")
    return TokenUsage(
        token_count(usage.get("prompt_tokens"), "usage.prompt_tokens"),
        token_count(usage.get("completion_tokens"), "usage.completion_tokens"),
    )


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("error") or error
        kind = error.get("type") or error.get("code")
        return f"{kind}: {message}" if kind else str(message)
    return str(error)

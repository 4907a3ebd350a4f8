"""The backend interface: stream one completion as chunks, under per-tier time limits.

A backend implements ``_stream`` (an async generator of ``Chunk``); the public ``stream``
wraps it with the time-to-first-token, idle and total limits and guarantees that closing
the returned iterator closes the upstream stream at once.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from router.backends.errors import BackendTimeout
from router.config import BackendConfig, Timeouts
from router.domain import ChatMessage, GenerationOptions


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts as the provider reported them."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class Chunk:
    """A piece of a streamed completion.

    ``tokens`` is how many tokens the piece carries (from its log-probabilities when the
    provider sent them, else counted as one per text piece); ``logprobs`` is ``None``
    when the provider sent none.
    """

    text: str = ""
    tokens: int = 0
    logprobs: Sequence[float] | None = None
    finish_reason: str | None = None
    usage: TokenUsage | None = None


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What one attempt asks a backend for."""

    model: str
    messages: Sequence[ChatMessage]
    generation: GenerationOptions
    max_tokens: int
    logprobs: bool
    timeouts: Timeouts


class Backend(abc.ABC):
    """A model provider reached through one client (and one connection pool)."""

    kind: ClassVar[str]

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self.config = config

    @abc.abstractmethod
    def _stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        """Yield the completion's chunks; raise a BackendError on failure."""

    async def aclose(self) -> None:
        """Release the backend's connections."""

    async def stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        """Yield the completion's chunks under the request's time limits.

        Raises ``BackendTimeout`` when the first text, the next chunk or the whole stream
        takes too long, and the backend's own ``BackendError`` on other failures. Closing
        the generator (or cancelling its consumer) closes the upstream stream.
        """
        inner = self._stream(request)
        loop = asyncio.get_running_loop()
        limits = request.timeouts
        total_deadline = loop.time() + limits.total_s
        limit, phase = limits.first_token_s, "first_token"
        try:
            while True:
                deadline = loop.time() + limit
                reason, limit_s = phase, limit
                if deadline >= total_deadline:
                    deadline, reason, limit_s = total_deadline, "total", limits.total_s
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(inner)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise BackendTimeout(reason, limit_s) from None
                if chunk.text and phase == "first_token":
                    limit, phase = limits.idle_s, "idle"
                yield chunk
        finally:
            await inner.aclose()


_B = TypeVar("_B", bound=type[Backend])

BACKENDS: dict[str, type[Backend]] = {}


def register(kind: str) -> Callable[[_B], _B]:
    """Register a backend class under the config ``kind`` that selects it."""

    def decorate(cls: _B) -> _B:
        if kind in BACKENDS:
            raise ValueError(f"backend kind {kind!r} is registered twice")
        cls.kind = kind
        BACKENDS[kind] = cls
        return cls

    return decorate


def create_backend(name: str, config: BackendConfig) -> Backend:
    """Return a backend for a configured ``backends.<name>`` entry."""
    try:
        cls = BACKENDS[config.kind]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"backends.{name}.kind: unknown kind {config.kind!r} (known: {known})")
    return cls(name, config)


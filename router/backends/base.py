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
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from router.backends.errors import BackendTimeout
from router.config import BackendConfig, TimeoutsConfig
from router.domain import ChatMessage, GenerationOptions

if TYPE_CHECKING:
    from router.telemetry.tracing import AttemptTrace


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

    def merge(self, later: Chunk) -> None:
        """Append a later chunk's text, tokens and log-probabilities; take its ending."""
        self.text += later.text
        self.tokens += later.tokens
        if later.logprobs is not None:
            self.logprobs = [*(self.logprobs or ()), *later.logprobs]
        if later.finish_reason is not None:
            self.finish_reason = later.finish_reason
        if later.usage is not None:
            self.usage = later.usage


@dataclass(frozen=True, slots=True)
class BackendRequest:
    """What one attempt asks a backend for."""

    model: str
    messages: Sequence[ChatMessage]
    generation: GenerationOptions
    max_tokens: int
    logprobs: bool
    timeouts: TimeoutsConfig
    # The attempt's span when tracing is on: an HTTP backend traces its call under it.
    trace: AttemptTrace | None = None


class Backend(abc.ABC):
    """A model provider reached through one client (and one connection pool)."""

    kind: ClassVar[str]

    def __init__(self, name: str, config: BackendConfig) -> None:
        self.name = name
        self.config = config

    @abc.abstractmethod
    def _stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        """Yield the completion's chunks; raise a BackendError on failure."""

    async def aclose(self) -> None:  # noqa: B027 - a backend without connections has none
        """Release the backend's connections."""

    async def stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        """Yield the completion's chunks under the request's time limits.

        Raises ``BackendTimeout`` when the first text, the next chunk or the whole stream
        takes too long, and the backend's own ``BackendError`` on other failures. Closing
        the generator (or cancelling its consumer) closes the upstream stream.
        """
        inner = self._stream(request)
        watch = _Watchdog(asyncio.get_running_loop(), request.timeouts)
        try:
            while True:
                watch.wait_begins()
                try:
                    chunk = await anext(inner)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    expired = watch.expired_by_us()
                    if expired is None:
                        raise
                    raise expired from None
                finally:
                    watch.task = None
                if chunk.text:
                    watch.first = False
                yield chunk
        finally:
            watch.stop()
            await inner.aclose()


class _Watchdog:
    """The first-token, idle and total limits of one stream, on one lazily moved timer.

    Re-arming a timer for every chunk costs more than the rest of a chunk's handling;
    instead the timer fires at the earliest possible deadline, and if the stream made
    progress meanwhile it re-arms for the new deadline. Time the consumer spends holding
    a chunk does not count as idle time; a limit that passes while the stream is waiting
    cancels the waiting task, which ``stream`` turns into ``BackendTimeout``.
    """

    __slots__ = ("expired", "first", "handle", "limits", "loop", "since", "start", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: TimeoutsConfig) -> None:
        self.loop = loop
        self.limits = limits
        self.start = self.since = loop.time()
        self.first = True
        self.task: asyncio.Task[Any] | None = None
        self.expired: BackendTimeout | None = None
        self.handle = loop.call_at(self._deadline()[0], self._check)

    def _deadline(self) -> tuple[float, str, float]:
        limits = self.limits
        if self.first:
            deadline, phase, limit = (
                self.start + limits.first_token_s,
                "first_token",
                limits.first_token_s,
            )
        else:
            deadline, phase, limit = self.since + limits.idle_s, "idle", limits.idle_s
        total = self.start + limits.total_s
        if deadline >= total:
            return total, "total", limits.total_s
        return deadline, phase, limit

    def wait_begins(self) -> None:
        """Note that the stream waits for its next chunk (in the current task)."""
        self.since = self.loop.time()
        if self.since >= self.start + self.limits.total_s:
            raise BackendTimeout("total", self.limits.total_s)
        # The gate may read the stream from a helper task: cancel whichever waits.
        self.task = asyncio.current_task()

    def _check(self) -> None:
        deadline, phase, limit = self._deadline()
        now = self.loop.time()
        task = self.task
        if task is None or now + _CLOCK_SLACK_S < deadline:
            # Progress moved the deadline, or the consumer holds a chunk: look again later.
            self.handle = self.loop.call_at(
                max(deadline, now + limit if task is None else 0), self._check
            )
            return
        self.expired = BackendTimeout(phase, limit)
        task.cancel()

    def expired_by_us(self) -> BackendTimeout | None:
        """Return the timeout if a limit (and nothing else) cancelled the waiting task."""
        expired, task = self.expired, self.task
        if expired is None or task is None or task.uncancel() > 0:
            return None
        return expired

    def stop(self) -> None:
        """Cancel the timer."""
        self.handle.cancel()


# asyncio may run a timer up to its clock resolution early.
_CLOCK_SLACK_S = 0.001


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
        raise ValueError(
            f"backends.{name}.kind: unknown kind {config.kind!r} (known: {known})"
        ) from None
    return cls(name, config)

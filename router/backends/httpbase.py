"""What the HTTP backends share: one pooled aiohttp session, the request, status and errors.

A subclass says where to POST, what to send and how to turn the provider's SSE events
into chunks; this class owns the connection pool and maps transport failures to
``BackendError``. Leaving the stream early (cancel, time limit, gate rejection) closes
the response's connection at once, so the provider sees the stream end and stops
generating. aiohttp rather than httpx: on this project's streams it spends about half
the CPU per token and a sixth per request (bench/README.md, "Complete overhead").
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from router.backends.base import Backend, BackendRequest, Chunk
from router.backends.errors import BackendError, ConnectFailed, MalformedStream, status_error
from router.backends.sse import SSEEvent, iter_sse
from router.config import BackendConfig, TimeoutsConfig

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from router.telemetry.tracing import AttemptTrace

# Bytes of an error body kept for the attempt's detail.
_ERROR_BODY_LIMIT = 4096
_JSON_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


class StreamParser(Protocol):
    """Turns one response's SSE events into chunks."""

    def feed(self, event: SSEEvent) -> Chunk | None:
        """Return the event's chunk (None if it carries none); raise a BackendError."""

    def close(self) -> None:
        """Raise MalformedStream if the stream ended before its end marker."""


class HTTPBackend(Backend):
    """A backend that streams SSE from one HTTP endpoint through a pooled session."""

    def __init__(self, name: str, config: BackendConfig) -> None:
        super().__init__(name, config)
        self._max_connections = int(getattr(config, "max_connections", 100))
        self._url = self.base_url() + self.path()
        self._headers = {**self.headers(), **_JSON_HEADERS}
        # Made on first use: an aiohttp session belongs to the running event loop.
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[TimeoutsConfig, aiohttp.ClientTimeout] = {}

    @abc.abstractmethod
    def base_url(self) -> str:
        """Return the base URL every request path is relative to."""

    @abc.abstractmethod
    def headers(self) -> dict[str, str]:
        """Return the headers sent with every request (authentication, version)."""

    @abc.abstractmethod
    def path(self) -> str:
        """Return the path to POST a streaming completion to."""

    @abc.abstractmethod
    def body(self, request: BackendRequest) -> Mapping[str, Any]:
        """Return the JSON body of a streaming completion request."""

    @abc.abstractmethod
    def parser(self) -> StreamParser:
        """Return a parser for one response's events."""

    async def aclose(self) -> None:
        """Close every pooled connection."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auto_decompress=True
            )
        return session

    def _timeout(self, timeouts: TimeoutsConfig) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            # Only making a new connection (TCP and TLS) is limited here, with sock_connect:
            # aiohttp's `connect` would also count the wait for a free pooled connection,
            # and a busy pool is not an unreachable backend. The wait still counts against
            # the first-token and total limits, which are the stream's own (Backend.stream).
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeouts.connect_s)
            self._timeouts[timeouts] = timeout
        return timeout

    def _stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        if request.trace is None:
            return self._post(request)
        return self._traced(request, request.trace)

    async def _traced(
        self, request: BackendRequest, trace: AttemptTrace
    ) -> AsyncGenerator[Chunk, None]:
        """Stream under a CLIENT span of the HTTP call, whose traceparent goes upstream."""
        span, headers = trace.start_http("POST", self._url)
        error: str | None = "cancelled"
        try:
            async with aclosing(self._post(request, headers, span)) as chunks:
                async for chunk in chunks:
                    yield chunk
            error = None
        except BackendError as exc:
            error = exc.outcome.value
            raise
        finally:
            trace.end_http(span, error)

    async def _post(
        self,
        request: BackendRequest,
        headers: Mapping[str, str] | None = None,
        span: Span | None = None,
    ) -> AsyncGenerator[Chunk, None]:
        content = json.dumps(self.body(request), separators=(",", ":")).encode()
        limits = request.timeouts
        try:
            response = await self._client().post(
                self._url, data=content, timeout=self._timeout(limits), headers=headers
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise ConnectFailed(
                f"connect timeout after {limits.connect_s:g} s ({type(exc).__name__})"
            ) from None
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"connect failed: {type(exc).__name__}", str(exc)) from None
        finished = False
        if span is not None:
            span.set_attribute("http.response.status_code", response.status)
        try:
            if response.status >= 300:
                body = await _read_limited(response)
                raise status_error(response.status, body)
            parser = self.parser()
            batches = iter_sse(response.content.iter_any())
            try:
                async for events in batches:
                    # Everything one read brought goes on as one chunk: under load the
                    # tokens of a stream arrive in bunches, and each chunk costs a gRPC
                    # write downstream. Nothing waits for a bunch to form.
                    merged: Chunk | None = None
                    for event in events:
                        try:
                            chunk = parser.feed(event)
                        except Exception:
                            # The text before a bad event still counts, whether the event
                            # was malformed or the parser failed on it (a bug).
                            if merged is not None:
                                yield merged
                            raise
                        if chunk is None:
                            continue
                        if merged is None:
                            merged = chunk
                        else:
                            merged.merge(chunk)
                    if merged is not None:
                        yield merged
            except (aiohttp.ClientError, asyncio.IncompleteReadError) as exc:
                raise MalformedStream(f"stream cut: {type(exc).__name__}", str(exc)) from None
            finally:
                await batches.aclose()
            parser.close()
            finished = response.content.at_eof()
        finally:
            if finished:
                response.release()  # read to the end: the connection goes back to the pool
            else:
                response.close()  # drop the connection: the provider stops generating


async def _read_limited(response: aiohttp.ClientResponse) -> str:
    try:
        body = await response.content.read(_ERROR_BODY_LIMIT)
    except aiohttp.ClientError:
        body = b""  # the status already says it failed; a cut error body only loses detail
    return body.decode("utf-8", errors="replace")


def _event_text(event: SSEEvent) -> str:
    return f"event {event.event!r}: {event.data}"


def loads_event(event: SSEEvent) -> dict[str, Any]:
    """Return an event's JSON object; raise MalformedStream when it is not one."""
    try:
        value = json.loads(event.data)
    except ValueError:
        raise MalformedStream("an event's data is not JSON", _event_text(event)) from None
    if not isinstance(value, dict):
        raise MalformedStream("an event's data is not a JSON object", _event_text(event))
    return value


def json_object(value: Any, name: str) -> dict[str, Any]:
    """Return a JSON field that must be an object (missing or null reads as empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedStream(f"'{name}' is not an object", repr(value))
    return value


def optional_text(value: Any, name: str) -> str | None:
    """Return a JSON field that must be a string or null (a finish or stop reason)."""
    if value is not None and not isinstance(value, str):
        raise MalformedStream(f"'{name}' is not a string", repr(value))
    return value


def token_count(value: Any, name: str) -> int:
    """Return a JSON token count; raise MalformedStream unless it is a non-negative integer."""
    # bool is an int subclass, and a float or a numeric string is no count either.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedStream(f"'{name}' is not a non-negative integer", repr(value))
    return value

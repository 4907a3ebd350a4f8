"""What the HTTP backends share: one pooled async client, the request, status and errors.

A subclass says where to POST, what to send and how to turn the provider's SSE events
into chunks; this class owns the connection pool and maps transport failures to
``BackendError``. Leaving the ``async with`` early (cancel, time limit, gate rejection)
closes the response, and httpx drops a connection whose body was not read to the end,
so the provider sees the stream close at once.
"""

from __future__ import annotations

import abc
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx

from router.backends.base import Backend, BackendRequest, Chunk
from router.backends.errors import ConnectFailed, MalformedStream, status_error
from router.backends.sse import SSEEvent, iter_sse
from router.config import BackendConfig, Timeouts

# Bytes of an error body kept for the attempt's detail.
_ERROR_BODY_LIMIT = 4096


class HTTPBackend(Backend):
    """A backend that streams SSE from one HTTP endpoint through a pooled client."""

    def __init__(self, name: str, config: BackendConfig) -> None:
        super().__init__(name, config)
        max_connections = getattr(config, "max_connections", 100)
        self._client = httpx.AsyncClient(
            base_url=self.base_url(),
            headers=self.headers(),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            # Read timeouts are the stream's idle and first-token limits (Backend.stream).
            timeout=httpx.Timeout(connect=5.0, read=None, write=None, pool=None),
        )
        self._timeouts: dict[Timeouts, httpx.Timeout] = {}

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
    def parse(self, events: AsyncIterator[SSEEvent]) -> AsyncGenerator[Chunk, None]:
        """Turn the provider's events into chunks; raise a BackendError on a bad stream."""

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    def _timeout(self, timeouts: Timeouts) -> httpx.Timeout:
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            # The pool wait counts as connecting: no free slot is as bad as no answer.
            timeout = httpx.Timeout(
                connect=timeouts.connect_s, read=None, write=timeouts.connect_s,
                pool=timeouts.connect_s,
            )
            self._timeouts[timeouts] = timeout
        return timeout

    async def _stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        content = json.dumps(self.body(request), separators=(",", ":")).encode()
        http_request = self._client.build_request(
            "POST", self.path(), content=content,
            headers={"content-type": "application/json", "accept": "text/event-stream"},
            timeout=self._timeout(request.timeouts),
        )
        try:
            response = await self._client.send(http_request, stream=True)
        except httpx.TimeoutException as exc:
            raise ConnectFailed(
                f"connect timeout after {request.timeouts.connect_s:g} s ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
        try:
            if response.status_code >= 300:
                body = await _read_limited(response)
                raise status_error(response.status_code, body)
            chunks = self.parse(iter_sse(response.aiter_bytes()))
            try:
                async for chunk in chunks:
                    yield chunk
            except httpx.TransportError as exc:
                raise MalformedStream(f"stream cut: {type(exc).__name__}: {exc}") from None
            finally:
                await chunks.aclose()
        finally:
            await response.aclose()


async def _read_limited(response: httpx.Response) -> str:
    body = b""
    try:
        async for part in response.aiter_bytes():
            body += part
            if len(body) >= _ERROR_BODY_LIMIT:
                break
    except httpx.TransportError:
        pass  # the status already says it failed; a cut error body only loses detail
    return body[:_ERROR_BODY_LIMIT].decode("utf-8", errors="replace")


def loads_event(event: SSEEvent) -> dict[str, Any]:
    """Return an event's JSON object; raise MalformedStream when it is not one."""
    try:
        value = json.loads(event.data)
    except ValueError:
        raise MalformedStream(f"not JSON in a {event.event!r} event: {event.data[:80]!r}") from None
    if not isinstance(value, dict):
        raise MalformedStream(f"expected a JSON object in a {event.event!r} event")
    return value

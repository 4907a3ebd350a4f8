"""Server-sent events, parsed once for every backend (WHATWG "event stream" format)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type ("message" unless the stream named one) and data."""

    event: str
    data: str


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncIterator[SSEEvent]:
    """Yield the events of an SSE byte stream; comments, ids and retry fields are skipped."""
    buffer = b""
    event = ""
    data: list[str] = []
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        # Most providers send whole events per read; split lines without decoding the rest.
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            raw = buffer[:newline]
            buffer = buffer[newline + 1 :]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw:
                if data:
                    yield SSEEvent(event or "message", "\n".join(data))
                event, data = "", []
                continue
            line = raw.decode("utf-8", errors="replace")
            name, sep, value = line.partition(":")
            if not sep:
                value = ""
            elif value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            # "" is a comment (": keep-alive"); "id" and "retry" do not matter here.
    # A last event without its blank line is not dispatched (the spec's rule); the
    # backend sees the stream end without its end marker and reports it.

"""Server-sent events, parsed once for every backend (WHATWG "event stream" format)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type ("message" unless the stream named one) and data."""

    event: str
    data: str


async def iter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[list[SSEEvent], None]:
    """Yield the events each read of an SSE byte stream completes, as one list per read.

    Comments, ids and retry fields are skipped. A list per read lets a backend hand on
    everything that arrived together at once (a busy stream's tokens come in bunches).
    """
    pending = b""
    event = ""
    data: list[str] = []
    async for chunk in chunks:
        events: list[SSEEvent] = []
        if pending:
            chunk = pending + chunk
        # Split every complete line at once; the last piece is an unfinished line.
        *lines, pending = chunk.split(b"\n")
        for raw in lines:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw:
                if data:
                    events.append(SSEEvent(event or "message", "\n".join(data)))
                    data = []
                event = ""
            elif raw.startswith(b"data:"):
                value = raw[6:] if raw.startswith(b"data: ") else raw[5:]
                data.append(value.decode("utf-8", errors="replace"))
            elif raw.startswith(b"event:"):
                event = raw[6:].strip().decode("utf-8", errors="replace")
            # Anything else is a comment (": keep-alive"), "id", "retry" or unknown: skipped.
        if events:
            yield events
    # A last event without its blank line is not dispatched (the spec's rule); the
    # backend sees the stream end without its end marker and reports it.

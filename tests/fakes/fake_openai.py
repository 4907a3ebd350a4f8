"""A small OpenAI-compatible streaming server that injects the failures real providers show.

Each request picks its behaviour by its model name (or an ``x-fake-scenario`` header, or
the server's ``scenarios`` map from model name to scenario), ``NAME`` or ``NAME:ARG``:

- ``ok`` (or any unknown name): a normal stream at the server's token rate
- ``slow-first:S``: headers at once, the first token after S seconds
- ``stall:K``: K tokens, then silence until the client goes away
- ``http:CODE``: that HTTP status with a JSON error body (429, 500, ...)
- ``echo:CODE``: that HTTP status with an error body that quotes the request's headers,
  Authorization included, as some providers and proxies do on a 401
- ``malformed:K``: K tokens, then an event whose data is not JSON
- ``cut:K``: K tokens, then the connection is dropped mid-body
- ``error:K``: K tokens, then an ``{"error": ...}`` event
- ``lowlp``: a normal stream whose tokens have log-probabilities near -6
- ``nousage``: a normal stream without the usage chunk
- ``replay:FILE``: replay the recorded SSE stream tests/fixtures/FILE (either endpoint)
- ``say:TEXT``: a normal stream whose answer is TEXT (its words, in order)

``POST /v1/messages`` replays a recorded Anthropic Messages stream from tests/fixtures/.
``attempt_delays`` slows the next requests one by one: each chat request (an attempt,
to the router) takes the first delay off the list and waits that many more seconds before
its first token (or its error status).

The server counts open connections and records every request (when the client went
away, how many tokens it was sent) so tests can prove nothing leaks. ``refused_port`` is
a bound port that refuses connections; ``blackhole_port`` accepts none (a slow connect).

Run as its own process for the benchmark:
``python -m tests.fakes.fake_openai --port P --tokens-per-second R``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ANTHROPIC_FIXTURE = FIXTURES / "anthropic_messages_stream.sse"
WORDS = [
    "The",
    "quick",
    "answer",
    "is",
    "that",
    "routing",
    "each",
    "query",
    "to",
    "the",
    "cheapest",
    "model",
    "able",
    "to",
    "answer",
    "it",
    "saves",
    "money",
    "without",
    "hurting",
    "quality",
    "in",
    "any",
    "way",
    "a",
    "user",
    "would",
    "notice",
    ".",
]
NORMAL_LOGPROB = -0.15
LOW_LOGPROB = -6.0


@dataclass
class RequestRecord:
    """What the fake saw of one request."""

    path: str
    model: str
    scenario: str
    body: dict[str, Any]
    started_at: float
    headers: dict[str, str] = field(default_factory=dict)
    tokens_sent: int = 0
    finished_at: float | None = None
    completed: bool = False
    # When the server noticed the client close the connection mid-response.
    disconnected_at: float | None = None


class _ClientGone(Exception):
    """The client closed the connection mid-response."""


class _Conn:
    """One accepted connection: its streams and a watch for the client's EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.prefix = b""
        self.watch: asyncio.Task[bytes] | None = None

    def start_watch(self) -> None:
        self.watch = asyncio.ensure_future(self.reader.read(1))

    async def stop_watch(self) -> None:
        watch, self.watch = self.watch, None
        if watch is None:
            return
        if not watch.done():
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            return
        if not watch.cancelled() and watch.exception() is None:
            # The client already sent the next request's first byte: keep it.
            self.prefix += watch.result()

    def gone(self) -> bool:
        watch = self.watch
        if watch is None or not watch.done():
            return False
        return watch.cancelled() or watch.exception() is not None or watch.result() == b""

    async def sleep(self, seconds: float) -> None:
        """Sleep, raising _ClientGone as soon as the client closes the connection."""
        watch = self.watch
        if watch is None:
            await asyncio.sleep(seconds)
            return
        if not watch.done():
            await asyncio.wait((watch,), timeout=max(0.0, seconds))
        if self.gone():
            raise _ClientGone

    async def send(self, data: bytes) -> None:
        if self.gone():
            raise _ClientGone
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            raise _ClientGone from None


class FakeOpenAIServer:
    """The fake provider; start it with ``await start()`` on the loop that will serve it."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tokens_per_second: float = 1000.0,
        tokens: int = 16,
        first_token_ms: float = 0.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.tokens_per_second = tokens_per_second
        self.tokens = tokens
        self.first_token_ms = first_token_ms
        self.open_connections = 0
        self.total_connections = 0
        self.requests: list[RequestRecord] = []
        # Model name -> scenario, so a test can make a model fail and later heal it.
        self.scenarios: dict[str, str] = {}
        # Extra seconds before the first token, one per request in order of arrival.
        self.attempt_delays: list[float] = []
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._extra_sockets: list[socket.socket] = []
        self.refused_port = 0
        self.blackhole_port = 0

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen, and set up the refusing and the black-hole ports."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.requested_port, backlog=512
        )
        refused = socket.socket()
        refused.bind((self.host, 0))  # bound, never listening: connections are refused
        self.refused_port = refused.getsockname()[1]
        blackhole = socket.socket()
        blackhole.bind((self.host, 0))
        blackhole.listen(0)
        self.blackhole_port = blackhole.getsockname()[1]
        fillers = []
        for _ in range(3):
            # Fill the accept queue so that further SYNs are dropped: connects hang.
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((self.host, self.blackhole_port))
            fillers.append(filler)
        self._extra_sockets = [refused, blackhole, *fillers]

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._conns):
                writer.close()
            await self._server.wait_closed()
        for sock in self._extra_sockets:
            sock.close()

    def stats(self) -> dict[str, Any]:
        """Return the connection and request counts."""
        return {
            "open_connections": self.open_connections,
            "total_connections": self.total_connections,
            "requests": len(self.requests),
            "open_streams": sum(1 for r in self.requests if r.finished_at is None),
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self.total_connections += 1
        self._conns.add(writer)
        conn = _Conn(reader, writer)
        try:
            while await self._serve_one(conn):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away between requests
        finally:
            self._conns.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.open_connections -= 1

    async def _serve_one(self, conn: _Conn) -> bool:
        """Serve one request; return whether the connection stays open."""
        prefix, conn.prefix = conn.prefix, b""
        head = await _read_head(conn.reader)
        if prefix:
            head = prefix + head
            if head == prefix:
                raise asyncio.IncompleteReadError(prefix, None)
        if not head:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await conn.reader.readexactly(length) if length else b""
        if method == "GET" and path == "/stats":
            await _send_json(conn, 200, self.stats())
            return True
        body: dict[str, Any] = json.loads(raw) if raw else {}
        model = str(body.get("model", ""))
        scenario = headers.get("x-fake-scenario") or self.scenarios.get(model, model)
        record = RequestRecord(path, model, scenario, body, time.monotonic(), headers)
        self.requests.append(record)
        conn.start_watch()
        try:
            if scenario.startswith("replay:"):
                keep = await self._replay(conn, record, FIXTURES / scenario.partition(":")[2])
            elif path.endswith("/messages"):
                keep = await self._anthropic(conn, record)
            elif path.endswith("/chat/completions"):
                keep = await self._openai(conn, record, body)
            else:
                await _send_json(conn, 404, {"error": {"message": f"no route {path}"}})
                keep = True
            record.completed = keep
        except _ClientGone:
            record.disconnected_at = time.monotonic()
            keep = False
        finally:
            record.finished_at = time.monotonic()
            await conn.stop_watch()
        return keep

    async def _openai(self, conn: _Conn, record: RequestRecord, body: dict[str, Any]) -> bool:
        name, _, arg = record.scenario.partition(":")
        slowed = self.attempt_delays.pop(0) if self.attempt_delays else 0.0
        if name == "http":
            await conn.sleep(slowed)
            await _send_error(conn, int(arg or 500), {"type": "fake_error"})
            return True
        if name == "echo":
            error = {
                "message": "Incorrect API key provided: "
                f"{record.headers.get('authorization', '(none)')}",
                "type": "invalid_request_error",
                "request_headers": record.headers,
            }
            await _send_json(conn, int(arg or 401), {"error": error})
            return True
        # OpenAI's newer models take the limit as max_completion_tokens.
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.tokens)
        words = arg.split() if name == "say" else WORDS
        tokens = len(words) if name == "say" else self.tokens
        count = min(tokens, max_tokens)
        want_logprobs = bool(body.get("logprobs"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        logprob = LOW_LOGPROB if name == "lowlp" else NORMAL_LOGPROB
        stop_after = int(arg) if name in {"stall", "malformed", "cut", "error"} else None
        await conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": record.model,
        }
        await _send_event(
            conn,
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            },
        )
        interval = 1.0 / self.tokens_per_second
        delay = self.first_token_ms / 1000.0 + slowed
        if name == "slow-first":
            delay += float(arg or 1.0)
        start = time.monotonic() + delay
        for i in range(count):
            if stop_after is not None and i == stop_after:
                return await self._fault(conn, name)
            await conn.sleep(start + i * interval - time.monotonic())
            word = words[i % len(words)]
            text = word if i == 0 else " " + word
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if want_logprobs:
                choice["logprobs"] = {
                    "content": [
                        {
                            "token": text,
                            "logprob": logprob,
                            "bytes": list(text.encode()),
                            "top_logprobs": [
                                {"token": text, "logprob": logprob, "bytes": list(text.encode())}
                            ],
                        }
                    ]
                }
            await _send_event(conn, {**base, "choices": [choice]})
            record.tokens_sent += 1
        if stop_after is not None and stop_after >= count:
            return await self._fault(conn, name)
        finish = "length" if count == max_tokens and count < tokens else "stop"
        await _send_event(
            conn, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        )
        if include_usage and name != "nousage":
            prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
            await _send_event(
                conn,
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": max(1, prompt),
                        "completion_tokens": count,
                        "total_tokens": max(1, prompt) + count,
                    },
                },
            )
        await _send_chunk(conn, b"data: [DONE]\n\n")
        await conn.send(b"0\r\n\r\n")
        return True

    async def _fault(self, conn: _Conn, name: str) -> bool:
        if name == "stall":
            await conn.sleep(3600.0)
        elif name == "malformed":
            await _send_chunk(conn, b'data: {"choices": [{"delta": {"content\n\n')
            await conn.sleep(3600.0)  # a real server may go on; the client must give up
        elif name == "error":
            await _send_event(
                conn, {"error": {"message": "injected error event", "type": "server_error"}}
            )
            await _send_chunk(conn, b"data: [DONE]\n\n")
            await conn.send(b"0\r\n\r\n")
            return True
        # "cut": drop the connection without ending the chunked body.
        conn.writer.transport.abort()
        return False

    async def _anthropic(self, conn: _Conn, record: RequestRecord) -> bool:
        name, _, arg = record.scenario.partition(":")
        if name == "http":
            await _send_error(conn, int(arg or 500), {"type": "overloaded_error"}, anthropic=True)
            return True
        return await self._replay(conn, record, ANTHROPIC_FIXTURE)

    async def _replay(self, conn: _Conn, record: RequestRecord, fixture: Path) -> bool:
        """Send a recorded SSE stream, one event per token interval."""
        events = fixture.read_bytes().split(b"\n\n")
        await conn.send(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        interval = 1.0 / self.tokens_per_second
        for event in events:
            if not event.strip():
                continue
            await conn.sleep(interval)
            await _send_chunk(conn, event + b"\n\n")
            if b"content_block_delta" in event or b'"content":' in event:
                record.tokens_sent += 1
        await conn.send(b"0\r\n\r\n")
        return True


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return b""


async def _send_chunk(conn: _Conn, data: bytes) -> None:
    await conn.send(b"%x\r\n%s\r\n" % (len(data), data))


async def _send_event(conn: _Conn, obj: dict[str, Any]) -> None:
    await _send_chunk(conn, b"data: " + json.dumps(obj).encode() + b"\n\n")


async def _send_error(
    conn: _Conn, status: int, error: dict[str, Any], *, anthropic: bool = False
) -> None:
    error = {**error, "message": f"injected HTTP {status}"}
    body = {"type": "error", "error": error} if anthropic else {"error": error}
    await _send_json(conn, status, body)


async def _send_json(conn: _Conn, status: int, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}.get(status, "Error")
    await conn.send(
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (status, reason.encode(), len(body), body)
    )


class FakeServerThread:
    """Run a FakeOpenAIServer on its own event loop in a daemon thread (for tests)."""

    def __init__(self, **kwargs: Any) -> None:
        self.server = FakeOpenAIServer(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> FakeOpenAIServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self.server

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)


@contextlib.contextmanager
def fake_process(
    tokens_per_second: float, tokens: int = 16, first_token_ms: float = 0.0
) -> Iterator[str]:
    """Run the fake as its own process on a free loopback port; yield its root URL."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.fake_openai",
            "--port",
            "0",
            "--tokens-per-second",
            str(tokens_per_second),
            "--tokens",
            str(tokens),
            "--first-token-ms",
            str(first_token_ms),
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("fake_openai listening on "):
            raise RuntimeError(f"the fake server did not start: {line!r}")
        yield "http://" + line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        returncode = process.wait(10)
        if process.stdout:
            process.stdout.close()
    if returncode != 0:
        raise RuntimeError(f"the fake server exited {returncode}")


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.fake_openai")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens-per-second", type=float, default=100.0)
    parser.add_argument("--tokens", type=int, default=16, help="tokens per normal answer")
    parser.add_argument("--first-token-ms", type=float, default=0.0)
    args = parser.parse_args(argv)

    async def serve() -> None:
        server = FakeOpenAIServer(
            args.host,
            args.port,
            tokens_per_second=args.tokens_per_second,
            tokens=args.tokens,
            first_token_ms=args.first_token_ms,
        )
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"fake_openai listening on {server.host}:{server.port}", flush=True)
        await stop.wait()
        await server.stop()

    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()

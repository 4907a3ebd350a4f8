"""Configure structlog once at start-up: JSON lines (or console) on stdout, with pid and worker."""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import sys
import time
from collections.abc import MutableMapping
from json.encoder import encode_basestring_ascii as json_string
from typing import Any, TextIO

import structlog

from router.config import LoggingConfig

_process: dict[str, Any] = {"pid": os.getpid(), "worker": None}


def set_worker(index: int | None) -> None:
    """Stamp later log lines with this process's pid and worker index (after a fork)."""
    _process["pid"] = os.getpid()
    _process["worker"] = index


def _add_process(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    event_dict["pid"] = _process["pid"]
    if _process["worker"] is not None:
        event_dict["worker"] = _process["worker"]
    return event_dict


class IsoTimestamp:
    """Stamp events with ISO-8601 UTC time, formatting the date part once per second.

    Same output as structlog's ``TimeStamper(fmt="iso", utc=True)`` at a tenth of the cost,
    which counts on a line written for every RPC.
    """

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict["timestamp"] = self.now()
        return event_dict

    def now(self) -> str:
        """Return the current time as ISO-8601 UTC with microseconds."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"


class BatchedLineWriter:
    """A structlog logger that writes its lines in batches.

    A write to stdout per RPC line wakes whatever reads the log (a pipe to a collector)
    once per RPC, which cost a fifth of Route's throughput on two cores. Lines are kept
    until ``max_delay_s`` has passed (on the running event loop) or ``max_bytes`` are
    waiting; warnings and errors, lines logged outside an event loop, and exit flush at once.
    """

    def __init__(self, file: TextIO, max_delay_s: float = 0.05, max_bytes: int = 64 * 1024) -> None:
        self._file = file
        self._max_delay_s = max_delay_s
        self._max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._scheduled = False
        atexit.register(self.flush)

    def msg(self, message: str) -> None:
        """Queue one line; flush when the batch is full or no event loop can flush it later."""
        self._lines.append(message)
        self._size += len(message) + 1
        if self._size >= self._max_bytes:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(self._max_delay_s, self.flush)

    def urgent(self, message: str) -> None:
        """Write one line and everything queued before it, now."""
        self._lines.append(message)
        self.flush()

    def flush(self) -> None:
        """Write the queued lines."""
        self._scheduled = False
        if not self._lines:
            return
        lines, self._lines, self._size = self._lines, [], 0
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()

    debug = info = log = msg
    warn = warning = error = err = critical = fatal = exception = failure = urgent


_writer: BatchedLineWriter | None = None
_timestamp = IsoTimestamp()
# When configure_logging set up JSON lines at info level: its processors (structlog keeps
# this very list, and structlog.testing.capture_logs edits it in place), its renderer and
# its writer. ``write_rpc_line`` renders the per-RPC line itself while they are in force.
_json_pipeline: tuple[list[Any], Any, BatchedLineWriter] | None = None


def json_number(value: float | None) -> str:
    """Return a float (or None) exactly as json.dumps writes it."""
    if value is None:
        return "null"
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def write_rpc_line(
    method: str,
    request_id: str,
    tenant: str,
    tier: str,
    score: float | None,
    decision_micros: float | None,
    status: str,
    duration_ms: float,
    extra: tuple[tuple[str, str | int], ...] = (),
) -> bool:
    """Write an info-level "rpc" line as the JSON pipeline would; False when it is not in force.

    The line is the one ``structlog.get_logger().info("rpc", method=..., ...)`` writes through
    ``configure_logging``'s JSON pipeline, byte for byte (tests/unit/server/test_logs.py
    compares them), without its processors: 5 us of the 25 us a line cost per RPC.
    """
    if _json_pipeline is None:
        return False
    processors, renderer, writer = _json_pipeline
    if processors[-1] is not renderer:
        return False  # someone (a test's capture_logs) replaced the pipeline
    pairs = (
        "".join(
            f", {json_string(key)}: "
            + (json_string(value) if isinstance(value, str) else int.__repr__(value))
            for key, value in extra
        )
        if extra
        else ""
    )
    worker = _process["worker"]
    tail = "}" if worker is None else f', "worker": {worker}}}'
    line = (
        f'{{"method": {json_string(method)}, "request_id": {json_string(request_id)}, '
        f'"tenant": {json_string(tenant)}, "tier": {json_string(tier)}, '
        f'"score": {json_number(score)}, "decision_micros": {json_number(decision_micros)}, '
        f'"status": {json_string(status)}, "duration_ms": {json_number(duration_ms)}{pairs}, '
        f'"event": "rpc", "level": "info", "timestamp": "{_timestamp.now()}", '
        f'"pid": {_process["pid"]}{tail}'
    )
    writer.msg(line)
    return True


def flush_logs() -> None:
    """Write every queued log line (before a fork, and when a process stops)."""
    if _writer is not None:
        _writer.flush()


def configure_logging(settings: LoggingConfig) -> None:
    """Send structured logs to stdout at the configured level and format."""
    global _writer, _json_pipeline
    flush_logs()
    writer = _writer = BatchedLineWriter(sys.stdout)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors = [
        structlog.processors.add_log_level,
        _timestamp,
        _add_process,
        structlog.processors.format_exc_info,
        renderer,
    ]
    json_at_info = settings.format == "json" and settings.level in ("debug", "info")
    _json_pipeline = (processors, renderer, writer) if json_at_info else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(settings.level),
        logger_factory=lambda *args: writer,
        # Configured once per process before the first line; a changed level or format
        # takes a restart (SIGHUP does not re-configure logging).
        cache_logger_on_first_use=True,
    )

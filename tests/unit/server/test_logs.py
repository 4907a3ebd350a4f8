"""The batched log writer: RPC lines in batches, urgent lines and loop-less lines at once."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from router.config import LoggingConfig
from router.server import logs
from router.server.logs import BatchedLineWriter


def test_lines_outside_an_event_loop_are_written_at_once() -> None:
    out = io.StringIO()
    writer = BatchedLineWriter(out)
    writer.info('{"event": "listening"}')
    assert out.getvalue() == '{"event": "listening"}\n'


async def test_lines_in_an_event_loop_are_batched_until_the_delay() -> None:
    out = io.StringIO()
    writer = BatchedLineWriter(out, max_delay_s=0.05)
    writer.info("one")
    writer.info("two")
    assert out.getvalue() == ""
    await asyncio.sleep(0.2)
    assert out.getvalue() == "one\ntwo\n"
    writer.info("three")
    assert out.getvalue() == "one\ntwo\n"
    await asyncio.sleep(0.2)
    assert out.getvalue() == "one\ntwo\nthree\n"


async def test_a_full_batch_is_written_without_waiting() -> None:
    out = io.StringIO()
    writer = BatchedLineWriter(out, max_delay_s=60, max_bytes=10)
    writer.info("12345")
    assert out.getvalue() == ""
    writer.info("67890")
    assert out.getvalue() == "12345\n67890\n"


async def test_errors_flush_everything_queued_before_them_in_order() -> None:
    out = io.StringIO()
    writer = BatchedLineWriter(out, max_delay_s=60)
    writer.info("rpc 1")
    writer.error("boom")
    assert out.getvalue() == "rpc 1\nboom\n"
    writer.warning("careful")
    assert out.getvalue() == "rpc 1\nboom\ncareful\n"


@pytest.fixture
def json_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Configure the service's JSON logging into a string; restore structlog afterwards."""
    out = io.StringIO()
    saved = structlog.get_config()
    monkeypatch.setattr(sys, "stdout", out)
    # Both lines of a comparison carry the same time.
    monkeypatch.setattr(logs.IsoTimestamp, "now", lambda self: "2026-11-30T12:00:00.123456Z")
    logs.configure_logging(LoggingConfig())
    yield out
    logs.flush_logs()
    monkeypatch.setattr(logs, "_json_pipeline", None)
    structlog.reset_defaults()
    structlog.configure(**saved)
    logs.set_worker(None)


RPC_LINES = [
    ("Route", "0a1b2c3d4e00000001", "", "cheap", 0.125, 4.75, "OK", 0.338, ()),
    ("Complete", 'q"uo\\te\t\n\x01', "tenant-é-日本", "strong", None, None, "INVALID_ARGUMENT",
     12.0, (("error", "prompt: empty \u2028 \ud800"),)),
    ("Feedback", "r-1", "t", "", 1e-7, 123456789.5, "UNAVAILABLE", 0.0,
     (("trace_id", "0af7651916cd43dd8448eb211c80319c"), ("span_id", "b7ad6b7169203331"),
      ("error", "all tiers down"))),
    ("Route", "x", "y", "z", float("nan"), float("inf"), "OK", -0.001, ()),
]  # fmt: skip


@pytest.mark.parametrize("worker", [None, 3])
@pytest.mark.parametrize("line", RPC_LINES)
def test_the_rpc_line_is_the_json_pipelines_byte_for_byte(
    json_logging: io.StringIO, line: tuple[Any, ...], worker: int | None
) -> None:
    method, request_id, tenant, tier, score, micros, status, duration_ms, extra = line
    logs.set_worker(worker)
    structlog.get_logger().info(
        "rpc",
        method=method,
        request_id=request_id,
        tenant=tenant,
        tier=tier,
        score=score,
        decision_micros=micros,
        status=status,
        duration_ms=duration_ms,
        **dict(extra),
    )
    logs.flush_logs()
    assert logs.write_rpc_line(
        method, request_id, tenant, tier, score, micros, status, duration_ms, extra
    )
    logs.flush_logs()
    by_structlog, direct = json_logging.getvalue().splitlines()
    assert direct == by_structlog


def test_the_rpc_line_steps_aside_for_capture_logs(json_logging: io.StringIO) -> None:
    with structlog.testing.capture_logs() as captured:
        assert not logs.write_rpc_line("Route", "r", "", "cheap", 0.5, 1.0, "OK", 0.1)
    assert captured == []
    assert logs.write_rpc_line("Route", "r", "", "cheap", 0.5, 1.0, "OK", 0.1)


@pytest.mark.parametrize(
    "settings", [LoggingConfig(format="console"), LoggingConfig(level="warning")]
)
def test_the_rpc_line_is_left_to_structlog_unless_json_at_info(
    json_logging: io.StringIO, settings: LoggingConfig
) -> None:
    logs.configure_logging(settings)
    assert not logs.write_rpc_line("Route", "r", "", "cheap", 0.5, 1.0, "OK", 0.1)

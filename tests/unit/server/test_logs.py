"""The batched log writer: RPC lines in batches, urgent lines and loop-less lines at once."""

from __future__ import annotations

import asyncio
import io

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

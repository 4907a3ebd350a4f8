from collections.abc import AsyncIterator

from router.backends.sse import SSEEvent, iter_sse


async def _parts(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _events(*parts: bytes) -> list[SSEEvent]:
    return [event async for batch in iter_sse(_parts(*parts)) for event in batch]


async def test_events_split_across_reads_are_reassembled() -> None:
    events = await _events(b'data: {"a"', b": 1}\n", b"\n", b"data: two\n\n")
    assert events == [SSEEvent("message", '{"a": 1}'), SSEEvent("message", "two")]


async def test_event_names_multiline_data_and_crlf() -> None:
    events = await _events(b"event: delta\r\ndata: one\r\ndata: two\r\n\r\n")
    assert events == [SSEEvent("delta", "one\ntwo")]


async def test_comments_ids_and_empty_events_are_skipped() -> None:
    events = await _events(b": keep-alive\n\nid: 7\nretry: 10\n\ndata:x\n\n")
    assert events == [SSEEvent("message", "x")]


async def test_a_last_event_without_its_blank_line_is_not_dispatched() -> None:
    assert await _events(b"data: complete\n\ndata: cut") == [SSEEvent("message", "complete")]


async def test_the_event_name_resets_after_each_event() -> None:
    events = await _events(b"event: ping\ndata: {}\n\ndata: plain\n\n")
    assert [e.event for e in events] == ["ping", "message"]


async def test_the_events_of_one_read_come_as_one_list() -> None:
    batches = [b async for b in iter_sse(_parts(b"data: a\n\ndata: b\n\ndata: c", b"\n\n"))]
    assert batches == [
        [SSEEvent("message", "a"), SSEEvent("message", "b")],
        [SSEEvent("message", "c")],
    ]

"""The engine against the fake provider run as its own process, as the benchmark runs it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest

from router.completion import CompletionEngine
from router.domain import ChatMessage, CompletionSummary, GenerationOptions, TextDelta
from tests.fakes.fake_openai import fake_process
from tests.fakes.support import collect, decision, fake_config, text_of


@pytest.fixture
def fake_url() -> Iterator[str]:
    with fake_process(tokens_per_second=50, tokens=20) as url:
        yield url


async def _stats(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/stats") as response:
        return dict(await response.json())


async def test_a_cancelled_stream_closes_its_connection_at_the_other_process(
    fake_url: str,
) -> None:
    config = fake_config(f"{fake_url}/v1", ("ok", "ok"))
    engine = CompletionEngine(config)
    messages = (ChatMessage("user", "hello"),)
    try:
        events, error = await collect(
            engine.run(decision(0, config), messages, GenerationOptions(), max_tier_index=1)
        )
        assert error is None and len(text_of(events).split()) == 20
        assert isinstance(events[-1], CompletionSummary)
        assert (await _stats(fake_url))["open_streams"] == 0

        run = engine.run(decision(0, config), messages, GenerationOptions(), max_tier_index=1)
        assert isinstance(await anext(run), TextDelta)
        assert (await _stats(fake_url))["open_streams"] == 1
        await run.aclose()
        deadline = time.monotonic() + 2.0
        while (await _stats(fake_url))["open_streams"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stats = await _stats(fake_url)
        assert stats["open_streams"] == 0 and stats["requests"] == 2
    finally:
        await engine.aclose()

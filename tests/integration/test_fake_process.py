"""The engine against the fake provider run as its own process, as the benchmark runs it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from router.completion import CompletionEngine
from router.config import parse_config
from router.domain import ChatMessage, CompletionSummary, GenerationOptions, TextDelta
from tests.fakes.support import collect, decision, text_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_process() -> Iterator[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.fake_openai",
            "--port",
            "0",
            "--tokens-per-second",
            "50",
            "--tokens",
            "20",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("fake_openai listening on "), line
        yield "http://" + line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        assert process.wait(10) == 0
        if process.stdout:
            process.stdout.close()


async def _stats(url: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/stats") as response:
        return dict(await response.json())


async def test_a_cancelled_stream_closes_its_connection_at_the_other_process(
    fake_process: str,
) -> None:
    config = parse_config(
        {
            "version": 1,
            "tiers": [
                {
                    "name": "cheap",
                    "model": "ok",
                    "backend": "fake",
                    "price": {"input_per_mtok": 1, "output_per_mtok": 2},
                },
                {
                    "name": "strong",
                    "model": "ok",
                    "backend": "fake",
                    "price": {"input_per_mtok": 3, "output_per_mtok": 4},
                },
            ],
            "backends": {"fake": {"kind": "openai", "base_url": f"{fake_process}/v1"}},
        },
        environ={},
    )
    engine = CompletionEngine(config)
    messages = (ChatMessage("user", "hello"),)
    try:
        events, error = await collect(
            engine.run(decision(0, config), messages, GenerationOptions(), max_tier_index=1)
        )
        assert error is None and len(text_of(events).split()) == 20
        assert isinstance(events[-1], CompletionSummary)
        assert (await _stats(fake_process))["open_streams"] == 0

        run = engine.run(decision(0, config), messages, GenerationOptions(), max_tier_index=1)
        assert isinstance(await anext(run), TextDelta)
        assert (await _stats(fake_process))["open_streams"] == 1
        await run.aclose()
        deadline = time.monotonic() + 2.0
        while (await _stats(fake_process))["open_streams"] and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stats = await _stats(fake_process)
        assert stats["open_streams"] == 0 and stats["requests"] == 2
    finally:
        await engine.aclose()

"""Helpers shared by the backend and completion tests: the fake server fixture and builders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest

from router.completion import CompletionEngine
from router.config import Config, parse_config
from router.domain import (
    ChatMessage,
    CompletionSummary,
    DecisionReason,
    Escalation,
    GenerationOptions,
    RoutingDecision,
    TextDelta,
)
from tests.fakes.fake_openai import FakeOpenAIServer, FakeServerThread

PRICES = (
    {"input_per_mtok": 0.25, "output_per_mtok": 0.5},
    {"input_per_mtok": 2.5, "output_per_mtok": 10.0},
    {"input_per_mtok": 15.0, "output_per_mtok": 75.0},
)


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    """Yield a fake OpenAI-compatible server running on its own loop and thread."""
    with FakeServerThread(tokens_per_second=2000.0, tokens=16) as server:
        yield server


TIER_NAMES = ("cheap", "strong", "expert")


def fake_config(
    fake: FakeOpenAIServer | str,
    models: tuple[str, ...] = ("ok", "ok", "ok"),
    *,
    tier_extra: dict[int, dict[str, Any]] | None = None,
    base_urls: dict[int, str] | None = None,
    completion: dict[str, Any] | None = None,
) -> Config:
    """Return a configuration whose tiers (cheapest first) ask the fake for ``models``.

    Tier i uses its own backend ``fake{i}`` (so each has its own circuit breaker), at the
    fake's URL (or the base URL given) unless ``base_urls`` says otherwise.
    """
    url = fake if isinstance(fake, str) else fake.base_url
    tier_extra = tier_extra or {}
    base_urls = base_urls or {}
    tiers = [
        {
            "name": TIER_NAMES[i],
            "model": m,
            "backend": f"fake{i}",
            "price": PRICES[i],
            **tier_extra.get(i, {}),
        }
        for i, m in enumerate(models)
    ]
    data: dict[str, Any] = {
        "version": 1,
        "tiers": tiers,
        "backends": {
            f"fake{i}": {"kind": "openai", "base_url": base_urls.get(i, url)}
            for i in range(len(models))
        },
    }
    if completion:
        data["completion"] = completion
    return parse_config(data, environ={})


class FakeClock:
    """A monotonic clock that moves only when a test moves it (``clock.now += 5``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def decision(index: int = 0, config: Config | None = None) -> RoutingDecision:
    """Return a routing decision for tier ``index``."""
    name = config.tiers[index].name if config else f"tier{index}"
    return RoutingDecision(
        request_id="req-1",
        tier=name,
        tier_index=index,
        model="m",
        backend="fake",
        score=0.1,
        levels=(1.0, 0.0, 0.0, 0.0, 0.0),
        rules=(),
        reason=DecisionReason.SCORE,
        estimated_prompt_tokens=12,
        estimated_cost_usd=0.0,
        strongest_tier_cost_usd=0.0,
        model_version="test",
        decision_micros=1.0,
    )


Event = TextDelta | Escalation | CompletionSummary


async def collect(events: AsyncIterator[Event]) -> tuple[list[Event], BaseException | None]:
    """Return every event of a run and the exception that ended it (None on success)."""
    seen: list[Event] = []
    try:
        async for event in events:
            seen.append(event)
    except Exception as exc:
        return seen, exc
    return seen, None


async def run_engine(
    config: Config,
    messages: Sequence[ChatMessage],
    generation: GenerationOptions,
    *,
    index: int = 0,
    max_tier: int | None = None,
) -> tuple[list[Event], BaseException | None, CompletionEngine]:
    """Run one completion on a fresh engine (closed after); return events, error, engine."""
    engine = CompletionEngine(config)
    top = len(config.tiers) - 1 if max_tier is None else max_tier
    try:
        events, error = await collect(
            engine.run(decision(index, config), messages, generation, max_tier_index=top)
        )
    finally:
        await engine.aclose()
    return events, error, engine


def text_of(events: list[Event]) -> str:
    """Return the delivered text."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.002)
    return predicate()

"""The engine against a real model: Gemma 3 270M served by llama.cpp on loopback.

Runs when ``scripts/install_llm.sh`` has installed the server and the model; skips with
the reason otherwise, unless MODELROUTER_REQUIRE_LLM is set (CI), where it must run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from router.backends.demo import ANSWER
from router.config import Config, parse_config
from router.domain import (
    AttemptOutcome,
    ChatMessage,
    CompletionSummary,
    Escalation,
    GenerationOptions,
    TextDelta,
)
from tests.fakes.support import run_engine, text_of
from tests.integration.llm_server import REQUIRE_ENV, llama_server, missing_packages

pytestmark = [pytest.mark.llm, pytest.mark.slow]

_missing = missing_packages()
if _missing and not os.environ.get(REQUIRE_ENV):
    pytest.skip(
        f"not installed: {', '.join(_missing)} (run scripts/install_llm.sh; set "
        f"{REQUIRE_ENV}=1 to make this a failure)",
        allow_module_level=True,
    )

MESSAGES = (ChatMessage("user", "What is the capital of France? Answer in one sentence."),)
GENERATION = GenerationOptions(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def gemma_url() -> Iterator[str]:
    assert not _missing, f"{REQUIRE_ENV} is set but these are missing: {_missing}"
    with llama_server() as url:
        yield url


def _config(url: str, gate: dict[str, Any]) -> Config:
    return parse_config(
        {
            "version": 1,
            "tiers": [
                {
                    "name": "cheap",
                    "model": "gemma-3-270m",
                    "backend": "gemma",
                    "price": {"input_per_mtok": 0.02, "output_per_mtok": 0.04},
                    "timeouts": {"connect_s": 5, "first_token_s": 60, "idle_s": 30, "total_s": 120},
                    "gate": gate,
                },
                {
                    "name": "strong",
                    "model": "demo-strong",
                    "backend": "demo",
                    "price": {"input_per_mtok": 2.5, "output_per_mtok": 10.0},
                },
            ],
            "backends": {
                "gemma": {"kind": "openai", "base_url": url},
                "demo": {"kind": "demo", "tokens_per_second": 1000},
            },
        },
        environ={},
    )


async def test_gemma_streams_through_the_engine_with_logprobs_reaching_the_gate(
    gemma_url: str,
) -> None:
    lenient = {
        "window_tokens": 4,
        "window_ms": 10000,
        "min_mean_logprob": -30.0,
        "low_logprob": -40.0,
        "max_low_logprob_share": 1.0,
    }
    events, error, _ = await run_engine(_config(gemma_url, lenient), MESSAGES, GENERATION)
    assert error is None, error
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 2, "the answer was not streamed"
    assert text_of(events).strip()
    summary = events[-1]
    assert isinstance(summary, CompletionSummary)
    assert summary.tier == "cheap" and summary.finish_reason in {"stop", "length"}
    (attempt,) = summary.attempts
    assert attempt.outcome is AttemptOutcome.OK
    gate = attempt.gate
    # The model's per-token log-probabilities reached the gate.
    assert gate.enabled and gate.passed and gate.held_tokens >= 4
    assert gate.mean_logprob is not None and gate.mean_logprob < 0.0
    assert gate.low_logprob_share is not None
    assert summary.usage.completion_tokens > 0


async def test_a_strict_gate_rejects_gemma_and_the_caller_sees_only_the_stronger_tier(
    gemma_url: str,
) -> None:
    strict = {"window_tokens": 4, "window_ms": 10000, "min_mean_logprob": 0.0}
    events, error, _ = await run_engine(_config(gemma_url, strict), MESSAGES, GENERATION)
    assert error is None, error
    assert isinstance(events[0], Escalation)
    rejected = events[0].attempt
    assert rejected.outcome is AttemptOutcome.GATE_REJECTED
    assert rejected.gate.mean_logprob is not None and rejected.gate.mean_logprob < 0.0
    assert text_of(events) == ANSWER.format(model="demo-strong")[: len(text_of(events))]
    summary = events[-1]
    assert isinstance(summary, CompletionSummary) and summary.tier == "strong"

"""The engine and the gRPC Complete against a real model: Gemma 3 270M served by llama.cpp.

Runs when ``scripts/install_llm.sh`` has installed the server and the model; skips with
the reason otherwise, unless MODELROUTER_REQUIRE_LLM is set (CI), where it must run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
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
from router.server import create_server
from tests.fakes.support import run_engine, text_of
from tests.integration.llm_server import REQUIRE_ENV, llama_server, skip_module_without_llm
from tests.integration.server.support import router_stub

pytestmark = [pytest.mark.llm, pytest.mark.slow]

_missing = skip_module_without_llm()

MESSAGES = (ChatMessage("user", "What is the capital of France? Answer in one sentence."),)
GENERATION = GenerationOptions(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def gemma_url() -> Iterator[str]:
    assert not _missing, f"{REQUIRE_ENV} is set but these are missing: {_missing}"
    with llama_server() as url:
        yield url


LENIENT_GATE = {
    "window_tokens": 4,
    "window_ms": 120000,
    "min_mean_logprob": -30.0,
    "low_logprob": -40.0,
    "max_low_logprob_share": 1.0,
}


def _config(url: str, gate: dict[str, Any], *, strong_on_gemma: bool = False) -> Config:
    """Return a gated Gemma tier under a stronger one on the demo backend (or Gemma too)."""
    cheap: dict[str, Any] = {
        "name": "cheap",
        "model": "gemma-3-270m",
        "backend": "gemma",
        "price": {"input_per_mtok": 0.02, "output_per_mtok": 0.04},
        "timeouts": {"connect_s": 5, "first_token_s": 120, "idle_s": 60, "total_s": 300},
        "gate": gate,
    }
    strong: dict[str, Any]
    if strong_on_gemma:
        strong = {**cheap, "name": "strong", "gate": None}
        strong["price"] = {"input_per_mtok": 0.2, "output_per_mtok": 0.4}
    else:
        strong = {
            "name": "strong",
            "model": "demo-strong",
            "backend": "demo",
            "price": {"input_per_mtok": 2.5, "output_per_mtok": 10.0},
        }
    # The shipped routing model is calibrated for three tiers: a two-tier server sets its own.
    strong["min_score"] = 0.5
    return parse_config(
        {
            "version": 1,
            "tiers": [cheap, strong],
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
    events, error, _ = await run_engine(_config(gemma_url, LENIENT_GATE), MESSAGES, GENERATION)
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
    strict = {"window_tokens": 4, "window_ms": 120000, "min_mean_logprob": 0.0}
    events, error, _ = await run_engine(_config(gemma_url, strict), MESSAGES, GENERATION)
    assert error is None, error
    assert isinstance(events[0], Escalation)
    rejected = events[0].attempt
    assert rejected.outcome is AttemptOutcome.GATE_REJECTED
    assert rejected.gate.mean_logprob is not None and rejected.gate.mean_logprob < 0.0
    assert text_of(events) == ANSWER.format(model="demo-strong")[: len(text_of(events))]
    summary = events[-1]
    assert isinstance(summary, CompletionSummary) and summary.tier == "strong"


async def test_complete_over_grpc_streams_gemmas_answer_with_usage_and_attempts(
    gemma_url: str,
) -> None:
    config = _config(gemma_url, LENIENT_GATE, strong_on_gemma=True)
    server = create_server(config, host="127.0.0.1", port=0, reuse_port=False)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = router_stub(channel).Complete(
                pb.CompleteRequest(
                    route=pb.RouteRequest(
                        prompt=MESSAGES[0].content,
                        request_id="llm-1",
                        hints=pb.TierHints(tier="cheap"),
                    ),
                    # Few tokens: llama.cpp computes log-probabilities slowly on 2 cores.
                    generation=pb.GenerationOptions(max_tokens=12, temperature=0.0),
                )
            )
            events = [event async for event in call]
            assert await call.code() == grpc.StatusCode.OK, await call.details()
    finally:
        await server.stop(0)
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds[0] == "decision" and kinds[-1] == "summary"
    assert set(kinds[1:-1]) == {"delta"}, kinds  # no escalation: Gemma answered
    decision, summary = events[0].decision, events[-1].summary
    assert (decision.request_id, decision.tier, decision.model) == (
        "llm-1",
        "cheap",
        "gemma-3-270m",
    )
    text = "".join(event.delta.text for event in events[1:-1])
    assert text.strip() and summary.delivered_chars == len(text)
    assert (summary.tier, summary.model, summary.backend) == ("cheap", "gemma-3-270m", "gemma")
    assert summary.finish_reason in {"stop", "length"}
    assert summary.usage.prompt_tokens > 0 and summary.usage.completion_tokens > 0
    assert summary.usage.completion_tokens <= 12
    (attempt,) = summary.attempts
    assert (attempt.index, attempt.tier, attempt.outcome) == (0, "cheap", pb.ATTEMPT_OUTCOME_OK)
    assert attempt.completion_tokens == summary.usage.completion_tokens
    assert attempt.first_token_ms > 0 and attempt.duration_ms >= attempt.first_token_ms
    assert summary.cost_usd > 0 and summary.strongest_tier_cost_usd > summary.cost_usd
    # Gemma's log-probabilities reached the gate through the real server, and its report
    # reached the caller.
    assert attempt.gate.enabled and attempt.gate.passed and attempt.gate.held_tokens >= 4
    assert attempt.gate.HasField("mean_logprob") and attempt.gate.mean_logprob < 0.0

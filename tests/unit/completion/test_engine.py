"""The engine against the fake provider: every fault, fallback, the gate, circuits, cost."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from router.backends import Backend, Chunk, create_backend
from router.backends.httpbase import StreamParser
from router.backends.openai import OpenAIBackend
from router.backends.sse import SSEEvent
from router.completion import CompletionEngine
from router.completion.cost import cost_usd
from router.config import BackendConfig, Config, OpenAIBackendConfig, default_config
from router.domain import (
    AttemptOutcome,
    BackendUnavailable,
    ChatMessage,
    CircuitState,
    CompletionSummary,
    DeadlineExceeded,
    Escalation,
    GenerationOptions,
    InvalidRequest,
    TextDelta,
)
from tests.fakes.fake_openai import WORDS, FakeOpenAIServer
from tests.fakes.support import (
    Event,
    FakeClock,
    collect,
    decision,
    eventually,
    fake_config,
    run_engine,
    text_of,
)

MESSAGES = (ChatMessage("user", "What are your business hours?"),)
FULL_ANSWER = " ".join(WORDS[:16])
FAST = {"timeouts": {"connect_s": 0.3, "first_token_s": 0.4, "idle_s": 0.3, "total_s": 5}}
DEFAULT_GENERATION = GenerationOptions()
GATE = {"gate": {"window_tokens": 8, "window_ms": 400}}


async def _run(
    config: Config,
    index: int = 0,
    max_tier: int | None = None,
    generation: GenerationOptions = DEFAULT_GENERATION,
) -> tuple[list[Event], BaseException | None, CompletionEngine]:
    return await run_engine(config, MESSAGES, generation, index=index, max_tier=max_tier)


def _summary(events: list[Event]) -> CompletionSummary:
    assert isinstance(events[-1], CompletionSummary)
    assert sum(isinstance(e, CompletionSummary) for e in events) == 1
    return events[-1]


def _models_requested(fake: FakeOpenAIServer) -> list[str]:
    return [r.model for r in fake.requests]


async def _no_leak(fake: FakeOpenAIServer) -> None:
    """Every response finished at the server and, after aclose, every connection closed."""
    assert await eventually(lambda: all(r.finished_at is not None for r in fake.requests))
    assert await eventually(lambda: fake.open_connections == 0)


async def test_a_healthy_tier_streams_its_answer_then_one_summary(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake)
    events, error, _ = await _run(config)
    assert error is None
    assert text_of(events) == FULL_ANSWER
    assert not any(isinstance(e, Escalation) for e in events)
    summary = _summary(events)
    assert (summary.tier, summary.tier_index, summary.model) == ("cheap", 0, "ok")
    assert summary.finish_reason == "stop"
    assert summary.delivered_chars == len(FULL_ANSWER)
    assert summary.usage.reported_by_backend and summary.usage.completion_tokens == 16
    prompt = summary.usage.prompt_tokens
    assert summary.cost_usd == pytest.approx(cost_usd(config.tiers[0].price, prompt, 16))
    assert summary.strongest_tier_cost_usd == pytest.approx(
        cost_usd(config.tiers[2].price, prompt, 16)
    )
    (attempt,) = summary.attempts
    assert attempt.outcome is AttemptOutcome.OK and attempt.first_token_ms > 0
    assert attempt.duration_ms >= attempt.first_token_ms
    assert 0 < summary.first_text_ms <= summary.duration_ms
    assert _models_requested(fake) == ["ok"]
    await _no_leak(fake)


FAULTS_BEFORE_TEXT = [
    ("http:429", AttemptOutcome.RATE_LIMITED, "HTTP 429"),
    ("http:500", AttemptOutcome.HTTP_ERROR, "HTTP 500"),
    ("slow-first:5", AttemptOutcome.TIMEOUT, "first_token timeout after 0.4 s"),
    ("stall:0", AttemptOutcome.TIMEOUT, "first_token timeout"),
    ("malformed:0", AttemptOutcome.MALFORMED_STREAM, "not JSON"),
    ("cut:0", AttemptOutcome.MALFORMED_STREAM, "stream cut"),
    ("error:0", AttemptOutcome.ERROR_EVENT, "the provider sent an error event"),
]


@pytest.mark.parametrize(("model", "outcome", "detail"), FAULTS_BEFORE_TEXT)
async def test_a_failure_before_any_text_climbs_to_the_next_tier(
    fake: FakeOpenAIServer, model: str, outcome: AttemptOutcome, detail: str
) -> None:
    config = fake_config(fake, (model, "ok", "ok"), tier_extra={0: FAST})
    events, error, _ = await _run(config)
    assert error is None
    escalation = events[0]
    assert isinstance(escalation, Escalation)
    assert (escalation.from_tier, escalation.to_tier) == ("cheap", "strong")
    assert escalation.attempt.outcome is outcome and detail in escalation.attempt.detail
    assert sum(isinstance(e, Escalation) for e in events) == 1
    assert text_of(events) == FULL_ANSWER  # only the stronger tier's text
    summary = _summary(events)
    assert summary.tier == "strong"
    assert [a.outcome for a in summary.attempts] == [outcome, AttemptOutcome.OK]
    assert [a.tier for a in summary.attempts] == ["cheap", "strong"]
    assert summary.attempts[0].completion_tokens == 0
    assert _models_requested(fake) == [model, "ok"]
    await _no_leak(fake)


@pytest.mark.parametrize("where", ["refused", "blackhole"])
async def test_an_unreachable_tier_is_a_connect_error_and_climbs(
    fake: FakeOpenAIServer, where: str
) -> None:
    port = fake.refused_port if where == "refused" else fake.blackhole_port
    config = fake_config(fake, tier_extra={0: FAST}, base_urls={0: f"http://127.0.0.1:{port}/v1"})
    events, error, _ = await _run(config)
    assert error is None
    summary = _summary(events)
    assert [a.outcome for a in summary.attempts] == [
        AttemptOutcome.CONNECT_ERROR,
        AttemptOutcome.OK,
    ]
    assert summary.tier == "strong" and text_of(events) == FULL_ANSWER
    await _no_leak(fake)


@pytest.mark.parametrize(
    ("model", "cause"),
    [
        ("stall:3", "timeout: idle timeout"),
        ("cut:3", "malformed_stream: stream cut"),
        ("malformed:3", "malformed_stream: an event's data is not JSON"),
        ("error:3", "error_event: the provider sent an error event"),
    ],
)
async def test_a_failure_after_text_ends_with_a_summary_and_never_switches_models(
    fake: FakeOpenAIServer, model: str, cause: str
) -> None:
    config = fake_config(fake, (model, "ok", "ok"), tier_extra={0: FAST})
    events, error, _ = await _run(config)
    delivered = " ".join(WORDS[:3])
    assert text_of(events) == delivered
    summary = _summary(events)
    assert summary.finish_reason == "error" and summary.tier == "cheap"
    assert summary.delivered_chars == len(delivered)
    (attempt,) = summary.attempts
    assert attempt.outcome is AttemptOutcome.FAILED_AFTER_COMMIT
    assert attempt.detail.startswith(cause)
    assert attempt.completion_tokens == 3
    assert isinstance(error, BackendUnavailable)
    assert f"failed after {len(delivered)} chars were delivered" in str(error)
    assert _models_requested(fake) == [model]  # no other tier was asked
    await _no_leak(fake)


async def test_when_every_tier_fails_the_error_names_each_attempt_and_no_text_is_sent(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, ("http:500", "http:429", "malformed:0"))
    events, error, _ = await _run(config)
    assert isinstance(error, BackendUnavailable)
    message = str(error)
    assert "attempt 0 tier 'cheap' (fake0/http:500): http_error: HTTP 500" in message
    assert "attempt 1 tier 'strong' (fake1/http:429): rate_limited: HTTP 429" in message
    assert "attempt 2 tier 'expert' (fake2/malformed:0): malformed_stream" in message
    assert all(isinstance(e, Escalation) for e in events)
    assert [(e.from_tier, e.to_tier) for e in events if isinstance(e, Escalation)] == [
        ("cheap", "strong"),
        ("strong", "expert"),
    ]
    await _no_leak(fake)


async def test_fallback_only_climbs_and_stops_at_the_max_tier(fake: FakeOpenAIServer) -> None:
    config = fake_config(fake, ("ok", "http:500", "ok"))
    events, error, _ = await _run(config, index=1, max_tier=1)
    assert isinstance(error, BackendUnavailable)
    assert _models_requested(fake) == ["http:500"]  # never the cheaper "ok" tier
    assert events == []
    events, error, _ = await _run(config, index=1)
    assert error is None and _summary(events).tier == "expert"
    assert _models_requested(fake) == ["http:500", "http:500", "ok"]


async def test_max_attempts_bounds_the_climb(fake: FakeOpenAIServer) -> None:
    config = fake_config(fake, ("http:500", "http:500", "ok"), completion={"max_attempts": 2})
    _, error, _ = await _run(config)
    assert isinstance(error, BackendUnavailable)
    assert _models_requested(fake) == ["http:500", "http:500"]


async def test_a_bad_tier_range_is_invalid() -> None:
    engine = CompletionEngine(default_config())
    for index, top in ((2, 1), (0, 3)):
        events, error = await collect(
            engine.run(decision(index), MESSAGES, GenerationOptions(), max_tier_index=top)
        )
        assert isinstance(error, InvalidRequest) and events == []
        assert str(error).startswith("max_tier: tier range")
    await engine.aclose()


async def test_usage_is_estimated_and_marked_when_the_backend_reports_none(
    fake: FakeOpenAIServer,
) -> None:
    events, error, _ = await _run(fake_config(fake, ("nousage", "ok", "ok")))
    assert error is None
    usage = _summary(events).usage
    assert not usage.reported_by_backend
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 16)  # decision's estimate


# The pre-commit gate.


async def test_the_gate_rejects_an_unsure_start_and_the_caller_sees_only_the_stronger_tier(
    fake: FakeOpenAIServer,
) -> None:
    fake.tokens_per_second = 50.0  # slow enough that the rejection lands mid-stream
    config = fake_config(fake, ("lowlp", "ok", "ok"), tier_extra={0: GATE})
    events, error, _ = await _run(config)
    assert error is None
    escalation = events[0]
    assert isinstance(escalation, Escalation)
    assert escalation.attempt.outcome is AttemptOutcome.GATE_REJECTED
    assert text_of(events) == FULL_ANSWER
    summary = _summary(events)
    rejected, answered = summary.attempts
    gate = rejected.gate
    assert gate.enabled and not gate.passed
    # Tokens that arrive in one read are judged together, so the window may overfill.
    assert gate.held_tokens >= 8 and gate.mean_logprob == pytest.approx(-6.0)
    assert gate.low_logprob_share == 1.0 and gate.reason.startswith("mean logprob -6.000")
    assert (gate.window_tokens, gate.window_ms) == (8, 400)
    assert rejected.completion_tokens == gate.held_tokens and rejected.cost_usd > 0
    assert summary.cost_usd == pytest.approx(rejected.cost_usd + answered.cost_usd)
    assert not answered.gate.enabled
    cheap, strong = fake.requests
    assert cheap.body["logprobs"] is True and "logprobs" not in strong.body
    # The rejected stream was closed at once, not read to its end.
    assert await eventually(lambda: cheap.disconnected_at is not None)
    assert cheap.tokens_sent < 16
    await _no_leak(fake)


async def test_a_confident_start_passes_the_gate_and_is_delivered_whole(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, tier_extra={0: GATE})
    events, error, _ = await _run(config)
    assert error is None and text_of(events) == FULL_ANSWER
    first = events[0]
    assert isinstance(first, TextDelta) and first.text.startswith(" ".join(WORDS[:8]))
    summary = _summary(events)
    gate = summary.attempts[0].gate
    assert gate.passed and gate.held_tokens >= 8 and gate.reason == "passed"
    assert first.text == " ".join(WORDS[: gate.held_tokens])  # the held start, whole
    assert gate.mean_logprob == pytest.approx(-0.15)
    # The caller's first text came when the window closed, after the first token.
    assert summary.first_text_ms > summary.attempts[0].first_token_ms


async def test_the_gate_judges_after_window_ms_and_loses_no_token(
    fake: FakeOpenAIServer,
) -> None:
    fake.tokens_per_second = 25.0  # 8 tokens would take 320 ms; the window is 100 ms
    config = fake_config(fake, tier_extra={0: {"gate": {"window_tokens": 8, "window_ms": 100}}})
    events, error, _ = await _run(config)
    assert error is None and text_of(events) == FULL_ANSWER
    gate = _summary(events).attempts[0].gate
    assert gate.passed and 1 <= gate.held_tokens < 8
    assert gate.held_ms >= 100


async def test_the_gate_is_not_held_where_there_is_no_stronger_tier(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, ("ok", "ok", "lowlp"), tier_extra={2: GATE})
    events, error, _ = await _run(config, index=2)
    assert error is None and text_of(events) == FULL_ANSWER
    gate = _summary(events).attempts[0].gate
    assert gate.enabled and gate.passed and gate.held_tokens == 0
    assert gate.reason == "not held: no stronger tier to climb to"


async def test_the_gate_is_not_held_when_every_stronger_circuit_is_open(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(
        fake,
        ("lowlp", "http:500", "http:500"),
        tier_extra={0: GATE},
        completion={"circuit_breaker": {"failures": 1, "window_s": 30, "cooldown_s": 60}},
    )
    engine = CompletionEngine(config)
    try:
        # Open the circuits of the two stronger tiers.
        for index in (1, 2):
            _, error = await collect(
                engine.run(
                    decision(index, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=index
                )
            )
            assert isinstance(error, BackendUnavailable)
        events, error = await collect(
            engine.run(decision(0, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=2)
        )
    finally:
        await engine.aclose()
    # Nowhere to climb: the unsure start is delivered rather than thrown away.
    assert error is None and text_of(events) == FULL_ANSWER
    gate = _summary(events).attempts[0].gate
    assert gate.passed and gate.reason == "not held: no stronger tier to climb to"


async def test_a_fault_inside_the_gate_window_still_climbs(fake: FakeOpenAIServer) -> None:
    config = fake_config(fake, ("cut:3", "ok", "ok"), tier_extra={0: GATE})
    events, error, _ = await _run(config)
    assert error is None and text_of(events) == FULL_ANSWER
    outcomes = [a.outcome for a in _summary(events).attempts]
    assert outcomes == [AttemptOutcome.MALFORMED_STREAM, AttemptOutcome.OK]
    await _no_leak(fake)


# Circuit breaking.


async def test_the_circuit_opens_after_k_failures_skips_the_tier_and_closes_after_a_probe(
    fake: FakeOpenAIServer,
) -> None:
    fake.scenarios["flaky"] = "http:500"
    config = fake_config(
        fake,
        ("flaky", "ok", "ok"),
        completion={"circuit_breaker": {"failures": 2, "window_s": 30, "cooldown_s": 15}},
    )
    clock = FakeClock()
    engine = CompletionEngine(config, clock=clock)

    async def run() -> CompletionSummary:
        events, error = await collect(
            engine.run(decision(0, config), MESSAGES, GenerationOptions(), max_tier_index=2)
        )
        assert error is None
        return _summary(events)

    def state(name: str) -> Any:
        return {s.name: s for s in engine.backend_states()}[name]

    try:
        with capture_logs() as logs:
            for _ in range(2):
                assert (await run()).attempts[0].outcome is AttemptOutcome.HTTP_ERROR
            assert state("fake0").circuit is CircuitState.OPEN
            assert state("fake0").recent_failures == 2
            assert state("fake0").open_seconds_left == 15
            assert state("fake1").circuit is CircuitState.CLOSED
            skipped = await run()
            assert skipped.attempts[0].outcome is AttemptOutcome.CIRCUIT_OPEN
            assert skipped.attempts[0].completion_tokens == 0 and skipped.tier == "strong"
            assert _models_requested(fake).count("flaky") == 2  # skipped: not asked
            fake.scenarios["flaky"] = "ok"
            clock.now += 14.9
            assert state("fake0").circuit is CircuitState.OPEN
            assert (await run()).attempts[0].outcome is AttemptOutcome.CIRCUIT_OPEN
            clock.now += 0.1
            assert state("fake0").circuit is CircuitState.HALF_OPEN
            probe = await run()
            assert [a.outcome for a in probe.attempts] == [AttemptOutcome.OK]
            assert state("fake0").circuit is CircuitState.CLOSED
        events = [e["event"] for e in logs if e["event"].startswith("circuit_")]
        assert events == ["circuit_open", "circuit_half_open", "circuit_closed"]
    finally:
        await engine.aclose()
    await _no_leak(fake)


ONE_STRIKE = {"circuit_breaker": {"failures": 1, "window_s": 30, "cooldown_s": 60}}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_a_client_error_status_fails_the_attempt_but_not_the_circuit(
    fake: FakeOpenAIServer, status: int
) -> None:
    config = fake_config(fake, (f"http:{status}", "ok", "ok"), completion=ONE_STRIKE)
    engine = CompletionEngine(config)
    try:
        for _ in range(2):
            events, error = await collect(
                engine.run(decision(0, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=2)
            )
            assert error is None
            failed = _summary(events).attempts[0]
            assert failed.outcome is AttemptOutcome.HTTP_ERROR
            assert failed.detail.startswith(f"HTTP {status}")
        cheap = engine.backend_states()[0]
        assert cheap.circuit is CircuitState.CLOSED and cheap.recent_failures == 0
    finally:
        await engine.aclose()
    # Both requests reached the cheap tier: a request's own error does not skip it.
    assert _models_requested(fake).count(f"http:{status}") == 2


@pytest.mark.parametrize("status", [408, 429, 500, 503])
async def test_a_timeout_overload_or_server_error_status_counts_for_the_circuit(
    fake: FakeOpenAIServer, status: int
) -> None:
    config = fake_config(fake, (f"http:{status}", "ok", "ok"), completion=ONE_STRIKE)
    events, error, engine = await _run(config)
    assert error is None and _summary(events).tier == "strong"
    cheap = engine.backend_states()[0]
    assert cheap.circuit is CircuitState.OPEN and cheap.recent_failures == 1


async def test_a_client_error_on_the_half_open_probe_frees_the_probe_slot(
    fake: FakeOpenAIServer,
) -> None:
    fake.scenarios["flaky"] = "http:500"
    breaker = {"circuit_breaker": {"failures": 1, "window_s": 30, "cooldown_s": 60}}
    config = fake_config(fake, ("flaky", "ok", "ok"), completion=breaker)
    clock = FakeClock()
    engine = CompletionEngine(config, clock=clock)

    async def run() -> CompletionSummary:
        events, error = await collect(
            engine.run(decision(0, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=2)
        )
        assert error is None
        return _summary(events)

    try:
        await run()
        assert engine.backend_states()[0].circuit is CircuitState.OPEN
        clock.now += 60
        fake.scenarios["flaky"] = "http:400"
        probe = await run()
        assert probe.attempts[0].outcome is AttemptOutcome.HTTP_ERROR
        # Not a verdict on the backend: still half-open, and the next request probes again.
        assert engine.backend_states()[0].circuit is CircuitState.HALF_OPEN
        fake.scenarios["flaky"] = "ok"
        healed = await run()
        assert [a.outcome for a in healed.attempts] == [AttemptOutcome.OK]
        assert engine.backend_states()[0].circuit is CircuitState.CLOSED
    finally:
        await engine.aclose()


# A backend with a bug.


class _BuggyParser:
    """Parse normally, then raise a TypeError (a parser bug) after ``after`` text chunks."""

    def __init__(self, inner: StreamParser, after: int) -> None:
        self.inner = inner
        self.after = after
        self.texts = 0

    def feed(self, event: SSEEvent) -> Chunk | None:
        chunk = self.inner.feed(event)
        if chunk is not None and chunk.text:
            self.texts += 1
            if self.texts > self.after:
                raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
        return chunk

    def close(self) -> None:
        self.inner.close()


def _buggy_backends(after: int) -> Callable[[str, BackendConfig], Backend]:
    """Return a backend factory whose ``fake0`` backend's parser raises a TypeError."""

    class BuggyBackend(OpenAIBackend):
        def parser(self) -> _BuggyParser:  # type: ignore[override]
            return _BuggyParser(super().parser(), after)

    def make(name: str, config: BackendConfig) -> Backend:
        if name == "fake0":
            assert isinstance(config, OpenAIBackendConfig)
            return BuggyBackend(name, config)
        return create_backend(name, config)

    return make


async def _run_buggy(
    engine: CompletionEngine, config: Config
) -> tuple[list[Event], BaseException | None]:
    return await collect(
        engine.run(decision(0, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=2)
    )


@pytest.mark.parametrize("gated", [False, True], ids=["streaming", "holding-back"])
async def test_an_unexpected_error_in_a_backend_is_a_malformed_stream_that_climbs(
    fake: FakeOpenAIServer, gated: bool
) -> None:
    fake.tokens_per_second = 100.0
    config = fake_config(fake, tier_extra={0: GATE} if gated else {})
    engine = CompletionEngine(config, backend_factory=_buggy_backends(after=0))
    try:
        with capture_logs() as logs:
            events, error = await _run_buggy(engine, config)
        states = engine.backend_states()
    finally:
        await engine.aclose()
    assert error is None
    escalation = events[0]
    assert isinstance(escalation, Escalation) and escalation.to_tier == "strong"
    failed = escalation.attempt
    assert failed.outcome is AttemptOutcome.MALFORMED_STREAM
    assert failed.detail == "unexpected TypeError in backend"  # its message is in the log
    assert text_of(events) == FULL_ANSWER and _summary(events).tier == "strong"
    assert states[0].recent_failures == 1  # a circuit failure of the buggy backend
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["backend_unexpected_error"]
    # The buggy attempt's upstream stream was closed, not left generating.
    # Patient: the fake notices the close on its next write, late on a loaded machine.
    assert await eventually(lambda: fake.requests[0].disconnected_at is not None, 30)
    assert fake.requests[0].tokens_sent < 16
    await _no_leak(fake)


async def test_an_unexpected_error_after_text_ends_with_a_summary(
    fake: FakeOpenAIServer,
) -> None:
    # So fast that the tokens arrive in bunches: the text read with the bad event counts.
    fake.tokens_per_second = 1e6
    config = fake_config(fake)
    engine = CompletionEngine(config, backend_factory=_buggy_backends(after=3))
    try:
        events, error = await _run_buggy(engine, config)
    finally:
        await engine.aclose()
    assert isinstance(error, BackendUnavailable)
    assert text_of(events) == " ".join(WORDS[:3])
    summary = _summary(events)
    assert summary.finish_reason == "error" and summary.tier == "cheap"
    (attempt,) = summary.attempts
    assert attempt.outcome is AttemptOutcome.FAILED_AFTER_COMMIT
    assert attempt.detail.startswith("malformed_stream: unexpected TypeError")
    assert _models_requested(fake) == ["ok"]
    await _no_leak(fake)


async def test_an_unexpected_error_on_the_half_open_probe_reopens_the_circuit(
    fake: FakeOpenAIServer,
) -> None:
    breaker = {"circuit_breaker": {"failures": 1, "window_s": 30, "cooldown_s": 60}}
    config = fake_config(fake, completion=breaker)
    clock = FakeClock()
    engine = CompletionEngine(config, backend_factory=_buggy_backends(after=0), clock=clock)
    try:
        events, error = await _run_buggy(engine, config)
        assert error is None and _summary(events).tier == "strong"
        assert engine.backend_states()[0].circuit is CircuitState.OPEN
        clock.now += 60
        assert engine.backend_states()[0].circuit is CircuitState.HALF_OPEN
        events, error = await _run_buggy(engine, config)  # the probe
        assert error is None
        outcomes = [a.outcome for a in _summary(events).attempts]
        assert outcomes == [AttemptOutcome.MALFORMED_STREAM, AttemptOutcome.OK]
        # The failed probe opened the circuit again for a full cool-down (not stuck probing).
        state = engine.backend_states()[0]
        assert state.circuit is CircuitState.OPEN and state.open_seconds_left == 60
        events, error = await _run_buggy(engine, config)
        assert error is None
        assert _summary(events).attempts[0].outcome is AttemptOutcome.CIRCUIT_OPEN
    finally:
        await engine.aclose()
    await _no_leak(fake)


# Limits.


@pytest.mark.parametrize(("asked", "sent"), [(0, 5), (100, 5), (3, 3)])
async def test_max_tokens_reaches_the_upstream_clamped_to_the_tier_cap(
    fake: FakeOpenAIServer, asked: int, sent: int
) -> None:
    config = fake_config(fake, tier_extra={0: {"max_tokens": 5}})
    events, error, _ = await _run(config, generation=GenerationOptions(max_tokens=asked))
    assert error is None
    (request,) = fake.requests
    assert request.body["max_tokens"] == sent
    assert _summary(events).usage.completion_tokens == sent
    assert _summary(events).finish_reason == "length"


async def test_the_gate_judges_a_start_against_the_clamped_max_tokens(
    fake: FakeOpenAIServer,
) -> None:
    # A 3-token cap ends the answer inside an 8-token window: a short limit, not a cut start.
    config = fake_config(fake, tier_extra={0: {"max_tokens": 3, **GATE}})
    events, error, _ = await _run(config, generation=GenerationOptions(max_tokens=100))
    assert error is None
    summary = _summary(events)
    assert summary.tier == "cheap" and summary.attempts[0].gate.passed
    assert text_of(events) == " ".join(WORDS[:3])


# Cancellation and deadlines.


@pytest.mark.parametrize("gated", [False, True], ids=["streaming", "holding-back"])
async def test_cancelling_the_consumer_closes_the_upstream_within_100_ms(
    fake: FakeOpenAIServer, gated: bool
) -> None:
    fake.tokens_per_second = 40.0
    extra = {0: {"gate": {"window_tokens": 12, "window_ms": 5000}}} if gated else {}
    config = fake_config(fake, tier_extra=extra)
    engine = CompletionEngine(config)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.run(
            decision(0, config), MESSAGES, GenerationOptions(), max_tier_index=2
        ):
            started.set()

    try:
        with capture_logs() as logs:
            task = asyncio.create_task(consume())
            if gated:
                assert await eventually(
                    lambda: bool(fake.requests) and fake.requests[0].tokens_sent >= 3
                )
            else:
                await asyncio.wait_for(started.wait(), 5)
            cancelled_at = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await eventually(lambda: fake.requests[0].disconnected_at is not None, 2)
        record = fake.requests[0]
        assert record.disconnected_at is not None
        assert record.disconnected_at - cancelled_at < 0.1
        assert record.tokens_sent < 16 and len(fake.requests) == 1
        attempts = [e for e in logs if e["event"] == "completion_attempt"]
        assert [a["outcome"] for a in attempts] == ["cancelled"]
        assert engine.backend_states()[0].recent_failures == 0  # not the backend's fault
    finally:
        await engine.aclose()
    await _no_leak(fake)


async def test_closing_the_generator_or_a_deadline_closes_the_upstream(
    fake: FakeOpenAIServer,
) -> None:
    fake.tokens_per_second = 40.0
    config = fake_config(fake)
    engine = CompletionEngine(config)
    try:
        run = engine.run(decision(0, config), MESSAGES, GenerationOptions(), max_tier_index=2)
        first = await anext(run)
        assert isinstance(first, TextDelta)
        closed_at = time.monotonic()
        await run.aclose()
        assert await eventually(lambda: fake.requests[0].disconnected_at is not None, 2)
        assert (fake.requests[0].disconnected_at or 0) - closed_at < 0.1

        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await collect(
                    engine.run(decision(0, config), MESSAGES, GenerationOptions(), max_tier_index=2)
                )
        assert await eventually(lambda: fake.requests[1].disconnected_at is not None, 2)
    finally:
        await engine.aclose()
    await _no_leak(fake)


# Deadline-aware escalation.


async def _teach(
    engine: CompletionEngine, config: Config, index: int, count: int = 5
) -> list[BaseException | None]:
    """Run ``count`` completions at tier ``index`` at once: the engine learns its first tokens."""
    runs = await asyncio.gather(
        *(
            collect(
                engine.run(
                    decision(index, config), MESSAGES, DEFAULT_GENERATION, max_tier_index=index
                )
            )
            for _ in range(count)
        )
    )
    return [error for _, error in runs]


async def _run_until(
    engine: CompletionEngine, config: Config, seconds: float, max_tier: int = 2
) -> tuple[list[Event], BaseException | None]:
    """Run a completion decided for the cheapest tier with a deadline ``seconds`` away."""
    return await collect(
        engine.run(
            decision(0, config),
            MESSAGES,
            DEFAULT_GENERATION,
            max_tier_index=max_tier,
            deadline=time.monotonic() + seconds,
        )
    )


async def test_a_stronger_tier_too_slow_for_the_deadline_is_not_started(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, ("http:500", "ok", "ok"))
    engine = CompletionEngine(config)
    try:
        fake.attempt_delays = [0.5] * 5
        assert await _teach(engine, config, 1) == [None] * 5
        p95 = engine.first_token_p95("strong")
        assert p95 is not None and p95 >= 0.5
        asked = len(fake.requests)
        events, error = await _run_until(engine, config, 0.3, max_tier=1)
    finally:
        await engine.aclose()
    assert isinstance(error, DeadlineExceeded)
    message = str(error)
    assert message.startswith(
        "no tier could answer before the deadline: "
        "attempt 0 tier 'cheap' (fake0/http:500): http_error: HTTP 500"
    )
    assert "; attempt 1 tier 'strong' (fake1/ok): deadline_skipped: not started: " in message
    assert "left before the deadline, the tier's p95 time to first token is " in message
    assert message.endswith(" s (5 observed)")
    escalations = [e for e in events if isinstance(e, Escalation)]
    assert [e.attempt.outcome for e in escalations] == [AttemptOutcome.HTTP_ERROR]
    assert text_of(events) == ""
    assert _models_requested(fake)[asked:] == ["http:500"]  # the strong tier was never asked
    await _no_leak(fake)


async def test_the_climb_passes_over_a_slow_tier_to_a_stronger_one_that_fits(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, ("http:500", "ok", "ok"))
    engine = CompletionEngine(config)
    try:
        fake.attempt_delays = [1.5] * 5
        await _teach(engine, config, 1)
        # A second is ample for the cheap tier to fail, even on a loaded machine.
        events, error = await _run_until(engine, config, 1.0)
    finally:
        await engine.aclose()
    # The expert tier has no observations yet: it is given its chance, and answers.
    assert error is None and text_of(events) == FULL_ANSWER
    summary = _summary(events)
    assert [(a.tier, a.outcome) for a in summary.attempts] == [
        ("cheap", AttemptOutcome.HTTP_ERROR),
        ("strong", AttemptOutcome.DEADLINE_SKIPPED),
        ("expert", AttemptOutcome.OK),
    ]
    skipped = summary.attempts[1]
    assert skipped.completion_tokens == 0 and skipped.cost_usd == 0
    assert [(e.from_tier, e.to_tier) for e in events if isinstance(e, Escalation)] == [
        ("cheap", "strong"),
        ("strong", "expert"),
    ]


async def test_a_deadline_the_stronger_tier_fits_climbs_as_usual(fake: FakeOpenAIServer) -> None:
    config = fake_config(fake, ("http:500", "ok", "ok"))
    engine = CompletionEngine(config)
    try:
        fake.attempt_delays = [0.2] * 5
        await _teach(engine, config, 1)
        events, error = await _run_until(engine, config, 30.0)
    finally:
        await engine.aclose()
    assert error is None and _summary(events).tier == "strong"


async def test_a_first_token_timeout_counts_as_at_least_that_slow(fake: FakeOpenAIServer) -> None:
    slow = {"timeouts": {"first_token_s": 0.3}}
    config = fake_config(fake, ("http:500", "stall:0", "ok"), tier_extra={1: slow})
    engine = CompletionEngine(config)
    try:
        errors = await _teach(engine, config, 1)
        assert all(isinstance(error, BackendUnavailable) for error in errors)
        p95 = engine.first_token_p95("strong")
        assert p95 is not None and p95 >= 0.3
        _, error = await _run_until(engine, config, 0.25, max_tier=1)
    finally:
        await engine.aclose()
    assert isinstance(error, DeadlineExceeded)
    assert "tier 'strong' (fake1/stall:0): deadline_skipped" in str(error)


async def test_the_decided_tier_is_attempted_whatever_the_deadline(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake)
    engine = CompletionEngine(config)
    try:
        fake.attempt_delays = [0.3] * 5
        await _teach(engine, config, 0)
        # Only an upward attempt is weighed: the caller asked for this one.
        events, error = await _run_until(engine, config, 0.01)
    finally:
        await engine.aclose()
    assert error is None and text_of(events) == FULL_ANSWER


async def test_the_gate_is_not_held_when_no_stronger_tier_fits_the_deadline(
    fake: FakeOpenAIServer,
) -> None:
    config = fake_config(fake, ("lowlp", "ok", "ok"), tier_extra={0: GATE})
    engine = CompletionEngine(config)
    try:
        fake.attempt_delays = [1.5] * 10
        await asyncio.gather(_teach(engine, config, 1), _teach(engine, config, 2))
        events, error = await _run_until(engine, config, 1.0)
    finally:
        await engine.aclose()
    # Nowhere to climb in time: the unsure start is delivered rather than thrown away.
    assert error is None and text_of(events) == FULL_ANSWER
    gate = _summary(events).attempts[0].gate
    assert gate.passed and gate.reason == "not held: no stronger tier to climb to"


# Logs and the default configuration.


async def test_one_log_line_per_attempt(fake: FakeOpenAIServer) -> None:
    config = fake_config(fake, ("http:500", "lowlp", "ok"), tier_extra={1: GATE})
    with capture_logs() as logs:
        _, error, _ = await _run(config)
    assert error is None
    lines = [e for e in logs if e["event"] == "completion_attempt"]
    assert [(e["tier"], e["outcome"]) for e in lines] == [
        ("cheap", "http_error"),
        ("strong", "gate_rejected"),
        ("expert", "ok"),
    ]
    for line in lines:
        assert line["request_id"] == "req-1"
        assert {
            "duration_ms",
            "first_token_ms",
            "prompt_tokens",
            "completion_tokens",
            "cost_usd",
            "detail",
            "model",
            "backend",
        } <= set(line)
    assert lines[1]["gate"]["passed"] is False


async def test_the_default_configuration_answers_with_the_labelled_demo() -> None:
    config = default_config()
    events, error, engine = await _run(config, generation=GenerationOptions(max_tokens=500))
    assert error is None
    assert text_of(events).startswith("[modelrouter demo backend]")
    summary = _summary(events)
    assert summary.tier == "cheap" and summary.usage.reported_by_backend
    assert [s.name for s in engine.backend_states()] == ["demo"]

"""Run a routing decision: stream the chosen tier's answer, climbing when a tier fails.

``CompletionEngine.run`` is what the gRPC ``Complete`` drives. It starts at the decided
tier; a failure before any text reached the caller (an error, a time limit, an open
circuit, a start the confidence gate rejects, or an unexpected exception in the backend,
taken as a malformed stream) records the attempt, yields an ``Escalation`` and moves to
the next stronger tier, never a cheaper one. Once text is delivered the answering model
is fixed: a later failure yields the summary (finish reason "error") and raises
``BackendUnavailable``. Closing or cancelling the generator closes the upstream stream
before the cancellation propagates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING

import structlog

from router.backends import Backend, BackendError, BackendRequest, Chunk, create_backend
from router.backends.redact import Redactor
from router.completion.circuit import CircuitBreaker
from router.completion.cost import cost_usd, estimate_prompt_tokens
from router.completion.gate import NOT_GATED, GateWindow, limits_report
from router.config import BackendConfig, Config, TierConfig
from router.domain import (
    Attempt,
    AttemptOutcome,
    BackendState,
    BackendUnavailable,
    ChatMessage,
    CompletionSummary,
    Escalation,
    GateReport,
    GenerationOptions,
    InvalidRequest,
    RoutingDecision,
    TextDelta,
    Usage,
)
from router.telemetry import current_tracing, metrics
from router.telemetry.attributes import attempt_attributes, attempt_failed

if TYPE_CHECKING:
    from router.telemetry.tracing import AttemptTrace

log = structlog.get_logger()

Event = TextDelta | Escalation | CompletionSummary


class _Try:
    """The mutable record of one attempt while it runs."""

    __slots__ = (
        "committed_chars",
        "delivered_at",
        "finish_reason",
        "first_token_at",
        "gate",
        "pending",
        "started_at",
        "tokens",
        "usage_completion",
        "usage_prompt",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.first_token_at = 0.0
        self.tokens = 0
        self.usage_prompt = -1
        self.usage_completion = -1
        self.finish_reason: str | None = None
        self.committed_chars = 0
        self.delivered_at = 0.0
        self.gate = NOT_GATED
        # The read of the next chunk still running when the gate's time window closed.
        self.pending: asyncio.Future[Chunk] | None = None

    def deliver(self, text: str, now: float) -> TextDelta:
        """Commit text to the caller: from here on this attempt's model answers."""
        if not self.committed_chars:
            self.delivered_at = now
        self.committed_chars += len(text)
        return TextDelta(text)

    def note(self, chunk: Chunk, now: float) -> None:
        """Count a chunk's tokens, usage and finish reason."""
        self.tokens += chunk.tokens
        if chunk.text and not self.first_token_at:
            self.first_token_at = now
        usage = chunk.usage
        if usage is not None:
            self.usage_prompt = usage.prompt_tokens
            self.usage_completion = usage.completion_tokens
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason


class CompletionEngine:
    """Run completions over the configured tiers, backends and circuit breakers."""

    def __init__(
        self,
        config: Config,
        *,
        backend_factory: Callable[[str, BackendConfig], Backend] = create_backend,
    ) -> None:
        self._config = config
        self._tiers = config.tiers
        self._backends: dict[str, Backend] = {
            name: backend_factory(name, backend) for name, backend in config.backends.items()
        }
        settings = config.completion.circuit_breaker
        self._circuits = {
            name: CircuitBreaker(name, backend.kind, settings)
            for name, backend in config.backends.items()
        }
        self._max_attempts = config.completion.max_attempts
        self._redactor = Redactor.for_config(config)
        self._metrics = metrics.current()
        self._tracing = current_tracing()
        self._kinds = {name: backend.kind for name, backend in config.backends.items()}

    def backend_states(self) -> list[BackendState]:
        """Return every backend's circuit-breaker state."""
        return [circuit.state() for circuit in self._circuits.values()]

    async def aclose(self) -> None:
        """Close every backend's connections."""
        for backend in self._backends.values():
            await backend.aclose()

    async def run(
        self,
        decision: RoutingDecision,
        messages: Sequence[ChatMessage],
        generation: GenerationOptions,
        *,
        max_tier_index: int,
    ) -> AsyncGenerator[Event, None]:
        """Stream the answer: text deltas and escalations, then one summary.

        Raises ``BackendUnavailable`` naming every attempt when no allowed tier answers,
        or after the summary when the answering tier fails after text was delivered.
        """
        tiers = self._tiers
        index = decision.tier_index
        if not 0 <= index <= max_tier_index < len(tiers):
            raise InvalidRequest(
                "max_tier",
                f"tier range {index}..{max_tier_index} is not within 0..{len(tiers) - 1}",
            )
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        attempts: list[Attempt] = []
        tries = 0
        prompt_estimate = decision.estimated_prompt_tokens or estimate_prompt_tokens(messages)
        while True:
            tier = tiers[index]
            circuit = self._circuits[tier.backend]
            trace = (
                None
                if self._tracing is None
                else self._tracing.start_attempt(tier.name, _max_tokens(generation, tier))
            )
            if not circuit.allow():
                # A skip is not a try: it costs nothing and does not use up max_attempts.
                attempt = self._record(
                    decision,
                    len(attempts),
                    tier,
                    AttemptOutcome.CIRCUIT_OPEN,
                    f"circuit open for backend {tier.backend!r}",
                    _Try(loop.time()),
                    loop.time(),
                    prompt_estimate,
                    trace,
                )
            else:
                tries += 1
                # Hold a start back only if a stronger tier could take over: rejecting it
                # with nowhere to go would turn a doubtful answer into none.
                can_climb = tries < self._max_attempts and any(
                    self._circuits[t.backend].available()
                    for t in tiers[index + 1 : max_tier_index + 1]
                )
                state = _Try(loop.time())
                outcome, detail, upstream = AttemptOutcome.OK, "", ""
                backend_unhealthy = False
                stream = self._backends[tier.backend].stream(
                    BackendRequest(
                        model=tier.model,
                        messages=messages,
                        generation=generation,
                        max_tokens=_max_tokens(generation, tier),
                        logprobs=tier.gate is not None,
                        timeouts=tier.timeouts,
                        trace=trace,
                    )
                )
                try:
                    if tier.gate is not None and can_climb:
                        window = await self._hold(stream, tier, generation, state, loop)
                        if not state.gate.passed:
                            outcome, detail = AttemptOutcome.GATE_REJECTED, state.gate.reason
                        else:
                            text = window.text()
                            if text:
                                yield state.deliver(text, loop.time())
                            if state.pending is not None:
                                chunk = await state.pending
                                state.pending = None
                                now = loop.time()
                                state.note(chunk, now)
                                if chunk.text:
                                    yield state.deliver(chunk.text, now)
                    elif tier.gate is not None:
                        state.gate = limits_report(
                            tier.gate, reason="not held: no stronger tier to climb to"
                        )
                    if outcome is AttemptOutcome.OK:
                        async for chunk in stream:
                            now = loop.time()
                            state.note(chunk, now)
                            if chunk.text:
                                yield state.deliver(chunk.text, now)
                except StopAsyncIteration:
                    pass  # the stream ended right after the gate's time window closed
                except BackendError as exc:
                    outcome, detail, upstream = exc.outcome, str(exc), exc.upstream
                    backend_unhealthy = exc.backend_unhealthy
                except Exception as exc:
                    # A bug in a backend or its parser is that backend's failure, like an
                    # unreadable stream: the request climbs and the circuit hears of it,
                    # rather than the RPC crashing with a half-open probe slot held.
                    log.exception(
                        "backend_unexpected_error",
                        request_id=decision.request_id,
                        tier=tier.name,
                        backend=tier.backend,
                    )
                    outcome = AttemptOutcome.MALFORMED_STREAM
                    # Its message may quote what the provider sent: the log above has it.
                    detail = f"unexpected {type(exc).__name__} in backend"
                    backend_unhealthy = True
                except (asyncio.CancelledError, GeneratorExit):
                    circuit.release()
                    await _close(stream, state)
                    self._record(
                        decision,
                        len(attempts),
                        tier,
                        AttemptOutcome.CANCELLED,
                        "the caller cancelled or its deadline passed",
                        state,
                        loop.time(),
                        prompt_estimate,
                        trace,
                    )
                    raise
                await _close(stream, state)
                ended_at = loop.time()
                if outcome is AttemptOutcome.OK or outcome is AttemptOutcome.GATE_REJECTED:
                    # A rejected start is a healthy backend with an unsure answer.
                    circuit.record_success()
                elif backend_unhealthy:
                    circuit.record_failure()
                else:
                    # The request or its configuration was refused (HTTP 400, 401, 404):
                    # no verdict on the backend, but a probe's slot must be freed.
                    circuit.release()
                committed = state.committed_chars > 0
                if committed and outcome is not AttemptOutcome.OK:
                    detail = f"{outcome.value}: {detail}"
                    outcome = AttemptOutcome.FAILED_AFTER_COMMIT
                attempt = self._record(
                    decision,
                    len(attempts),
                    tier,
                    outcome,
                    detail,
                    state,
                    ended_at,
                    prompt_estimate,
                    trace,
                    upstream=upstream,
                )
                if committed or outcome is AttemptOutcome.OK:
                    attempts.append(attempt)
                    yield self._summary(
                        tier, index, state, attempts, prompt_estimate, started_at, ended_at
                    )
                    if outcome is not AttemptOutcome.OK:
                        raise BackendUnavailable(
                            f"tier {tier.name!r} failed after {state.committed_chars} chars "
                            f"were delivered: {detail}"
                        )
                    return
            attempts.append(attempt)
            if index >= max_tier_index or tries >= self._max_attempts:
                raise BackendUnavailable(_failure_message(attempts))
            index += 1
            if self._metrics is not None:
                self._metrics.escalated(tier.name, tiers[index].name, attempt.outcome.value)
            yield Escalation(tier.name, tiers[index].name, attempt)

    async def _hold(
        self,
        stream: AsyncGenerator[Chunk, None],
        tier: TierConfig,
        generation: GenerationOptions,
        state: _Try,
        loop: asyncio.AbstractEventLoop,
    ) -> GateWindow:
        """Hold the start of the answer back and judge it into ``state.gate``."""
        assert tier.gate is not None
        window = GateWindow(tier.gate)
        window_s = tier.gate.window_ms / 1000.0
        first_at = 0.0
        while not window.full and window.finish_reason is None:
            if not first_at:
                # No time window before the first token: the backend's own limits apply.
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    break
            else:
                remaining = first_at + window_s - loop.time()
                if remaining <= 0:
                    break
                pending = state.pending = asyncio.ensure_future(anext(stream))
                done, _ = await asyncio.wait((pending,), timeout=remaining)
                if not done:
                    break  # the time window closed; the read stays pending
                state.pending = None
                try:
                    chunk = pending.result()
                except StopAsyncIteration:
                    break
            now = loop.time()
            state.note(chunk, now)
            window.add(chunk)
            if chunk.text and not first_at:
                first_at = now
        held_ms = (loop.time() - first_at) * 1000.0 if first_at else 0.0
        state.gate = window.verdict(held_ms, max_tokens=_max_tokens(generation, tier))
        return window

    def _record(
        self,
        decision: RoutingDecision,
        number: int,
        tier: TierConfig,
        outcome: AttemptOutcome,
        detail: str,
        state: _Try,
        ended_at: float,
        prompt_estimate: int,
        trace: AttemptTrace | None,
        *,
        upstream: str = "",
    ) -> Attempt:
        """Build an attempt's record, count it, end its span and log it (upstream text masked)."""
        prompt, completion, _ = _usage(state, prompt_estimate)
        first_token_ms = (
            (state.first_token_at - state.started_at) * 1000.0 if state.first_token_at else 0.0
        )
        attempt = Attempt(
            index=number,
            tier=tier.name,
            model=tier.model,
            backend=tier.backend,
            outcome=outcome,
            detail=detail,
            duration_ms=(ended_at - state.started_at) * 1000.0,
            first_token_ms=first_token_ms,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=cost_usd(tier.price, prompt, completion),
            gate=state.gate,
        )
        if self._metrics is not None:
            self._metrics.attempt(
                tier.name,
                tier.backend,
                outcome.value,
                first_token_ms / 1000.0 if state.first_token_at else None,
                prompt,
                completion,
                attempt.cost_usd,
            )
        if trace is not None:
            trace.end(
                attempt_attributes(attempt, self._kinds[tier.backend]), attempt_failed(attempt)
            )
        log.info(
            "completion_attempt",
            request_id=decision.request_id,
            attempt=number,
            tier=tier.name,
            model=tier.model,
            backend=tier.backend,
            outcome=outcome.value,
            detail=detail,
            duration_ms=round(attempt.duration_ms, 3),
            first_token_ms=round(first_token_ms, 3),
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=attempt.cost_usd,
            gate=_gate_log(state.gate),
            **({"upstream": self._redactor.excerpt(upstream)} if upstream else {}),
        )
        return attempt

    def _summary(
        self,
        tier: TierConfig,
        index: int,
        state: _Try,
        attempts: Sequence[Attempt],
        prompt_estimate: int,
        started_at: float,
        ended_at: float,
    ) -> CompletionSummary:
        prompt, completion, reported = _usage(state, prompt_estimate)
        failed = attempts[-1].outcome is not AttemptOutcome.OK
        first_text_at = state.delivered_at
        strongest_cost = cost_usd(self._tiers[-1].price, prompt, completion)
        if self._metrics is not None:
            self._metrics.completed(tier.name, ended_at - started_at, strongest_cost)
        return CompletionSummary(
            tier=tier.name,
            tier_index=index,
            model=tier.model,
            backend=tier.backend,
            usage=Usage(prompt, completion, reported),
            cost_usd=sum(a.cost_usd for a in attempts),
            strongest_tier_cost_usd=strongest_cost,
            finish_reason="error" if failed else (state.finish_reason or "stop"),
            attempts=tuple(attempts),
            delivered_chars=state.committed_chars,
            duration_ms=(ended_at - started_at) * 1000.0,
            first_text_ms=(first_text_at - started_at) * 1000.0 if first_text_at else 0.0,
        )


def _max_tokens(generation: GenerationOptions, tier: TierConfig) -> int:
    """Return the request's token limit, capped at the tier's."""
    asked = generation.max_tokens
    return min(asked, tier.max_tokens) if asked > 0 else tier.max_tokens


def _usage(state: _Try, prompt_estimate: int) -> tuple[int, int, bool]:
    """Return (prompt, completion, reported): the provider's counts, else the router's."""
    if state.usage_completion >= 0:
        return state.usage_prompt, state.usage_completion, True
    if not state.tokens:
        return 0, 0, False  # nothing was generated: nothing to charge
    return prompt_estimate, state.tokens, False


async def _close(stream: AsyncGenerator[Chunk, None], state: _Try) -> None:
    """Stop a pending read and close the upstream stream."""
    pending, state.pending = state.pending, None
    if pending is not None and not pending.done():
        pending.cancel()
        await asyncio.wait((pending,))
    if pending is not None and not pending.cancelled():
        pending.exception()  # a read cancelled by the gate may have failed: already handled
    try:
        await stream.aclose()
    except Exception:
        # The attempt's outcome is already decided; a backend whose clean-up fails (a
        # bug) must not turn it into a crashed RPC.
        log.exception("backend_close_failed")


def _failure_message(attempts: Sequence[Attempt]) -> str:
    parts = [
        f"attempt {a.index} tier {a.tier!r} ({a.backend}/{a.model}): {a.outcome.value}"
        + (f": {a.detail}" if a.detail else "")
        for a in attempts
    ]
    return "no tier could answer: " + "; ".join(parts)


def _gate_log(gate: GateReport) -> dict[str, object] | None:
    if not gate.enabled:
        return None
    return {
        "passed": gate.passed,
        "reason": gate.reason,
        "held_tokens": gate.held_tokens,
        "held_ms": round(gate.held_ms, 3),
        "mean_logprob": gate.mean_logprob,
        "low_logprob_share": gate.low_logprob_share,
    }

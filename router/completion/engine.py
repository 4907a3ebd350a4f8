"""Run a routing decision: stream the chosen tier's answer, climbing when a tier fails.

``CompletionEngine.run`` is what the gRPC ``Complete`` drives, in three parts:

- the climb (``run``): it starts at the decided tier; a failure before any text reached the
  caller (an error, a time limit, an open circuit, a start the confidence gate rejects, or
  an unexpected exception in the backend, taken as a malformed stream) records the attempt,
  yields an ``Escalation`` and moves to the next stronger tier, never a cheaper one. A
  stronger tier whose p95 time to first token does not fit before the caller's deadline is
  skipped; when no allowed tier is left the run raises ``BackendUnavailable``, or
  ``DeadlineExceeded`` when the deadline skipped one;
- the attempt (``_attempt``): one upstream stream, its held-back start judged by the gate,
  its text delivered. Once text is delivered the answering model is fixed: a later failure
  yields the summary (finish reason "error") and raises ``BackendUnavailable``. Closing or
  cancelling the generator closes the upstream stream before the cancellation propagates;
- the circuit update (``_update_circuit``): what the attempt said about its backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import structlog

from router.backends import Backend, BackendError, BackendRequest, Chunk, create_backend
from router.backends.errors import BackendTimeout
from router.backends.redact import Redactor
from router.completion.circuit import CircuitBreaker
from router.completion.cost import cost_usd, estimate_prompt_tokens
from router.completion.gate import NOT_GATED, GateWindow, limits_report
from router.completion.latency import FirstTokenTimes
from router.config import BackendConfig, Config, TierConfig
from router.domain import (
    Attempt,
    AttemptOutcome,
    BackendState,
    BackendUnavailable,
    ChatMessage,
    CompletionSummary,
    DeadlineExceeded,
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
    """The mutable record of one attempt while it runs, and how it ended."""

    __slots__ = (
        "backend_unhealthy",
        "committed_chars",
        "delivered_at",
        "detail",
        "finish_reason",
        "first_token_at",
        "first_token_timed_out",
        "gate",
        "outcome",
        "pending",
        "started_at",
        "tokens",
        "upstream",
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
        self.outcome = AttemptOutcome.OK
        self.detail = ""
        # Whether the failure speaks against the backend (and counts for its circuit).
        self.backend_unhealthy = False
        self.first_token_timed_out = False
        # What the provider said about a failure: for the attempt's log line, masked.
        self.upstream = ""

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

    def fail(self, outcome: AttemptOutcome, detail: str, *, backend_unhealthy: bool) -> None:
        """Note how the attempt failed."""
        self.outcome, self.detail, self.backend_unhealthy = outcome, detail, backend_unhealthy


class _Request:
    """What every attempt of one ``run`` shares."""

    __slots__ = ("deadline", "decision", "generation", "messages", "prompt_estimate")

    def __init__(
        self,
        decision: RoutingDecision,
        messages: Sequence[ChatMessage],
        generation: GenerationOptions,
        deadline: float | None,
    ) -> None:
        self.decision = decision
        self.messages = messages
        self.generation = generation
        self.deadline = deadline
        self.prompt_estimate = decision.estimated_prompt_tokens or estimate_prompt_tokens(messages)


class CompletionEngine:
    """Run completions over the configured tiers, backends and circuit breakers.

    ``clock`` (seconds, monotonic) times attempts, ages circuit failures and cool-downs and
    is the clock of a run's ``deadline``; tests pass a fake one.
    """

    def __init__(
        self,
        config: Config,
        *,
        backend_factory: Callable[[str, BackendConfig], Backend] = create_backend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._tiers = config.tiers
        self._clock = clock
        self._backends: dict[str, Backend] = {
            name: backend_factory(name, backend) for name, backend in config.backends.items()
        }
        settings = config.completion.circuit_breaker
        self._circuits = {
            name: CircuitBreaker(name, backend.kind, settings, clock)
            for name, backend in config.backends.items()
        }
        self._first_tokens = {tier.name: FirstTokenTimes() for tier in config.tiers}
        self._max_attempts = config.completion.max_attempts
        self._redactor = Redactor.for_config(config)
        self._metrics = metrics.current()
        self._tracing = current_tracing()
        self._kinds = {name: backend.kind for name, backend in config.backends.items()}

    def backend_states(self) -> list[BackendState]:
        """Return every backend's circuit-breaker state."""
        return [circuit.state() for circuit in self._circuits.values()]

    def first_token_p95(self, tier: str) -> float | None:
        """Return a tier's observed p95 time to first token in seconds (None: too few seen)."""
        return self._first_tokens[tier].p95()

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
        deadline: float | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Stream the answer: text deltas and escalations, then one summary.

        This is the climb: attempt the decided tier, then each stronger one in turn.
        ``deadline`` (on the engine's clock) is when the caller stops waiting: a stronger
        tier that cannot produce a first token before it is not started.

        Raises ``BackendUnavailable`` naming every attempt when no allowed tier answers,
        or after the summary when the answering tier fails after text was delivered;
        ``DeadlineExceeded`` instead when a tier was skipped for the deadline.
        """
        tiers = self._tiers
        index = decision.tier_index
        if not 0 <= index <= max_tier_index < len(tiers):
            raise InvalidRequest(
                "max_tier",
                f"tier range {index}..{max_tier_index} is not within 0..{len(tiers) - 1}",
            )
        request = _Request(decision, messages, generation, deadline)
        started_at = self._clock()
        attempts: list[Attempt] = []
        tries = 0
        while True:
            tier = tiers[index]
            circuit = self._circuits[tier.backend]
            trace = (
                None
                if self._tracing is None
                else self._tracing.start_attempt(tier.name, _max_tokens(generation, tier))
            )
            # A skip is not a try: it costs nothing and does not use up max_attempts.
            late = self._too_late(tier, deadline) if index > decision.tier_index else ""
            if late:
                attempt = self._skip(
                    request, len(attempts), tier, AttemptOutcome.DEADLINE_SKIPPED, late, trace
                )
            elif not circuit.allow():
                attempt = self._skip(
                    request,
                    len(attempts),
                    tier,
                    AttemptOutcome.CIRCUIT_OPEN,
                    f"circuit open for backend {tier.backend!r}",
                    trace,
                )
            else:
                tries += 1
                state = _Try(self._clock())
                # Hold a start back only if a stronger tier could take over: rejecting it
                # with nowhere to go would turn a doubtful answer into none.
                hold = (
                    tier.gate is not None
                    and tries < self._max_attempts
                    and self._can_climb(index, max_tier_index, deadline)
                )
                attempt_run = self._attempt(request, len(attempts), tier, state, trace, hold=hold)
                async with aclosing(attempt_run) as deltas:
                    async for delta in deltas:
                        yield delta
                ended_at = self._clock()
                _update_circuit(circuit, state)
                committed = state.committed_chars > 0
                if committed and state.outcome is not AttemptOutcome.OK:
                    state.detail = f"{state.outcome.value}: {state.detail}"
                    state.outcome = AttemptOutcome.FAILED_AFTER_COMMIT
                attempt = self._record(
                    request,
                    len(attempts),
                    tier,
                    state.outcome,
                    state.detail,
                    state,
                    ended_at,
                    trace,
                )
                if committed or attempt.outcome is AttemptOutcome.OK:
                    attempts.append(attempt)
                    yield self._summary(
                        tier, index, state, attempts, request.prompt_estimate, started_at, ended_at
                    )
                    if attempt.outcome is not AttemptOutcome.OK:
                        raise BackendUnavailable(
                            f"tier {tier.name!r} failed after {state.committed_chars} chars "
                            f"were delivered: {state.detail}"
                        )
                    return
            attempts.append(attempt)
            if index >= max_tier_index or tries >= self._max_attempts:
                raise _no_answer(attempts)
            index += 1
            if self._metrics is not None:
                self._metrics.escalated(tier.name, tiers[index].name, attempt.outcome.value)
            yield Escalation(tier.name, tiers[index].name, attempt)

    async def _attempt(
        self,
        request: _Request,
        number: int,
        tier: TierConfig,
        state: _Try,
        trace: AttemptTrace | None,
        *,
        hold: bool,
    ) -> AsyncGenerator[TextDelta, None]:
        """Run one attempt at one tier: stream its text, note in ``state`` how it ended.

        With ``hold`` the start is held back and judged by the tier's gate first. A
        cancelled or closed attempt closes its upstream stream, frees the circuit's probe
        slot and records itself before the cancellation propagates.
        """
        generation = request.generation
        stream = self._backends[tier.backend].stream(
            BackendRequest(
                model=tier.model,
                messages=request.messages,
                generation=generation,
                max_tokens=_max_tokens(generation, tier),
                logprobs=tier.gate is not None,
                timeouts=tier.timeouts,
                trace=trace,
            )
        )
        clock = self._clock
        try:
            if hold:
                window = await self._hold(stream, tier, generation, state)
                if not state.gate.passed:
                    state.fail(
                        AttemptOutcome.GATE_REJECTED, state.gate.reason, backend_unhealthy=False
                    )
                else:
                    text = window.text()
                    if text:
                        yield state.deliver(text, clock())
                    if state.pending is not None:
                        chunk = await state.pending
                        state.pending = None
                        now = clock()
                        state.note(chunk, now)
                        if chunk.text:
                            yield state.deliver(chunk.text, now)
            elif tier.gate is not None:
                state.gate = limits_report(
                    tier.gate, reason="not held: no stronger tier to climb to"
                )
            if state.outcome is AttemptOutcome.OK:
                async for chunk in stream:
                    now = clock()
                    state.note(chunk, now)
                    if chunk.text:
                        yield state.deliver(chunk.text, now)
        except StopAsyncIteration:
            pass  # the stream ended right after the gate's time window closed
        except BackendError as exc:
            state.fail(exc.outcome, str(exc), backend_unhealthy=exc.backend_unhealthy)
            state.upstream = exc.upstream
            state.first_token_timed_out = (
                isinstance(exc, BackendTimeout) and exc.phase == "first_token"
            )
        except Exception as exc:
            # A bug in a backend or its parser is that backend's failure, like an
            # unreadable stream: the request climbs and the circuit hears of it,
            # rather than the RPC crashing with a half-open probe slot held.
            log.exception(
                "backend_unexpected_error",
                request_id=request.decision.request_id,
                tier=tier.name,
                backend=tier.backend,
            )
            # Its message may quote what the provider sent: the log above has it.
            state.fail(
                AttemptOutcome.MALFORMED_STREAM,
                f"unexpected {type(exc).__name__} in backend",
                backend_unhealthy=True,
            )
        except (asyncio.CancelledError, GeneratorExit):
            self._circuits[tier.backend].release()
            await _close(stream, state)
            self._record(
                request,
                number,
                tier,
                AttemptOutcome.CANCELLED,
                "the caller cancelled or its deadline passed",
                state,
                clock(),
                trace,
            )
            raise
        await _close(stream, state)

    def _can_climb(self, index: int, max_tier_index: int, deadline: float | None) -> bool:
        """Return whether a stronger allowed tier could take over now."""
        return any(
            self._circuits[t.backend].available() and not self._too_late(t, deadline)
            for t in self._tiers[index + 1 : max_tier_index + 1]
        )

    def _too_late(self, tier: TierConfig, deadline: float | None) -> str:
        """Return why ``tier`` cannot produce a first token before ``deadline`` ("" if it can).

        The expected time is the tier's observed p95 time to first token, capped by its
        first-token timeout; a tier with too few observations is given its chance.
        """
        if deadline is None:
            return ""
        left = deadline - self._clock()
        p95 = self._first_tokens[tier.name].p95()
        if left > 0 and (p95 is None or min(p95, tier.timeouts.first_token_s) < left):
            return ""
        seen = len(self._first_tokens[tier.name])
        needs = "unknown" if p95 is None else f"{min(p95, tier.timeouts.first_token_s):.3g} s"
        return (
            f"not started: {max(left, 0.0):.3g} s left before the deadline, the tier's p95 "
            f"time to first token is {needs} ({seen} observed)"
        )

    async def _hold(
        self,
        stream: AsyncGenerator[Chunk, None],
        tier: TierConfig,
        generation: GenerationOptions,
        state: _Try,
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
                remaining = first_at + window_s - self._clock()
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
            now = self._clock()
            state.note(chunk, now)
            window.add(chunk)
            if chunk.text and not first_at:
                first_at = now
        held_ms = (self._clock() - first_at) * 1000.0 if first_at else 0.0
        state.gate = window.verdict(held_ms, max_tokens=_max_tokens(generation, tier))
        return window

    def _skip(
        self,
        request: _Request,
        number: int,
        tier: TierConfig,
        outcome: AttemptOutcome,
        detail: str,
        trace: AttemptTrace | None,
    ) -> Attempt:
        """Record a tier passed over without a call (an open circuit, the deadline)."""
        now = self._clock()
        return self._record(request, number, tier, outcome, detail, _Try(now), now, trace)

    def _record(
        self,
        request: _Request,
        number: int,
        tier: TierConfig,
        outcome: AttemptOutcome,
        detail: str,
        state: _Try,
        ended_at: float,
        trace: AttemptTrace | None,
    ) -> Attempt:
        """Build an attempt's record, note its time to first token, count, trace and log it.

        The provider's own text (``state.upstream``) goes to the log line only, masked.
        """
        prompt, completion, _ = _usage(state, request.prompt_estimate)
        first_token_ms = (
            (state.first_token_at - state.started_at) * 1000.0 if state.first_token_at else 0.0
        )
        if state.first_token_at:
            self._first_tokens[tier.name].observe(state.first_token_at - state.started_at)
        elif state.first_token_timed_out:
            # At least this slow: the first token never came within timeouts.first_token_s.
            self._first_tokens[tier.name].observe(ended_at - state.started_at)
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
            request_id=request.decision.request_id,
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
            **({"upstream": self._redactor.excerpt(state.upstream)} if state.upstream else {}),
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


def _update_circuit(circuit: CircuitBreaker, state: _Try) -> None:
    """Tell a backend's circuit breaker what an attempt said about the backend."""
    if state.outcome is AttemptOutcome.OK or state.outcome is AttemptOutcome.GATE_REJECTED:
        # A rejected start is a healthy backend with an unsure answer.
        circuit.record_success()
    elif state.backend_unhealthy:
        circuit.record_failure()
    else:
        # The request or its configuration was refused (HTTP 400, 401, 404), or the attempt
        # was cancelled: no verdict on the backend, but a probe's slot must be freed.
        circuit.release()


def _no_answer(attempts: Sequence[Attempt]) -> BackendUnavailable:
    """Return the error of a climb that ran out of tiers, naming and carrying every attempt."""
    parts = "; ".join(
        f"attempt {a.index} tier {a.tier!r} ({a.backend}/{a.model}): {a.outcome.value}"
        + (f": {a.detail}" if a.detail else "")
        for a in attempts
    )
    if any(a.outcome is AttemptOutcome.DEADLINE_SKIPPED for a in attempts):
        return DeadlineExceeded(
            f"no tier could answer before the deadline: {parts}", tuple(attempts)
        )
    return BackendUnavailable(f"no tier could answer: {parts}", tuple(attempts))


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

"""The transport-neutral service: decide a request's tier, run it, record feedback.

The gRPC servicer converts protobuf to the domain types of ``router.domain`` and calls this
module; nothing here knows about gRPC. Requests are checked by ``router.validation``; what
they run on (configuration, routing model, engine) is one ``router.runtime.Runtime`` that
``reload`` replaces with a single assignment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass

from router.completion.cost import estimate_tokens
from router.config import Config
from router.domain import (
    BackendState,
    ChatMessage,
    CompleteEvent,
    CompleteRequest,
    Feedback,
    InvalidRequest,
    RouteRequest,
    RoutingDecision,
)
from router.feedback import FeedbackStore
from router.request_ids import RequestIds
from router.routing import Router, choose_tier
from router.runtime import EngineFactory, Runtime, completion_engine
from router.validation import (
    check_feedback,
    check_generation,
    check_hints,
    check_messages,
    check_metadata,
    check_prompt,
    check_tenant,
)


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What GetConfig reports: the configuration in force and the state around it."""

    config: Config
    thresholds: tuple[float, ...]
    model_version: str
    model_source: str
    # The escalation margin below each threshold (tiers[1:]): the tier's own or the global.
    margins: tuple[float, ...]
    fastpath: str
    backends: tuple[BackendState, ...]


class RouterService:
    """Route and complete requests against the runtime in force; reload it atomically."""

    def __init__(
        self,
        config: Config,
        router: Router,
        *,
        model_source: str = "builtin",
        engine_factory: EngineFactory = completion_engine,
    ) -> None:
        self._engine_factory = engine_factory
        self._runtime = Runtime(config, router, engine_factory(config), model_source)
        self._feedback = FeedbackStore(config.server.feedback_capacity)
        self._ids = RequestIds()
        self._closing: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> Config:
        return self._runtime.config

    @property
    def max_concurrent_rpcs(self) -> int:
        return self._runtime.max_concurrent_rpcs

    @property
    def feedback_store(self) -> FeedbackStore:
        return self._feedback

    # -- request ids -------------------------------------------------------------------

    def new_request_id(self) -> str:
        """Return a fresh request id."""
        return self._ids.new()

    def assign_request_id(self, given: str) -> str:
        """Return the caller's request id after checking it, or a fresh one when it is empty."""
        return self._ids.assign(given)

    # -- Route -------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RoutingDecision:
        """Validate a request and return its routing decision.

        ``request.request_id`` is taken as assigned (by ``assign_request_id``, which checks
        the caller's id once at the edge); an empty one is replaced by a fresh id.
        """
        decision, _ = self._decide(self._runtime, request)
        return decision

    def _decide(self, rt: Runtime, request: RouteRequest) -> tuple[RoutingDecision, int]:
        """Return the decision and the highest tier index the request allows."""
        request_id = request.request_id or self._ids.new()
        check_tenant(request.tenant)
        if request.metadata:
            check_metadata(request.metadata)
        forced, low, high = check_hints(request.hints, rt.tier_index)
        prompt, messages = request.prompt, request.messages
        if messages:
            if prompt:
                raise InvalidRequest("prompt", "set either prompt or messages, not both")
            last_user, chars = check_messages(messages, rt.max_prompt_bytes)
            tokens = estimate_tokens(chars, len(messages))
            started = time.perf_counter()
            scored = rt.router.score_chat(messages, rt.context_weight, last_user)
        else:
            check_prompt(prompt, rt.max_prompt_bytes)
            tokens = estimate_tokens(len(prompt))
            started = time.perf_counter()
            scored = rt.router.score(prompt)
        index, reason = choose_tier(
            scored.score,
            rt.thresholds,
            margin=rt.margins,
            forced=forced,
            min_index=low,
            max_index=high,
        )
        micros = (time.perf_counter() - started) * 1e6
        tier = rt.config.tiers[index]
        prices = rt.input_price
        self._feedback.remember(request_id, tier.name)
        decision = RoutingDecision(
            request_id=request_id,
            tier=tier.name,
            tier_index=index,
            model=tier.model,
            backend=tier.backend,
            score=scored.score,
            levels=scored.levels,
            rules=scored.rules,
            reason=reason,
            estimated_prompt_tokens=tokens,
            estimated_cost_usd=tokens * prices[index],
            strongest_tier_cost_usd=tokens * prices[-1],
            model_version=rt.model_version,
            decision_micros=micros,
        )
        return decision, len(prices) - 1 if high is None else high

    # -- Complete ----------------------------------------------------------------------

    async def complete(self, request: CompleteRequest) -> AsyncGenerator[CompleteEvent, None]:
        """Yield the decision, then the engine's deltas and escalations, then its summary."""
        rt = self._runtime
        check_generation(request.generation)
        decision, max_index = self._decide(rt, request.route)
        route = request.route
        messages = route.messages or (ChatMessage("user", route.prompt),)
        # Counted before the first yield: a reload while the decision is being sent must
        # not close the engine this stream is about to run on.
        rt.streams += 1
        try:
            yield decision
            run = rt.engine.run(
                decision,
                messages,
                request.generation,
                max_tier_index=max_index,
                deadline=request.deadline,
            )
            async with aclosing(run) as events:
                async for event in events:
                    yield event
        finally:
            rt.streams -= 1
            if rt.retired and rt.streams == 0:
                self._close_later(rt)

    # -- Feedback and GetConfig --------------------------------------------------------

    def feedback(self, feedback: Feedback) -> bool:
        """Validate and store feedback; return whether its request id was served here."""
        check_feedback(feedback)
        return self._feedback.add(feedback)

    def info(self) -> ServiceInfo:
        """Return the configuration in force, the model and the backends' circuit states."""
        rt = self._runtime
        return ServiceInfo(
            config=rt.config,
            thresholds=rt.thresholds,
            model_version=rt.router.version,
            model_source=rt.model_source,
            margins=rt.margins,
            fastpath=rt.router.implementation,
            backends=tuple(rt.engine.backend_states()),
        )

    # -- reload and shutdown -----------------------------------------------------------

    def reload(self, config: Config, router: Router, model_source: str) -> None:
        """Swap in a new configuration, model and engine; in-flight streams finish on the old."""
        new = Runtime(config, router, self._engine_factory(config), model_source)
        old, self._runtime = self._runtime, new
        self._feedback.capacity = config.server.feedback_capacity
        old.retired = True
        if old.streams == 0:
            self._close_later(old)

    def _close_later(self, rt: Runtime) -> None:
        task = asyncio.get_running_loop().create_task(rt.engine.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close the engine in force and wait for retired ones to close."""
        await self._runtime.engine.aclose()
        if self._closing:
            await asyncio.gather(*self._closing)


__all__ = ["RouterService", "ServiceInfo"]

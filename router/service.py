"""The transport-neutral service: decide a request's tier, run it, record feedback.

The gRPC servicer converts protobuf to the domain types of ``router.domain`` and calls this
module; nothing here knows about gRPC. Requests are checked by ``router.validation``; what
they run on (configuration, routing model, engine) is one ``router.runtime.Runtime`` that
``reload`` replaces with a single assignment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from router.auth import KeyRing
from router.completion.cost import estimate_tokens
from router.config import Config
from router.controller import NO_TIER, Controllers, Pricing, Served, Snapshot
from router.domain import (
    BackendState,
    BackendUnavailable,
    ChatMessage,
    CompleteEvent,
    CompleteRequest,
    CompletionSummary,
    Escalation,
    Feedback,
    InvalidRequest,
    RouteRequest,
    RoutingDecision,
)
from router.feedback import FeedbackStore
from router.limits import Limiter, most_cost_usd
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
    # The tenants' cost controllers, by tenant name.
    controllers: tuple[Snapshot, ...] = ()


class RouterService:
    """Route and complete requests against the runtime in force; reload it atomically."""

    def __init__(
        self,
        config: Config,
        router: Router,
        *,
        model_source: str = "builtin",
        engine_factory: EngineFactory = completion_engine,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine_factory = engine_factory
        self._runtime = Runtime(config, router, engine_factory(config), model_source)
        self._controllers = Controllers(clock)
        self._controllers.configure(config, _pricing(self._runtime))
        self._feedback = FeedbackStore(config.server.feedback_capacity)
        self._ids = RequestIds()
        self._closing: set[asyncio.Task[None]] = set()
        # Outlives reloads: the tenants' counts carry over.
        self._limiter = Limiter(config)

    @property
    def config(self) -> Config:
        return self._runtime.config

    @property
    def max_concurrent_rpcs(self) -> int:
        return self._runtime.max_concurrent_rpcs

    @property
    def key_ring(self) -> KeyRing | None:
        """Return the API keys in force, or None when auth is off."""
        return self._runtime.key_ring

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

    # -- limits ------------------------------------------------------------------------

    @property
    def limiter(self) -> Limiter:
        return self._limiter

    def admit(self, tenant: str) -> Awaitable[None] | None:
        """Return the check of one Route or Complete against the tenant's request rate (None
        when the tenant has none); awaiting it raises LimitExceeded when over."""
        return self._limiter.admit(tenant)

    # -- Route -------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RoutingDecision:
        """Validate a request and return its routing decision.

        ``request.request_id`` is taken as assigned (by ``assign_request_id``, which checks
        the caller's id once at the edge); an empty one is replaced by a fresh id.
        """
        rt = self._runtime
        decision, _ = self._decide(rt, request)
        controller = self._controllers.get(request.tenant)
        if controller is not None:
            # Route runs no model: the decided tier answers, at the prompt's estimated cost.
            controller.record(_served(rt, request, decision, decision.tier_index))
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
        controller = self._controllers.get(request.tenant)
        index, reason = choose_tier(
            scored.score,
            rt.thresholds if controller is None else controller.thresholds,
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
        tiers, generation = rt.config.tiers, request.generation
        prompt_tokens = decision.estimated_prompt_tokens
        # The most each attempt can cost is held against the tenant's budget until it settles.
        held = await self._limiter.hold(
            route.tenant,
            prompt_tokens,
            most_cost_usd(tiers[decision.tier_index], prompt_tokens, generation),
        )
        # Counted before the first yield: a reload while the decision is being sent must
        # not close the engine this stream is about to run on.
        rt.streams += 1
        try:
            yield decision
            run = rt.engine.run(
                decision,
                messages,
                generation,
                max_tier_index=max_index,
                deadline=request.deadline,
            )
            async with aclosing(run) as events:
                async for event in events:
                    if isinstance(event, CompletionSummary):
                        self._observe(rt, route, decision, event)
                        if held is not None:
                            held.attempts = event.attempts
                    yield event
                    if held is not None and isinstance(event, Escalation):
                        # The next attempt starts when the engine is asked for its next
                        # event: the most it can cost is held first.
                        tier = tiers[rt.tier_index[event.to_tier]]
                        await held.climb(
                            event.attempt, most_cost_usd(tier, prompt_tokens, generation)
                        )
        except BackendUnavailable as exc:
            if held is not None and held.attempts is None and exc.attempts:
                held.attempts = exc.attempts
            raise
        finally:
            rt.streams -= 1
            if rt.retired and rt.streams == 0:
                self._close_later(rt)
            if held is not None:
                await held.settle()

    def _observe(
        self,
        rt: Runtime,
        request: RouteRequest,
        decision: RoutingDecision,
        summary: CompletionSummary,
    ) -> None:
        """Tell the tenant's controller (if any) which tier answered and what it cost."""
        controller = self._controllers.get(request.tenant)
        if controller is None:
            return
        usage = summary.usage
        answer_cost = rt.config.tiers[summary.tier_index].price
        answered = (
            usage.prompt_tokens * answer_cost.input_per_mtok
            + usage.completion_tokens * answer_cost.output_per_mtok
        ) / 1e6
        controller.record(
            _served(
                rt,
                request,
                decision,
                summary.tier_index,
                usage.prompt_tokens,
                usage.completion_tokens,
                max(0.0, summary.cost_usd - answered),
            )
        )

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
            controllers=tuple(self._controllers.snapshots()),
        )

    @property
    def controllers(self) -> Controllers:
        return self._controllers

    # -- reload and shutdown -----------------------------------------------------------

    def reload(self, config: Config, router: Router, model_source: str) -> None:
        """Swap in a new configuration, model and engine; in-flight streams finish on the old."""
        new = Runtime(config, router, self._engine_factory(config), model_source)
        self._controllers.configure(config, _pricing(new))
        old, self._runtime = self._runtime, new
        self._feedback.capacity = config.server.feedback_capacity
        self._limiter.configure(config)
        old.retired = True
        if old.streams == 0:
            self._close_later(old)

    def _close_later(self, rt: Runtime) -> None:
        task = asyncio.get_running_loop().create_task(rt.engine.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close the engine in force, wait for retired ones to close, close the limits' store."""
        await self._runtime.engine.aclose()
        if self._closing:
            await asyncio.gather(*self._closing)
        await self._limiter.aclose()


def _pricing(rt: Runtime) -> Pricing:
    """Return what a tenant's controller acts on: the runtime's thresholds and prices."""
    return Pricing(
        thresholds=rt.thresholds,
        margins=rt.margins,
        input_price=rt.input_price,
        output_price=tuple(t.price.output_per_mtok / 1e6 for t in rt.config.tiers),
        model_version=rt.model_version,
    )


def _served(
    rt: Runtime,
    request: RouteRequest,
    decision: RoutingDecision,
    answered: int,
    prompt_tokens: int | None = None,
    completion_tokens: int = 0,
    extra_cost_usd: float = 0.0,
) -> Served:
    """Return a served request as a controller learns from it (hints already checked)."""
    hints, index = request.hints, rt.tier_index
    return Served(
        score=decision.score,
        decided=decision.tier_index,
        answered=answered,
        forced=index[hints.tier] if hints.tier else NO_TIER,
        min_index=index[hints.min_tier] if hints.min_tier else NO_TIER,
        max_index=index[hints.max_tier] if hints.max_tier else NO_TIER,
        prompt_tokens=(
            decision.estimated_prompt_tokens if prompt_tokens is None else prompt_tokens
        ),
        completion_tokens=completion_tokens,
        extra_cost_usd=extra_cost_usd,
    )


__all__ = ["RouterService", "ServiceInfo"]

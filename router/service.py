"""The transport-neutral service: decide a request's tier, run it, record it and its feedback.

The gRPC servicer converts protobuf to the domain types of ``router.domain`` and calls this
module; nothing here knows about gRPC. Requests are checked by ``router.validation`` and
decided by ``router.decide``; GetConfig's and GetStats' reports are the types of
``router.service_reports``. What they run on (configuration, routing model, engine, store
writer) is one
``router.runtime.Runtime`` that ``reload`` replaces with a single assignment. Records go to
the store through its writer's queue (``router.recording`` builds them), never waiting on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace

import structlog

from router.auth import KeyRing
from router.config import DEFAULT_TENANT, Config
from router.controller import NO_TIER, Controllers, Served
from router.controller_store import ControllerStore
from router.decide import Checked, check_request, decide
from router.domain import (
    Attempt,
    BackendUnavailable,
    ChatMessage,
    CompleteEvent,
    CompleteRequest,
    CompletionSummary,
    Escalation,
    Feedback,
    FeedbackResult,
    NotConfigured,
    RouteFailure,
    RouteRequest,
    RouterError,
    RoutingDecision,
    StoreUnavailable,
)
from router.limits import Limiter, most_cost_usd
from router.recording import complete_record, route_row
from router.request_ids import RequestIds
from router.routing import Router
from router.runtime import EngineFactory, Runtime, completion_engine
from router.service_reports import ServiceInfo, ServiceStats, store_status
from router.sessions import BoundedMap, Sessions
from router.store import FeedbackRecord, StatsQuery, StoreWriter
from router.validation import (
    check_batch,
    check_feedback,
    check_generation,
    check_session_id,
    check_tenant,
)

log = structlog.get_logger()

# A batch gives the event loop its turn after this many requests (a few hundred
# microseconds of deciding): other calls go on, and a batch whose caller cancelled or
# whose deadline passed stops there.
BATCH_YIELD_EVERY = 32


class RouterService:
    """Route, complete and record requests against the runtime in force; reload it atomically."""

    def __init__(
        self,
        config: Config,
        router: Router,
        *,
        model_source: str = "builtin",
        engine_factory: EngineFactory = completion_engine,
        store: StoreWriter | None = None,
        clock: Callable[[], float] = time.time,
        worker: int | None = None,
        replica: str | None = None,
    ) -> None:
        self._engine_factory = engine_factory
        self._runtime = Runtime(config, router, engine_factory(config), model_source, store)
        self._controllers = Controllers(clock)
        cold = self._controllers.configure(config, self._runtime.pricing())
        # Each process keeps its controllers' states under its own key: its replica
        # (server.replica_id, resolved) and its index among ``serve --workers N`` (None for
        # a server of one process).
        self._controller_store = ControllerStore(
            self._controllers, clock, cold, worker=worker, replica=replica
        )
        # Request ids this worker served lately -> the tier that served them (the decided
        # tier, then the one that answered) and their tenant, so that Feedback need not ask
        # the store.
        self._served: BoundedMap[str, tuple[str, str]] = BoundedMap(config.server.feedback_capacity)
        self._sessions = Sessions(config.routing.max_sessions)
        self._ids = RequestIds()
        # Keys of stored records: unique across workers, whatever the callers' ids.
        self._record_keys = RequestIds()
        self._closing: set[asyncio.Task[None]] = set()
        # Outlives reloads: the tenants' counts carry over.
        self._limiter = Limiter(config)
        self._runtime.note_settings()

    @property
    def config(self) -> Config:
        return self._runtime.config

    @property
    def max_concurrent_rpcs(self) -> int:
        return self._runtime.max_concurrent_rpcs

    @property
    def store(self) -> StoreWriter | None:
        """Return the store writer in force (None without a store)."""
        return self._runtime.writer

    @property
    def key_ring(self) -> KeyRing | None:
        """Return the API keys in force, or None when auth is off."""
        return self._runtime.key_ring

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

    # -- Route -------------------------------------------------------------------------

    async def route(self, request: RouteRequest) -> RoutingDecision:
        """Validate a request, return its routing decision and record it.

        ``request.request_id`` is taken as assigned (by ``assign_request_id``, which checks
        the caller's id once at the edge); an empty one is replaced by a fresh id.
        """
        return await self._route(self._runtime, request, request.request_id or self._ids.new())

    async def route_batch(
        self,
        requests: Sequence[RouteRequest],
        tenant_for: Callable[[str], str] | None = None,
    ) -> list[RoutingDecision | RouteFailure]:
        """Return each request's decision, or the error Route would have ended it with, in order.

        Each request goes through what Route does to it: its ``request_id`` (the caller's, as
        sent) is checked, or replaced by a fresh id when empty; ``tenant_for`` (the caller's
        API key's, when auth is on) resolves its tenant; it is decided, the tenant's request
        rate admits it, and it is recorded. Only a batch over the size limit raises.
        """
        check_batch(len(requests))
        rt = self._runtime
        ids = self._ids
        results: list[RoutingDecision | RouteFailure] = []
        for n, request in enumerate(requests, 1):
            if n % BATCH_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            request_id = ""
            try:
                request_id = ids.assign(request.request_id)
                if tenant_for is not None:
                    tenant = tenant_for(request.tenant)
                    if tenant != request.tenant:
                        request = replace(request, tenant=tenant)
                results.append(await self._route(rt, request, request_id))
            except RouterError as exc:
                results.append(RouteFailure(request_id or ids.new(), exc, request.tenant))
        return results

    async def _route(self, rt: Runtime, request: RouteRequest, request_id: str) -> RoutingDecision:
        """Check a request, admit it, decide it under ``request_id``; tell its session, the
        store, the controller."""
        checked = _check(rt, request)
        # Checked first, so that an invalid request uses none of the tenant's rate; scored
        # (and its session looked up) after, so that a refusal costs next to nothing.
        admission = self._limiter.admit(request.tenant)
        if admission is not None:
            await admission
        floor = await self._session_floor(rt, request) if request.session_id else None
        decision, _ = self._decide(rt, request, request_id, checked, floor)
        self._served.put(request_id, (decision.tier, request.tenant))
        if request.session_id and rt.session_floor:
            self._sessions.used(
                request.tenant, request.session_id, decision.tier, rt.tier_index, rt.writer
            )
        if rt.writer is not None:
            rt.writer.put(
                route_row(self._record_keys.new(), request, decision, keep_text=rt.keep_text)
            )
        controller = self._controllers.get(request.tenant)
        if controller is not None:
            # Route runs no model: the decided tier answers, at the prompt's estimated cost.
            controller.record(_served(rt, request, decision, decision.tier_index))
            self._controller_store.recorded(controller, rt.writer)
        return decision

    async def _session_floor(self, rt: Runtime, request: RouteRequest) -> int | None:
        """Return the tier index the request's session already reached (None: no floor);
        the request is checked already."""
        if not rt.session_floor:
            return None
        return await self._sessions.floor(
            request.tenant, request.session_id, rt.tier_index, rt.writer
        )

    def _decide(
        self,
        rt: Runtime,
        request: RouteRequest,
        request_id: str,
        checked: Checked,
        floor: int | None = None,
    ) -> tuple[RoutingDecision, int]:
        """Return the decision under ``request_id`` (on the tenant's controlled thresholds,
        if any) and the highest tier index allowed."""
        controller = self._controllers.get(request.tenant)
        thresholds = rt.thresholds if controller is None else controller.thresholds
        return decide(rt, request, request_id, thresholds, checked, floor)

    # -- Complete ----------------------------------------------------------------------

    async def complete(self, request: CompleteRequest) -> AsyncGenerator[CompleteEvent, None]:
        """Yield the decision, then the engine's deltas and escalations, then its summary.

        The request is recorded when the stream ends, however it ends.
        """
        rt = self._runtime
        check_generation(request.generation)
        route = request.route
        checked = _check(rt, route)
        admission = self._limiter.admit(route.tenant)
        if admission is not None:
            await admission
        tiers, generation = rt.config.tiers, request.generation
        try:
            floor = await self._session_floor(rt, route) if route.session_id else None
            request_id = route.request_id or self._ids.new()
            decision, max_index = self._decide(rt, route, request_id, checked, floor)
            prompt_tokens = decision.estimated_prompt_tokens
            # The most each attempt can cost is held against the tenant's budget until it
            # settles.
            held = await self._limiter.hold(
                route.tenant,
                prompt_tokens,
                most_cost_usd(tiers[decision.tier_index], prompt_tokens, generation),
            )
        except BaseException:
            # Refused by its tokens or budget: the unit of the rate goes back.
            if admission is not None:
                await self._limiter.refund(route.tenant)
            raise
        # Admitted: only now do its id and its session remember the tier.
        self._served.put(decision.request_id, (decision.tier, route.tenant))
        session = route.session_id and rt.session_floor
        if session:
            self._sessions.used(
                route.tenant, route.session_id, decision.tier, rt.tier_index, rt.writer
            )
        messages = route.messages or (ChatMessage("user", route.prompt),)
        started_unix, started = time.time(), time.perf_counter()
        summary: CompletionSummary | None = None
        escalated: list[Attempt] = []
        # Every attempt, when no tier answered: the last one failed without escalating.
        all_failed = False
        outcome = "error"
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
                    if isinstance(event, Escalation):
                        escalated.append(event.attempt)
                    elif isinstance(event, CompletionSummary):
                        summary = event
                        self._served.put(decision.request_id, (event.tier, route.tenant))
                        self._observe(rt, route, decision, event)
                        if held is not None:
                            held.attempts = event.attempts
                        if session:
                            self._sessions.used(
                                route.tenant, route.session_id, event.tier, rt.tier_index, rt.writer
                            )
                    yield event
                    if held is not None and isinstance(event, Escalation):
                        # The next attempt starts when the engine is asked for its next
                        # event: the most it can cost is held first.
                        tier = tiers[rt.tier_index[event.to_tier]]
                        await held.climb(
                            event.attempt, most_cost_usd(tier, prompt_tokens, generation)
                        )
            outcome = "ok"
        except BackendUnavailable as exc:
            if held is not None and held.attempts is None and exc.attempts:
                held.attempts = exc.attempts
            if exc.attempts:
                escalated, all_failed = list(exc.attempts), True
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            if rt.writer is not None:
                rt.writer.put(
                    complete_record(
                        self._record_keys.new(),
                        route,
                        decision,
                        summary,
                        escalated,
                        outcome=outcome,
                        escalations=len(escalated) - all_failed,
                        started=started_unix,
                        duration_ms=(time.perf_counter() - started) * 1000.0,
                        tier_index=rt.tier_index,
                        keep_text=rt.keep_text,
                    )
                )
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
        self._controller_store.recorded(controller, rt.writer)

    # -- Feedback, GetConfig, GetStats --------------------------------------------------

    async def feedback(self, feedback: Feedback) -> FeedbackResult:
        """Validate and store feedback; say whether its request id is known and if it was kept.

        A rating is for a request of its tenant (with API keys, the key's); one naming no
        tenant (possible without keys) rates its id's request of any tenant, and is kept
        under that request's tenant when this worker or the store knows it. Feedback for an
        unknown request id (or another tenant's) is kept all the same (the stats report it
        as unmatched).
        """
        check_feedback(feedback)
        rt = self._runtime
        writer = rt.writer
        request_id = feedback.request_id
        tenant = feedback.tenant or None
        # This worker's own requests first; the store knows the other workers' and
        # replicas' (once their records are written, a flush interval after the request).
        served = self._served.get(request_id)
        if served is not None and tenant is not None and served[1] != tenant:
            served = None  # another tenant's: the store may hold this tenant's of that id
        if served is None and writer is not None:
            try:
                served = await asyncio.to_thread(writer.store.served_by, request_id, tenant)
            except Exception as exc:
                log.warning("request look-up failed", store=writer.store.location, error=str(exc))
        tier, owner = (None, feedback.tenant) if served is None else served
        stored = writer is not None and writer.put(
            FeedbackRecord(
                request_id=request_id,
                time=time.time(),
                tenant=owner,
                rating=feedback.rating,
                comment=feedback.comment,
                label=feedback.label,
            )
        )
        # Only the tiers in force name the tier: the metrics' labels stay a configured set.
        return FeedbackResult(
            known_request=tier is not None,
            stored=stored,
            tier=tier if tier in rt.tier_index else None,
        )

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
            replica_id=self._controller_store.replica or "",
            worker_index=self._controller_store.worker,
        )

    @property
    def controllers(self) -> Controllers:
        return self._controllers

    async def restore_controllers(self) -> list[str]:
        """Resume the controllers that start cold from the store; return the tenants resumed."""
        return await self._controller_store.restore(self._runtime.writer)

    async def stats(self, since: float | None, tenant: str | None) -> ServiceStats:
        """Return satisfaction, escalation, errors and cost per tier and model, from the store."""
        if tenant is not None:
            check_tenant(tenant)
        rt = self._runtime
        writer = rt.writer
        if writer is None:
            raise NotConfigured("no store is configured (store: null): there are no stats")
        query = StatsQuery(since=since, tenant=tenant, satisfied_at=rt.config.feedback.satisfied_at)
        try:
            stats = await asyncio.to_thread(writer.store.stats, query)
        except Exception as exc:
            log.error("store read failed", store=writer.store.location, error=str(exc))
            raise StoreUnavailable(f"the store cannot be read: {exc}") from None
        wanted = None if tenant is None else tenant or DEFAULT_TENANT
        controllers = tuple(
            s.as_stats()
            for s in self._controllers.snapshots()
            if wanted is None or s.tenant == wanted
        )
        return ServiceStats(
            dataclasses.replace(stats, controllers=controllers), store_status(writer)
        )

    # -- reload and shutdown -----------------------------------------------------------

    def reload(
        self,
        config: Config,
        router: Router,
        model_source: str,
        store: StoreWriter | None = None,
    ) -> None:
        """Swap in a new configuration, model, engine and store writer.

        In-flight streams finish (and are recorded) on the old ones; a writer the new
        runtime does not keep is drained once they have.
        """
        new = Runtime(config, router, self._engine_factory(config), model_source, store)
        self._controller_store.configured(self._controllers.configure(config, new.pricing()))
        old, self._runtime = self._runtime, new
        new.note_settings()
        self._served.capacity = config.server.feedback_capacity
        self._sessions.capacity = config.routing.max_sessions
        self._limiter.configure(config)
        old.retired = True
        if old.streams == 0:
            self._close_later(old)

    def _close_later(self, rt: Runtime) -> None:
        task = asyncio.get_running_loop().create_task(self._close(rt))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, rt: Runtime) -> None:
        await rt.engine.aclose()
        if rt.writer is not None and rt.writer is not self._runtime.writer:
            await rt.writer.aclose()

    async def aclose(self) -> None:
        """Close the engines, save the controllers, write what is queued, close the limits."""
        rt = self._runtime
        await rt.engine.aclose()
        if self._closing:
            await asyncio.gather(*self._closing)
        await self._controller_store.settled()
        if rt.writer is not None:
            self._controller_store.save_all(rt.writer)
            await rt.writer.aclose()
        await self._limiter.aclose()


def _check(rt: Runtime, request: RouteRequest) -> Checked:
    """Check a Route or Complete request, its session id too (InvalidRequest naming the
    field)."""
    checked = check_request(rt, request)
    if request.session_id:
        check_session_id(request.session_id)
    return checked


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


__all__ = ["RouterService"]

"""The thin gRPC servicer: protobuf in, a domain call to RouterService, protobuf out."""

from __future__ import annotations

import contextlib
import time
from contextlib import aclosing
from typing import Any

import grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.domain import (
    CompletionSummary,
    Escalation,
    InvalidRequest,
    RouteFailure,
    RoutingDecision,
)
from router.server import convert
from router.server.interceptor import (
    REQUEST_ID_HEADER,
    RpcRecord,
    count_refusal,
    current_rpc,
    status_for,
)
from router.service import RouterService
from router.telemetry.attributes import decision_attributes
from router.telemetry.metrics import Metrics
from router.validation import check_id

Context = grpc.aio.ServicerContext[Any, Any]


class ModelRouterServicer(router_pb2_grpc.ModelRouterServicer):
    """Serve the modelrouter.v1.ModelRouter API from a RouterService."""

    def __init__(self, service: RouterService, metrics: Metrics | None = None) -> None:
        self._service = service
        self._metrics = metrics

    def _start(self, record: RpcRecord, request_id: str, tenant: str) -> tuple[str, str]:
        """Check or generate the request id, resolve the tenant; note both for the log line.

        With auth on, the tenant is the API key's; a tenant field naming another is refused.
        """
        rid = record.request_id = self._service.assign_request_id(request_id)
        if record.principal is not None:
            tenant = record.principal.tenant_for(tenant)
        record.tenant = tenant  # clipped when logged
        return rid, tenant

    async def Route(self, request: pb.RouteRequest, context: Context) -> pb.RouteResponse:
        """Return the routing decision for a query."""
        record = current_rpc()
        rid, tenant = self._start(record, request.request_id, request.tenant)
        # A trailer, not a header: on a unary call grpc.aio sends a header in a batch of
        # its own, which cost a fifth of Route's throughput; trailers ride with the status.
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        decision = await self._service.route(convert.route_request(request, rid, tenant))
        self._note_decision(record, decision)
        return convert.route_response(decision)

    async def RouteBatch(
        self, request: pb.RouteBatchRequest, context: Context
    ) -> pb.RouteBatchResponse:
        """Return the decisions of a batch of queries, or each one's error, in order."""
        record = current_rpc()
        # The batch's own id, for its trailer and log line; each request has its own.
        rid = record.request_id = self._service.new_request_id()
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        principal = record.principal
        results = await self._service.route_batch(
            [convert.route_request(r, r.request_id, r.tenant) for r in request.requests],
            None if principal is None else principal.tenant_for,
        )
        response = pb.RouteBatchResponse()
        add = response.results.add
        metrics = self._metrics
        errors = 0
        decision_micros = 0.0
        for result in results:
            if isinstance(result, RouteFailure):
                errors += 1
                code = status_for(result.error)
                convert.fill_route_error(add().error, result, code.value[0])
                if metrics is not None:
                    metrics.batch_item(code.name)
                    count_refusal(metrics, "RouteBatch", result.tenant, result.error)
                continue
            decision_micros += result.decision_micros
            convert.fill_decision(add().decision, result)
            if metrics is not None:
                metrics.decided(result.tier, result.decision_micros * 1e-6, result.score)
                metrics.batch_item("OK")
        record.decision_micros = decision_micros
        record.extra = (("items", len(results)), ("item_errors", errors))
        return response

    async def Complete(self, request: pb.CompleteRequest, context: Context) -> None:
        """Stream the decision, the answer's deltas and escalations, then the summary."""
        route = request.route
        record = current_rpc()
        rid, tenant = self._start(record, route.request_id, route.tenant)
        # A stream sends its header with the first message anyway.
        await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
        # The caller's deadline, as a plain time on the service's clock.
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        events = self._service.complete(convert.complete_request(request, rid, tenant, deadline))
        # aclosing: a cancelled RPC closes the engine's upstream stream at once.
        async with aclosing(events):
            async for event in events:
                if isinstance(event, RoutingDecision):
                    self._note_decision(record, event)
                elif isinstance(event, Escalation):
                    record.escalated = True
                elif isinstance(event, CompletionSummary):
                    record.tier = event.tier
                await context.write(convert.event(event))

    async def Feedback(self, request: pb.FeedbackRequest, context: Context) -> pb.FeedbackResponse:
        """Store a rating of an answer."""
        record = current_rpc()
        # The rated request's id, once checked, is the call's (its log line, and the
        # x-request-id trailer of an error); an invalid one keeps the generated id.
        with contextlib.suppress(InvalidRequest):
            check_id("request_id", request.request_id)
            record.request_id = request.request_id or record.request_id
        tenant = request.tenant
        if record.principal is not None:
            tenant = record.principal.tenant_for(tenant)
        record.tenant = tenant
        result = await self._service.feedback(convert.feedback(request, tenant))
        if self._metrics is not None:
            self._metrics.feedback(result.tier or "unknown")
        return convert.feedback_response(result)

    async def GetConfig(
        self, request: pb.GetConfigRequest, context: Context
    ) -> pb.GetConfigResponse:
        """Describe the configuration in force."""
        return convert.config_response(self._service.info())

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        """Report satisfaction, escalation, errors and cost per tier and model."""
        # With auth on, a key sees its own tenant's stats only.
        since, tenant = convert.stats_query(request)
        record = current_rpc()
        if record.principal is not None:
            tenant = record.principal.tenant_for(tenant or "")
        return convert.stats_response(await self._service.stats(since, tenant))

    def _note_decision(self, record: RpcRecord, decision: RoutingDecision) -> None:
        """Note a decision for the RPC's log line and count it."""
        record.tier = decision.tier
        record.score = decision.score
        record.decision_micros = decision.decision_micros
        if record.span is not None and record.span.is_recording():
            record.span.set_attributes(decision_attributes(decision))
        if self._metrics is not None:
            self._metrics.decided(decision.tier, decision.decision_micros * 1e-6, decision.score)

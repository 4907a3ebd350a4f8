"""The one interceptor: API keys, status codes for domain errors, the concurrency cap, one log
line per RPC.

It wraps the ModelRouter methods once (the wrapped handlers are cached per method), so the
per-RPC cost is a dictionary look-up, a context variable, the key check when auth is on, the
gRPC metrics and the log line. Health passes through with its metrics only, and reflection
(a bidirectional stream) untouched, so both answer even when the service is at its cap;
with ``auth.protect_health`` both ask for a key first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog
from google.protobuf import any_pb2, descriptor_pool, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from router.auth import KeyRing, Principal
from router.domain import (
    BackendUnavailable,
    DeadlineExceeded,
    InvalidRequest,
    LimitExceeded,
    LimitsUnavailable,
    LimitTooSmall,
    NotConfigured,
    Overloaded,
    PermissionDenied,
    Retryable,
    RouterError,
    StoreUnavailable,
    Unauthenticated,
)
from router.server.inflight import InFlight
from router.server.logs import write_rpc_line
from router.telemetry.metrics import SERVER_STREAM, UNARY, Metrics, RpcMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from router.telemetry.tracing import Tracing

log = structlog.get_logger()

REQUEST_ID_HEADER = "x-request-id"
# The trailer of a rich error status (google.rpc.Status), as grpcio-status and the Go and
# Java status APIs read it.
STATUS_DETAILS_TRAILER = "grpc-status-details-bin"
# Caller-controlled strings are clipped to this many characters in log lines, so that a
# request the service rejects for its size cannot blow up the log.
MAX_LOGGED_CHARS = 128

if TYPE_CHECKING:
    # Returns None for a method no servicer implements (grpc-stubs says otherwise).
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_OK = grpc.StatusCode.OK
_STATUS_OF: tuple[tuple[type[RouterError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    # Before BackendUnavailable: a DeadlineExceeded is one.
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (LimitsUnavailable, grpc.StatusCode.UNAVAILABLE),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: RouterError) -> grpc.StatusCode:
    """Return the status code a domain error maps to."""
    for kind, code in _STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def retry_details(code: grpc.StatusCode, message: str, retry_after_s: float) -> bytes:
    """Return a google.rpc.Status carrying a RetryInfo, serialized for its trailer."""
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, round(retry_after_s * 1e9)))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return bytes(status.SerializeToString())


class RpcRecord:
    """What the servicer learns about an RPC, for its log line."""

    __slots__ = (
        "decision_micros",
        "escalated",
        "extra",
        "method",
        "principal",
        "request_id",
        "score",
        "span",
        "tenant",
        "tier",
    )

    def __init__(self, method: str) -> None:
        self.method = method
        self.request_id = ""
        self.tenant = ""
        self.tier = ""
        self.score: float | None = None
        self.decision_micros: float | None = None
        self.escalated = False
        self.span: Span | None = None  # the RPC's span, when tracing is on
        # The caller its API key identifies, when auth is on.
        self.principal: Principal | None = None
        # More fields for the log line, after the usual ones (RouteBatch's counts).
        self.extra: tuple[tuple[str, str | int], ...] = ()


_current: ContextVar[RpcRecord | None] = ContextVar("modelrouter_rpc", default=None)


def _grpc_type(handler: grpc.RpcMethodHandler[Any, Any]) -> str:
    return SERVER_STREAM if handler.response_streaming else UNARY


def _behaviour(handler: grpc.RpcMethodHandler[Any, Any]) -> Callable[[Any, Any], Awaitable[Any]]:
    return cast(
        Callable[[Any, Any], Awaitable[Any]],
        handler.unary_stream if handler.response_streaming else handler.unary_unary,
    )


def clip_for_log(text: str) -> str:
    """Return a caller-controlled string clipped to a bounded length for a log line."""
    if len(text) <= MAX_LOGGED_CHARS:
        return text
    return f"{text[:MAX_LOGGED_CHARS]}...({len(text)} chars)"


def current_rpc() -> RpcRecord:
    """Return the record of the RPC being handled (a throwaway one outside the interceptor)."""
    record = _current.get()
    return record if record is not None else RpcRecord("unrecorded")


class ServiceInterceptor(_ServerInterceptor):
    """Map domain errors to status codes, cap concurrent RPCs and log one line per RPC.

    The cap counts ModelRouter RPCs in ``in_flight``: this process's alone by default, or
    every worker's of the server (``router.server.inflight.SharedInFlight``).

    Every error status carries the request id in the ``x-request-id`` trailer: the one the
    servicer assigned, or ``new_request_id()`` when the RPC failed before it had one.
    ``rpc_sample`` is the share of successful RPCs that get a log line; errors and
    escalated completions always do.
    """

    def __init__(
        self,
        service_name: str,
        max_concurrent: Callable[[], int],
        new_request_id: Callable[[], str],
        *,
        log_rpcs: bool = True,
        rpc_sample: float = 1.0,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        auth: Callable[[], KeyRing | None] = lambda: None,
        in_flight: InFlight | None = None,
    ) -> None:
        self._service_name = service_name
        self._auth = auth
        self._prefix = f"/{service_name}/"
        self._max_concurrent = max_concurrent
        self._new_request_id = new_request_id
        self._log_rpcs = log_rpcs
        self._rpc_sample = rpc_sample
        self._metrics = metrics
        self._tracing = tracing
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self._in_flight = InFlight() if in_flight is None else in_flight

    @property
    def in_flight(self) -> int:
        """Return this process's ModelRouter RPCs in flight."""
        return self._in_flight.count

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        if not method.startswith(self._prefix):
            keys = self._auth()
            if keys is not None and keys.protect_health:
                try:
                    keys.authenticate(handler_call_details.invocation_metadata)
                except Unauthenticated as exc:
                    refused = await continuation(handler_call_details)
                    if refused is None:
                        return refused
                    return _refusal(refused, exc, self._refused_early(method, exc))
        cached = self._handlers.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if method.startswith(self._prefix):
            if handler.request_streaming:
                raise TypeError(f"{method}: client-streaming methods are not supported")
            handle = self._handler(method.removeprefix(self._prefix), handler)
            # Decoded inside the handler: an undecodable request is then a bad input like any
            # other (INVALID_ARGUMENT, the request id trailer, a log line), not grpc's UNKNOWN.
            wrapped = self._wrap(handler, handle, request_deserializer=None)
        elif self._metrics is not None and not handler.request_streaming:
            service, _, name = method[1:].rpartition("/")
            rpc = self._metrics.rpc(_grpc_type(handler), service, name)
            wrapped = self._wrap(handler, self._counted(handler, rpc), handler.request_deserializer)
        else:
            return handler
        self._handlers[method] = wrapped
        return wrapped

    @staticmethod
    def _wrap(
        handler: grpc.RpcMethodHandler[Any, Any],
        wrapped: Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]],
        request_deserializer: Callable[[bytes], Any] | None,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(
            wrapped,
            request_deserializer=request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _counted(
        handler: grpc.RpcMethodHandler[Any, Any], rpc: RpcMetrics
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """Return another service's method (health) with its gRPC metrics and nothing else."""
        behaviour = _behaviour(handler)

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            rpc.started.n += 1
            code = grpc.StatusCode.OK
            try:
                return await behaviour(request, context)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                rpc.done(code, time.perf_counter() - started)

        return handle

    def _decoder(self, name: str, decode: Callable[[bytes], Any] | None) -> Callable[[Any], Any]:
        """Return the method's request decoder, which raises InvalidRequest on bad bytes."""
        if decode is None:
            return lambda request: request
        service = descriptor_pool.Default().FindServiceByName(self._service_name)
        problem = (
            f"not a valid {service.FindMethodByName(name).input_type.full_name} "
            "(not protobuf, truncated, or a string field that is not UTF-8)"
        )

        def decoded(raw: bytes) -> Any:
            try:
                return decode(raw)
            except DecodeError:
                raise InvalidRequest("request", problem) from None

        return decoded

    def _handler(
        self, name: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """Return the wrapped method: a plain coroutine function, as grpc inspects it per RPC."""
        behaviour = _behaviour(handler)
        decode = self._decoder(name, handler.request_deserializer)
        metrics = self._metrics
        rpc = (
            None if metrics is None else metrics.rpc(_grpc_type(handler), self._service_name, name)
        )
        log_rpcs, sample = self._log_rpcs, self._rpc_sample
        log_all = sample >= 1.0
        auth = self._auth
        uniform = random.random
        tracing, service = self._tracing, self._service_name
        in_flight = self._in_flight

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            if rpc is not None:
                rpc.started.n += 1
            record = RpcRecord(name)
            _current.set(record)
            token = None
            if tracing is not None:
                metadata = cast("Sequence[tuple[str, Any]] | None", context.invocation_metadata())
                record.span, token = tracing.start_rpc(service, name, metadata)
            code = grpc.StatusCode.OK
            error = ""
            failure: BaseException | None = None
            details: tuple[tuple[str, str | bytes], ...] = ()
            try:
                keys = auth()
                if keys is not None:
                    record.principal = keys.authorize(context.invocation_metadata(), name)
                    record.tenant = record.principal.tenant
                limit = self._max_concurrent()
                if not in_flight.enter(limit):
                    raise Overloaded(
                        f"{in_flight.total()} RPCs in flight, the limit is {limit} "
                        "(server.max_concurrent_rpcs): retry with backoff"
                    )
                try:
                    return await behaviour(decode(request), context)
                finally:
                    in_flight.leave()
            except RouterError as exc:
                code, error = status_for(exc), str(exc)
                if isinstance(exc, Retryable):
                    details = (
                        (STATUS_DETAILS_TRAILER, retry_details(code, error, exc.retry_after_s)),
                    )
                self._refused(name, record, exc)
            except asyncio.CancelledError:
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code, failure = grpc.StatusCode.INTERNAL, exc
                error = (
                    f"internal error; the server log has the details under request id "
                    f"{record.request_id}"
                    if record.request_id
                    else "internal error; the server log has the details"
                )
            finally:
                ok = code is _OK
                if not ok and not record.request_id:
                    record.request_id = self._new_request_id()
                if rpc is not None:
                    rpc.done(code, time.perf_counter() - started)
                if failure is not None or (
                    log_rpcs and (log_all or not ok or record.escalated or uniform() < sample)
                ):
                    self._log(record, code, error, failure, started)
                if tracing is not None and record.span is not None:
                    tracing.end_rpc(record.span, token, code.name, error)
            # Only reached after an error was recorded: end the RPC with its status.
            await context.abort(code, error, ((REQUEST_ID_HEADER, record.request_id), *details))

        return handle

    def _refused(self, method: str, record: RpcRecord, error: RouterError) -> None:
        """Count a refusal by auth or by a tenant's limit."""
        if self._metrics is not None:
            count_refusal(self._metrics, method, record.tenant, error)

    def _refused_early(self, method: str, error: Unauthenticated) -> str:
        """Count and log a refusal of health or reflection; return its request id.

        Like any other refusal it gets a request id for its trailer and its log line.
        """
        record = RpcRecord(method.rpartition("/")[2])
        record.request_id = self._new_request_id()
        if self._metrics is not None:
            self._metrics.auth_failed(record.method, error.reason)
        if self._log_rpcs:
            self._log(
                record, grpc.StatusCode.UNAUTHENTICATED, str(error), None, time.perf_counter()
            )
        return record.request_id

    @staticmethod
    def _log(
        record: RpcRecord,
        code: grpc.StatusCode,
        error: str,
        failure: BaseException | None,
        started: float,
    ) -> None:
        duration_ms = round((time.perf_counter() - started) * 1e3, 3)
        extra = record.extra
        if record.span is not None:
            from router.telemetry.tracing import ids

            found = ids(record.span)
            if found is not None:
                extra = (*extra, ("trace_id", found[0]), ("span_id", found[1]))
        if error and failure is None:
            extra = (*extra, ("error", error))
        request_id, tenant = record.request_id, record.tenant
        if len(request_id) > MAX_LOGGED_CHARS:
            request_id = clip_for_log(request_id)
        if len(tenant) > MAX_LOGGED_CHARS:
            tenant = clip_for_log(tenant)
        # Not code.name for OK: an Enum's name is a Python-level property.
        status = "OK" if code is _OK else code.name
        if failure is None and write_rpc_line(
            record.method,
            request_id,
            tenant,
            record.tier,
            record.score,
            record.decision_micros,
            status,
            duration_ms,
            extra,
        ):
            return
        fields: dict[str, Any] = {
            "method": record.method,
            "request_id": request_id,
            "tenant": tenant,
            "tier": record.tier,
            "score": record.score,
            "decision_micros": record.decision_micros,
            "status": status,
            "duration_ms": duration_ms,
            **dict(extra),
        }
        if failure is not None:
            log.error("rpc", **fields, error=repr(failure), exc_info=failure)
        else:
            log.info("rpc", **fields)


def count_refusal(metrics: Metrics, method: str, tenant: str, error: RouterError) -> None:
    """Count a refusal by auth or by a tenant's limit (other errors are not counted here)."""
    if isinstance(error, Unauthenticated | PermissionDenied):
        metrics.auth_failed(method, error.reason)
    elif isinstance(error, LimitExceeded | LimitTooSmall):
        metrics.limit_rejected(tenant, error.limit)


def _refusal(
    handler: grpc.RpcMethodHandler[Any, Any], error: Unauthenticated, request_id: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """Return a handler of the same shape as ``handler`` that ends with UNAUTHENTICATED."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, str(error), ((REQUEST_ID_HEADER, request_id),)
        )

    make: Any
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    refusal: grpc.RpcMethodHandler[Any, Any] = make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    return refusal

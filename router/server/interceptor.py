"""The one interceptor: status codes for domain errors, the concurrency cap, one log line per RPC.

It wraps the ModelRouter methods once (the wrapped handlers are cached per method), so the
per-RPC cost is a dictionary look-up, a context variable and the log line. Health and
reflection pass through untouched, so they answer even when the service is at its cap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, cast

import grpc
import structlog

from router.domain import (
    BackendUnavailable,
    InvalidRequest,
    NotConfigured,
    Overloaded,
    RouterError,
    StoreUnavailable,
)

log = structlog.get_logger()

REQUEST_ID_HEADER = "x-request-id"
# Caller-controlled strings are clipped to this many characters in log lines, so that a
# request the service rejects for its size cannot blow up the log.
MAX_LOGGED_CHARS = 128

if TYPE_CHECKING:
    # Returns None for a method no servicer implements (grpc-stubs says otherwise).
    Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]]
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

_STATUS_OF: tuple[tuple[type[RouterError], grpc.StatusCode], ...] = (
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (BackendUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (NotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(error: RouterError) -> grpc.StatusCode:
    """Return the status code a domain error maps to."""
    for kind, code in _STATUS_OF:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class RpcRecord:
    """What the servicer learns about an RPC, for its log line."""

    __slots__ = ("decision_micros", "method", "request_id", "score", "tenant", "tier")

    def __init__(self, method: str) -> None:
        self.method = method
        self.request_id = ""
        self.tenant = ""
        self.tier = ""
        self.score: float | None = None
        self.decision_micros: float | None = None


_current: ContextVar[RpcRecord | None] = ContextVar("modelrouter_rpc", default=None)


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

    Every error status carries the request id in the ``x-request-id`` trailer: the one the
    servicer assigned, or ``new_request_id()`` when the RPC failed before it had one.
    """

    def __init__(
        self,
        service_name: str,
        max_concurrent: Callable[[], int],
        new_request_id: Callable[[], str],
        *,
        log_rpcs: bool = True,
    ) -> None:
        self._prefix = f"/{service_name}/"
        self._max_concurrent = max_concurrent
        self._new_request_id = new_request_id
        self._log_rpcs = log_rpcs
        self._handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
        self.in_flight = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        handler = await continuation(handler_call_details)
        if handler is None or not method.startswith(self._prefix):
            return handler
        wrapped = self._wrap(method.removeprefix(self._prefix), handler)
        self._handlers[method] = wrapped
        return wrapped

    def _wrap(
        self, name: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        if handler.request_streaming:
            raise TypeError(f"{name}: client-streaming methods are not supported")
        behaviour = cast(
            Callable[[Any, Any], Awaitable[Any]],
            handler.unary_stream if handler.response_streaming else handler.unary_unary,
        )

        make = (
            grpc.unary_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return make(
            self._handler(name, behaviour),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _handler(
        self, name: str, behaviour: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]:
        """Return the wrapped method: a plain coroutine function, as grpc inspects it per RPC."""

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            record = RpcRecord(name)
            _current.set(record)
            code = grpc.StatusCode.OK
            error = ""
            failure: BaseException | None = None
            try:
                limit = self._max_concurrent()
                if self.in_flight >= limit:
                    raise Overloaded(
                        f"{self.in_flight} RPCs in flight, the limit is {limit} "
                        "(server.max_concurrent_rpcs): retry with backoff"
                    )
                self.in_flight += 1
                try:
                    return await behaviour(request, context)
                finally:
                    self.in_flight -= 1
            except RouterError as exc:
                code, error = status_for(exc), str(exc)
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
                if code is not grpc.StatusCode.OK and not record.request_id:
                    record.request_id = self._new_request_id()
                if self._log_rpcs or failure is not None:
                    self._log(record, code, error, failure, started)
            # Only reached after an error was recorded: end the RPC with its status.
            await context.abort(code, error, ((REQUEST_ID_HEADER, record.request_id),))

        return handle

    @staticmethod
    def _log(
        record: RpcRecord,
        code: grpc.StatusCode,
        error: str,
        failure: BaseException | None,
        started: float,
    ) -> None:
        fields: dict[str, Any] = {
            "method": record.method,
            "request_id": clip_for_log(record.request_id),
            "tenant": clip_for_log(record.tenant),
            "tier": record.tier,
            "score": record.score,
            "decision_micros": record.decision_micros,
            "status": code.name,
            "duration_ms": round((time.perf_counter() - started) * 1e3, 3),
        }
        if failure is not None:
            log.error("rpc", **fields, error=repr(failure), exc_info=failure)
        elif error:
            log.info("rpc", **fields, error=error)
        else:
            log.info("rpc", **fields)

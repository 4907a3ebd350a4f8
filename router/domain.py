"""Transport-neutral requests, decisions and completion events of the service.

The gRPC layer converts protobuf messages to and from these; nothing below the server
package sees a protobuf type.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class RouterError(Exception):
    """Base class of the errors the service maps to a status code."""


class InvalidRequest(RouterError):
    """The request is malformed; the message names the field (INVALID_ARGUMENT)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


class Overloaded(RouterError):
    """Too many requests in flight (RESOURCE_EXHAUSTED)."""


class BackendUnavailable(RouterError):
    """No allowed tier could answer (UNAVAILABLE); the message names each attempt's failure."""

    def __init__(self, message: str, attempts: tuple[Attempt, ...] = ()) -> None:
        super().__init__(message)
        # Every attempt made, when no summary was sent: for the store, and what they cost
        # settles budgets.
        self.attempts = attempts


class DeadlineExceeded(BackendUnavailable):
    """The caller's deadline leaves no stronger tier time for a first token (DEADLINE_EXCEEDED).

    The message names every attempt made and every tier skipped for the deadline; like
    ``BackendUnavailable`` it carries the attempts (what they cost settles budgets).
    """


class Unauthenticated(RouterError):
    """No API key, or one the configuration does not list (UNAUTHENTICATED)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a bounded label: missing_key, malformed, unknown_key


class PermissionDenied(RouterError):
    """The key may not do this: another method, or another tenant (PERMISSION_DENIED)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a bounded label: method_denied, tenant_mismatch


class Retryable(RouterError):
    """A refusal the caller may retry after ``retry_after_s`` seconds (google.rpc.RetryInfo)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class LimitExceeded(Retryable):
    """A tenant's rate, token or budget limit is used up (RESOURCE_EXHAUSTED)."""

    def __init__(self, limit: str, message: str, retry_after_s: float) -> None:
        super().__init__(message, retry_after_s)
        self.limit = limit  # the limit's key: requests_per_s, tokens_per_minute, usd_per_day, ...


class LimitsUnavailable(Retryable):
    """The shared limit counts cannot be reached and the policy is fail_closed (UNAVAILABLE)."""


class NotConfigured(RouterError):
    """The request needs something this server's configuration turned off (FAILED_PRECONDITION)."""


class LimitTooSmall(NotConfigured):
    """A request needs more than a whole limit of its tenant: no wait can fit it
    (FAILED_PRECONDITION, without a RetryInfo)."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit  # the limit's key: tokens_per_minute, usd_per_day, usd_per_month


class StoreUnavailable(RouterError):
    """The store could not be read (UNAVAILABLE)."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class TierHints:
    """Caller constraints on the tier; empty strings mean unset."""

    min_tier: str = ""
    max_tier: str = ""
    tier: str = ""


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What to route: exactly one of ``prompt`` and ``messages``."""

    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    request_id: str = ""
    tenant: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    hints: TierHints = TierHints()
    # A conversation's id: its requests never go to a cheaper tier than it already used.
    session_id: str = ""


@dataclass(frozen=True, slots=True)
class GenerationOptions:
    max_tokens: int = 0
    temperature: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CompleteRequest:
    route: RouteRequest
    generation: GenerationOptions = GenerationOptions()
    # When the caller stops waiting, in seconds on ``time.monotonic()``; None: no deadline.
    deadline: float | None = None


class DecisionReason(enum.Enum):
    SCORE = "score"
    MIN_TIER = "min_tier"
    MAX_TIER = "max_tier"
    FORCED = "forced"
    MARGIN = "margin"
    SESSION_FLOOR = "session_floor"


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """The service's answer to Route, and the first event of Complete."""

    request_id: str
    tier: str
    tier_index: int
    model: str
    backend: str
    score: float
    levels: tuple[float, ...]
    rules: tuple[str, ...]
    reason: DecisionReason
    estimated_prompt_tokens: int
    estimated_cost_usd: float
    strongest_tier_cost_usd: float
    model_version: str
    decision_micros: float


@dataclass(frozen=True, slots=True)
class RouteFailure:
    """Why one request of a batch got no decision: the error Route would have ended it with."""

    request_id: str
    error: RouterError
    tenant: str = ""


class AttemptOutcome(enum.Enum):
    """How one attempt at one tier ended (mirrors the proto's AttemptOutcome)."""

    OK = "ok"
    GATE_REJECTED = "gate_rejected"
    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    HTTP_ERROR = "http_error"
    MALFORMED_STREAM = "malformed_stream"
    ERROR_EVENT = "error_event"
    CIRCUIT_OPEN = "circuit_open"
    CANCELLED = "cancelled"
    FAILED_AFTER_COMMIT = "failed_after_commit"
    DEADLINE_SKIPPED = "deadline_skipped"


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class GateReport:
    """What the confidence gate saw on an attempt's held-back start."""

    enabled: bool
    held_tokens: int = 0
    held_ms: float = 0.0
    mean_logprob: float | None = None
    low_logprob_share: float | None = None
    passed: bool = True
    reason: str = ""
    window_tokens: int = 0
    window_ms: float = 0.0
    min_mean_logprob: float = 0.0
    max_low_logprob_share: float = 0.0


@dataclass(frozen=True, slots=True)
class Attempt:
    index: int
    tier: str
    model: str
    backend: str
    outcome: AttemptOutcome
    detail: str = ""
    duration_ms: float = 0.0
    first_token_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    gate: GateReport = GateReport(enabled=False)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reported_by_backend: bool


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Escalation:
    from_tier: str
    to_tier: str
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class CompletionSummary:
    tier: str
    tier_index: int
    model: str
    backend: str
    usage: Usage
    cost_usd: float
    strongest_tier_cost_usd: float
    finish_reason: str
    attempts: tuple[Attempt, ...]
    delivered_chars: int
    duration_ms: float
    first_text_ms: float


# The events of a Complete stream, in order: one RoutingDecision, then TextDelta and
# Escalation events, then one CompletionSummary. A failure after text was delivered
# yields the summary (finish_reason "error") and then raises BackendUnavailable.
CompleteEvent = RoutingDecision | TextDelta | Escalation | CompletionSummary


@dataclass(frozen=True, slots=True)
class BackendState:
    """A backend's circuit-breaker state, as GetConfig reports it."""

    name: str
    kind: str
    circuit: CircuitState
    recent_failures: int
    open_seconds_left: float


@dataclass(frozen=True, slots=True)
class Feedback:
    """A caller's rating of an answer, by the request id it was returned under."""

    request_id: str
    rating: float
    comment: str = ""
    tenant: str = ""
    label: str = ""


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """What Feedback answers: whether the request id is known, and whether it was kept."""

    known_request: bool
    stored: bool
    # The tier that served the rated request, when this worker or the store knows it.
    tier: str | None = None

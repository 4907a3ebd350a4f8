"""The transport-neutral service: validate a request, decide its tier, run it, record feedback.

The gRPC servicer converts protobuf to the domain types of ``router.domain`` and calls this
module; nothing here knows about gRPC. Everything a request depends on (configuration,
routing model, completion engine) lives in one immutable ``_Runtime`` that ``reload``
replaces with a single assignment, so a request sees either the old or the new world,
never a mix.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router.completion.cost import estimate_tokens
from router.config import Config, ConfigError
from router.domain import (
    BackendState,
    ChatMessage,
    CompleteEvent,
    CompleteRequest,
    CompletionSummary,
    Escalation,
    Feedback,
    GenerationOptions,
    InvalidRequest,
    RouteRequest,
    RoutingDecision,
    TextDelta,
    TierHints,
)
from router.feedback import FeedbackStore
from router.model import ModelError, default_model_path, load_model
from router.routing import Router, choose_tier

# Request limits that are part of the API contract (documented in router.proto).
MAX_REQUEST_ID_CHARS = 128
MAX_TENANT_CHARS = 128
MAX_MESSAGES = 1000
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 64
MAX_COMMENT_CHARS = 2048
MAX_TEMPERATURE = 2.0
ROLES = frozenset({"system", "user", "assistant"})

# UTF-8 needs at most this many bytes per character: shorter strings skip the encode.
MAX_UTF8_BYTES_PER_CHAR = 4


class Engine(Protocol):
    """What Complete drives: the backend layer (router.completion.engine.CompletionEngine)."""

    def run(
        self,
        decision: RoutingDecision,
        messages: Sequence[ChatMessage],
        generation: GenerationOptions,
        *,
        max_tier_index: int,
    ) -> AsyncGenerator[TextDelta | Escalation | CompletionSummary, None]: ...

    def backend_states(self) -> list[BackendState]: ...

    async def aclose(self) -> None: ...


EngineFactory = Callable[[Config], Engine]


def completion_engine(config: Config) -> Engine:
    """Return the backend layer's engine for a configuration."""
    from router.completion.engine import CompletionEngine

    return CompletionEngine(config)


def config_model_path(config: Config, base_dir: Path | None = None) -> Path:
    """Return the model file a configuration names, a relative path taken from ``base_dir``."""
    if config.model == "builtin":
        return default_model_path()
    path = Path(config.model)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


def load_router(config: Config, base_dir: Path | None = None) -> tuple[Router, str]:
    """Load the routing model a configuration names; return the router and where it came from.

    A relative model path is taken relative to ``base_dir`` (the configuration file's
    directory). Thresholds come from the tiers' ``min_score`` when set, else from the model.
    """
    path = config_model_path(config, base_dir)
    source = "builtin" if config.model == "builtin" else str(path)
    try:
        model = load_model(path)
    except ModelError as exc:
        raise ConfigError(f"model: {exc}") from None
    names = [tier.name for tier in config.tiers]
    thresholds = config.explicit_thresholds()
    if thresholds is None:
        if len(model.thresholds) != len(names) - 1:
            raise ConfigError(
                f"tiers: the model {model.version} is calibrated for "
                f"{len(model.thresholds) + 1} tiers but {len(names)} are configured; set "
                "min_score on every tier above the cheapest"
            )
        thresholds = model.thresholds
    try:
        router = Router(model, tier_names=names, thresholds=thresholds)
    except ValueError as exc:
        raise ConfigError(f"tiers: {exc}") from None
    return router, source


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


class _Runtime:
    """One consistent world: configuration, routing model, engine and derived lookups."""

    __slots__ = (
        "config",
        "context_weight",
        "engine",
        "input_price",
        "margins",
        "max_concurrent_rpcs",
        "max_prompt_bytes",
        "model_source",
        "model_version",
        "retired",
        "router",
        "streams",
        "thresholds",
        "tier_index",
        "tier_list",
    )

    def __init__(self, config: Config, router: Router, engine: Engine, model_source: str) -> None:
        self.config = config
        self.router = router
        self.engine = engine
        self.model_source = model_source
        self.thresholds = router.thresholds
        self.model_version = router.version
        self.tier_index = {tier.name: i for i, tier in enumerate(config.tiers)}
        self.tier_list = ", ".join(self.tier_index)
        # Dollars per prompt token, per tier.
        self.input_price = tuple(t.price.input_per_mtok / 1e6 for t in config.tiers)
        default = config.routing.escalation_margin
        self.margins = tuple(
            default if t.escalation_margin is None else t.escalation_margin
            for t in config.tiers[1:]
        )
        self.context_weight = config.routing.context_weight
        self.max_prompt_bytes = config.server.max_prompt_bytes
        self.max_concurrent_rpcs = config.server.max_concurrent_rpcs
        self.streams = 0
        self.retired = False

    def tier_hint(self, field_name: str, name: str) -> int | None:
        """Return the index of a hinted tier, None when unset; reject unknown names."""
        if not name:
            return None
        index = self.tier_index.get(name)
        if index is None:
            raise InvalidRequest(
                field_name, f"unknown tier {_clip(name)!r} (configured: {self.tier_list})"
            )
        return index


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
        self._runtime = _Runtime(config, router, engine_factory(config), model_source)
        self._feedback = FeedbackStore(config.server.feedback_capacity)
        # Request ids: a random per-process prefix and a counter, unique across workers
        # and restarts without the cost of a UUID per request.
        self._id_prefix = os.urandom(5).hex()
        self._id_counter = itertools.count(1)
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
        return f"{self._id_prefix}{next(self._id_counter):08x}"

    def assign_request_id(self, given: str) -> str:
        """Return the caller's request id after checking it, or a fresh one when it is empty."""
        if not given:
            return self.new_request_id()
        if len(given) > MAX_REQUEST_ID_CHARS:
            raise InvalidRequest(
                "request_id", f"{len(given)} characters, over the limit of {MAX_REQUEST_ID_CHARS}"
            )
        if not (given.isascii() and given.isprintable()) or " " in given:
            raise InvalidRequest("request_id", "must be printable ASCII without spaces")
        return given

    # -- Route -------------------------------------------------------------------------

    def route(self, request: RouteRequest) -> RoutingDecision:
        """Validate a request and return its routing decision.

        ``request.request_id`` is taken as assigned (by ``assign_request_id``, which checks
        the caller's id once at the edge); an empty one is replaced by a fresh id.
        """
        decision, _ = self._decide(self._runtime, request)
        return decision

    def _decide(self, rt: _Runtime, request: RouteRequest) -> tuple[RoutingDecision, int]:
        """Return the decision and the highest tier index the request allows."""
        request_id = request.request_id or self.new_request_id()
        _check_tenant(request.tenant)
        if request.metadata:
            _check_metadata(request.metadata)
        forced, low, high = _check_hints(rt, request.hints)
        prompt, messages = request.prompt, request.messages
        if messages:
            if prompt:
                raise InvalidRequest("prompt", "set either prompt or messages, not both")
            last_user, chars = _check_messages(messages, rt.max_prompt_bytes)
            tokens = estimate_tokens(chars, len(messages))
            started = time.perf_counter()
            scored = rt.router.score_chat(messages, rt.context_weight, last_user)
        else:
            if not prompt or prompt.isspace():
                raise InvalidRequest(
                    "prompt", "empty: set a non-blank prompt or a list of messages"
                )
            _check_size("prompt", prompt, rt.max_prompt_bytes)
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
        _check_generation(request.generation)
        decision, max_index = self._decide(rt, request.route)
        route = request.route
        messages = route.messages or (ChatMessage("user", route.prompt),)
        # Counted before the first yield: a reload while the decision is being sent must
        # not close the engine this stream is about to run on.
        rt.streams += 1
        try:
            yield decision
            run = rt.engine.run(decision, messages, request.generation, max_tier_index=max_index)
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
        if not feedback.request_id:
            raise InvalidRequest("request_id", "required: the id of the answer being rated")
        self.assign_request_id(feedback.request_id)
        if not 0.0 <= feedback.rating <= 1.0:  # also rejects NaN
            raise InvalidRequest("rating", f"{feedback.rating} is outside [0, 1]")
        if len(feedback.comment) > MAX_COMMENT_CHARS:
            raise InvalidRequest(
                "comment",
                f"{len(feedback.comment)} characters, over the limit of {MAX_COMMENT_CHARS}",
            )
        _check_tenant(feedback.tenant)
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
        new = _Runtime(config, router, self._engine_factory(config), model_source)
        old, self._runtime = self._runtime, new
        self._feedback.capacity = config.server.feedback_capacity
        old.retired = True
        if old.streams == 0:
            self._close_later(old)

    def _close_later(self, rt: _Runtime) -> None:
        task = asyncio.get_running_loop().create_task(rt.engine.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        """Close the engine in force and wait for retired ones to close."""
        await self._runtime.engine.aclose()
        if self._closing:
            await asyncio.gather(*self._closing)


def _clip(text: str, limit: int = 64) -> str:
    """Return text short enough to quote in an error message."""
    return text if len(text) <= limit else text[:limit] + "..."


def _check_size(field_name: str, text: str, limit: int) -> None:
    if len(text) * MAX_UTF8_BYTES_PER_CHAR <= limit:
        return
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise InvalidRequest(
            field_name, f"{size} bytes, over the limit of {limit} bytes (server.max_prompt_bytes)"
        )


def _check_tenant(tenant: str) -> None:
    if len(tenant) > MAX_TENANT_CHARS:
        raise InvalidRequest(
            "tenant", f"{len(tenant)} characters, over the limit of {MAX_TENANT_CHARS}"
        )


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidRequest(
            "metadata", f"{len(metadata)} entries, over the limit of {MAX_METADATA_ENTRIES}"
        )
    for key, value in metadata.items():
        if not key:
            raise InvalidRequest("metadata", "empty key")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidRequest(
                "metadata",
                f"key {_clip(key)!r} has {len(key)} characters, over the limit of "
                f"{MAX_METADATA_KEY_CHARS}",
            )
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidRequest(
                f"metadata[{key!r}]",
                f"{len(value)} characters, over the limit of {MAX_METADATA_VALUE_CHARS}",
            )


def _check_hints(rt: _Runtime, hints: TierHints) -> tuple[int | None, int | None, int | None]:
    """Return the forced, minimum and maximum tier indexes of the hints."""
    if not (hints.tier or hints.min_tier or hints.max_tier):
        return None, None, None
    forced = rt.tier_hint("hints.tier", hints.tier)
    low = rt.tier_hint("hints.min_tier", hints.min_tier)
    high = rt.tier_hint("hints.max_tier", hints.max_tier)
    if low is not None and high is not None and low > high:
        raise InvalidRequest(
            "hints.min_tier", f"{hints.min_tier!r} is above hints.max_tier {hints.max_tier!r}"
        )
    if forced is not None:
        if high is not None and forced > high:
            raise InvalidRequest(
                "hints.tier", f"{hints.tier!r} is above hints.max_tier {hints.max_tier!r}"
            )
        if low is not None and forced < low:
            raise InvalidRequest(
                "hints.tier", f"{hints.tier!r} is below hints.min_tier {hints.min_tier!r}"
            )
    return forced, low, high


def _check_messages(messages: Sequence[ChatMessage], limit: int) -> tuple[int, int]:
    """Check count, roles, the last user turn and size; return that turn's index and the chars."""
    if len(messages) > MAX_MESSAGES:
        raise InvalidRequest("messages", f"{len(messages)} turns, over the limit of {MAX_MESSAGES}")
    last_user = -1
    chars = 0
    for i, message in enumerate(messages):
        role = message.role
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{i}].role", f"{_clip(role)!r} is not one of system, user, assistant"
            )
        if role == "user":
            last_user = i
        chars += len(message.content)
    if last_user < 0:
        raise InvalidRequest("messages", "no turn has role 'user'")
    content = messages[last_user].content
    if not content or content.isspace():
        raise InvalidRequest(f"messages[{last_user}].content", "the last user turn is empty")
    if chars * MAX_UTF8_BYTES_PER_CHAR > limit:
        _check_size("messages", "".join(m.content for m in messages), limit)
    return last_user, chars


def _check_generation(generation: GenerationOptions) -> None:
    if generation.max_tokens < 0:
        raise InvalidRequest("generation.max_tokens", "must not be negative")
    temperature = generation.temperature
    if temperature is not None and not 0.0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(
            "generation.temperature", f"{temperature} is outside [0, {MAX_TEMPERATURE:g}]"
        )
    stop = generation.stop
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(
            "generation.stop", f"{len(stop)} sequences, over the limit of {MAX_STOP_SEQUENCES}"
        )
    for i, sequence in enumerate(stop):
        if not sequence:
            raise InvalidRequest(f"generation.stop[{i}]", "must not be empty")
        if len(sequence) > MAX_STOP_CHARS:
            raise InvalidRequest(
                f"generation.stop[{i}]",
                f"{len(sequence)} characters, over the limit of {MAX_STOP_CHARS}",
            )


__all__ = [
    "Engine",
    "EngineFactory",
    "RouterService",
    "ServiceInfo",
    "completion_engine",
    "load_router",
]

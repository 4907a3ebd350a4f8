"""One consistent world a request runs in: configuration, routing model, engine, lookups.

``RouterService`` holds one ``Runtime`` and replaces it with a single assignment on reload,
so a request sees either the old or the new world, never a mix. A retired runtime's engine
closes once its last stream has finished.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Protocol

from router.auth import KeyRing, key_ring
from router.config import Config
from router.controller import Pricing
from router.domain import (
    BackendState,
    ChatMessage,
    CompletionSummary,
    Escalation,
    GenerationOptions,
    RoutingDecision,
    TextDelta,
)
from router.routing import Router
from router.store import StateRecord, StoreWriter
from router.store.stats import SATISFIED_AT_STATE


class Engine(Protocol):
    """What Complete drives: the backend layer (router.completion.engine.CompletionEngine)."""

    def run(
        self,
        decision: RoutingDecision,
        messages: Sequence[ChatMessage],
        generation: GenerationOptions,
        *,
        max_tier_index: int,
        deadline: float | None = None,
    ) -> AsyncGenerator[TextDelta | Escalation | CompletionSummary, None]: ...

    def backend_states(self) -> list[BackendState]: ...

    async def aclose(self) -> None: ...


EngineFactory = Callable[[Config], Engine]


def completion_engine(config: Config) -> Engine:
    """Return the backend layer's engine for a configuration."""
    from router.completion.engine import CompletionEngine

    return CompletionEngine(config)


class Runtime:
    """One consistent world: configuration, routing model, engine and derived lookups."""

    __slots__ = (
        "config",
        "context_weight",
        "engine",
        "input_price",
        "keep_text",
        "key_ring",
        "margins",
        "max_concurrent_rpcs",
        "max_prompt_bytes",
        "model_source",
        "model_version",
        "retired",
        "router",
        "session_floor",
        "streams",
        "thresholds",
        "tier_index",
        "writer",
    )

    def __init__(
        self,
        config: Config,
        router: Router,
        engine: Engine,
        model_source: str,
        writer: StoreWriter | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.engine = engine
        self.model_source = model_source
        # Where this world's requests are recorded (a reload may keep the same writer).
        self.writer = writer
        self.keep_text = config.store is not None and config.store.keep_text
        self.session_floor = config.routing.session_floor
        self.thresholds = router.thresholds
        self.model_version = router.version
        self.tier_index = {tier.name: i for i, tier in enumerate(config.tiers)}
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
        # The API keys when auth is on, else None.
        self.key_ring: KeyRing | None = key_ring(config.auth)
        # Complete streams running on this engine and writer; a retired runtime closes
        # them at zero.
        self.streams = 0
        self.retired = False

    def note_settings(self) -> None:
        """Write the satisfaction threshold to the store, for readers of the store itself."""
        if self.writer is not None:
            satisfied_at = self.config.feedback.satisfied_at
            self.writer.put(StateRecord(SATISFIED_AT_STATE, satisfied_at, time.time()))

    def pricing(self) -> Pricing:
        """Return what a tenant's controller acts on: the thresholds and prices in force."""
        return Pricing(
            thresholds=self.thresholds,
            margins=self.margins,
            input_price=self.input_price,
            output_price=tuple(t.price.output_per_mtok / 1e6 for t in self.config.tiers),
            model_version=self.model_version,
        )

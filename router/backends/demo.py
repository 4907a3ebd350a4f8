"""The local demo backend: a short canned, clearly labelled answer at a known token rate.

It serves the embedded default configuration (so ``Complete`` works on a fresh machine
before any model is configured) and benchmarks that need a backend of known speed. It
reports plausible log-probabilities so a tier's confidence gate can run on it.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncGenerator

from router.backends.base import Backend, BackendRequest, Chunk, TokenUsage, register
from router.config import DemoBackendConfig

ANSWER = (
    "[modelrouter demo backend] This is a canned answer, not a model's: tier model "
    "{model} is served by the built-in demo backend. Configure an openai or anthropic "
    "backend for this tier to get real answers."
)
_WORDS = re.compile(r"\s*\S+")


def canned_tokens(model: str) -> list[str]:
    """Return the demo answer for ``model``, one word (with its leading space) per token."""
    return _WORDS.findall(ANSWER.format(model=model))


def demo_logprob(index: int) -> float:
    """Return a plausible, deterministic log-probability for the token at ``index``."""
    return -0.05 - 0.6 * (0.5 + 0.5 * math.sin(index * 1.7))


@register("demo")
class DemoBackend(Backend):
    """Stream the canned answer, one token every ``1 / tokens_per_second`` seconds."""

    config: DemoBackendConfig

    async def _stream(self, request: BackendRequest) -> AsyncGenerator[Chunk, None]:
        loop = asyncio.get_running_loop()
        tokens = canned_tokens(request.model)
        count = min(len(tokens), request.max_tokens)
        interval = 1.0 / self.config.tokens_per_second
        start = loop.time() + self.config.first_token_ms / 1000.0
        for i in range(count):
            # Absolute times, so the rate holds however long the consumer takes.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield Chunk(
                text=tokens[i],
                tokens=1,
                logprobs=(demo_logprob(i),) if request.logprobs else None,
            )
        prompt_chars = sum(len(m.content) for m in request.messages)
        yield Chunk(
            finish_reason="stop" if count == len(tokens) else "length",
            usage=TokenUsage(max(1, prompt_chars // 4), count),
        )

"""Prices: what tokens cost on a tier, and the one token estimate used without a tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from router.config import PriceConfig
from router.domain import ChatMessage

# A rough English average; used only when neither the provider nor the router counted.
CHARS_PER_TOKEN = 4
# Chat framing (role markers, separators) that chat templates add around each turn.
TOKENS_PER_MESSAGE = 4


def cost_usd(price: PriceConfig, prompt_tokens: int, completion_tokens: int) -> float:
    """Return the US-dollar cost of the tokens at a tier's per-million-token prices."""
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def estimate_tokens(chars: int, turns: int = 1) -> int:
    """Return the prompt tokens of ``chars`` characters over ``turns`` chat turns."""
    return max(1, -(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * turns)


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """Return an estimate of a chat's prompt tokens: its characters plus framing per turn."""
    return estimate_tokens(sum(len(m.content) for m in messages), len(messages))

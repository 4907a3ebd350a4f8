"""Run a chosen tier: streaming, upward fallback, the confidence gate, circuits and cost."""

from router.completion.engine import CompletionEngine

__all__ = ["CompletionEngine"]

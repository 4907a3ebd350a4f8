"""The pre-commit confidence gate: judge the held-back start of an answer.

The engine holds back the first ``window_tokens`` tokens (or ``window_ms`` after the
first token, whichever ends first) and asks ``GateWindow.verdict`` whether they may be
sent. The start fails when it is empty, was cut short, or its tokens' log-probabilities
are too low on average or too often below ``low_logprob``. A backend that reports no
log-probabilities is judged on the empty/cut rules alone.
"""

from __future__ import annotations

import dataclasses

from router.backends import Chunk
from router.config import GateConfig
from router.domain import GateReport

NOT_GATED = GateReport(enabled=False)


def limits_report(gate: GateConfig, *, reason: str) -> GateReport:
    """Return a passing report that carries the gate's limits and ``reason``."""
    return GateReport(
        enabled=True,
        passed=True,
        reason=reason,
        window_tokens=gate.window_tokens,
        window_ms=gate.window_ms,
        min_mean_logprob=gate.min_mean_logprob,
        max_low_logprob_share=gate.max_low_logprob_share,
    )


class GateWindow:
    """The held-back start of one attempt: its chunks, tokens and log-probabilities."""

    __slots__ = ("chunks", "finish_reason", "gate", "logprobs", "tokens")

    def __init__(self, gate: GateConfig) -> None:
        self.gate = gate
        self.chunks: list[Chunk] = []
        self.logprobs: list[float] = []
        self.tokens = 0
        self.finish_reason: str | None = None

    def add(self, chunk: Chunk) -> None:
        """Hold a chunk back."""
        self.chunks.append(chunk)
        self.tokens += chunk.tokens
        if chunk.logprobs:
            self.logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason

    @property
    def full(self) -> bool:
        """Whether enough tokens are held to judge."""
        return self.tokens >= self.gate.window_tokens

    def text(self) -> str:
        """Return the held text."""
        return "".join(chunk.text for chunk in self.chunks)

    def verdict(self, held_ms: float, *, max_tokens: int) -> GateReport:
        """Judge the held start; ``max_tokens`` tells a cut start from a short limit."""
        gate = self.gate
        held = self.logprobs
        mean = sum(held) / len(held) if held else None
        low_share = sum(1 for lp in held if lp < gate.low_logprob) / len(held) if held else None
        if len(self.text().strip()) < gate.min_chars:
            passed, reason = False, f"empty start (under {gate.min_chars} chars)"
        elif self.finish_reason == "length" and self.tokens < min(gate.window_tokens, max_tokens):
            passed, reason = False, f"truncated start (cut after {self.tokens} tokens)"
        elif mean is not None and mean < gate.min_mean_logprob:
            passed, reason = False, f"mean logprob {mean:.3f} < {gate.min_mean_logprob:g}"
        elif low_share is not None and low_share > gate.max_low_logprob_share:
            passed, reason = (
                False,
                f"low-logprob share {low_share:.2f} > {gate.max_low_logprob_share:g}",
            )
        else:
            passed, reason = True, "passed" if held else "passed (no logprobs reported)"
        return dataclasses.replace(
            limits_report(gate, reason=reason),
            passed=passed,
            held_tokens=self.tokens,
            held_ms=held_ms,
            mean_logprob=mean,
            low_logprob_share=low_share,
        )

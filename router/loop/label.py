"""``modelrouter label``: outcome rows for stored prompts, from the tiers' answers and a judge.

For each sampled prompt (the store keeps them with ``store.keep_text: true``) the labeller
runs the prompt on the cheapest and on the strongest tier through the backend layer
(``CompletionEngine``; pinned to that tier, no climb and no gate: the answer of exactly that
model is what is graded), then asks the judge tier to grade each answer
(``router.loop.judge``). A row's ``scores`` hold the grades that parsed, under the two
models' names, with ``weak_model`` and ``strong_model`` naming them (the row format
``modelrouter train`` reads).

Every step's result is written to the store as soon as it is known (named state
``label:<request id>``), and the run's sample as ``label-run:<output file>``: ``--resume``
takes the same sample and skips every step already done, so nothing is paid twice. The
output file is written (atomically) when every prompt has been through every step.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from router.config import Config
from router.domain import (
    BackendUnavailable,
    ChatMessage,
    CompletionSummary,
    DecisionReason,
    GenerationOptions,
    RoutingDecision,
    TextDelta,
)
from router.loop.judge import judge_prompt, parse_grade
from router.store import StateRecord, Store, StoredRequest

STATE_VERSION = 1
LABEL_KEY = "label:"
RUN_KEY = "label-run:"
SOURCE = "label"


class LabelError(Exception):
    """The labelling run cannot go on; the message says why."""


@dataclass(frozen=True, slots=True)
class Prompt:
    """A stored prompt to label: the routed text, and the chat it came in when there was one."""

    request_id: str
    tenant: str
    text: str
    messages: tuple[ChatMessage, ...]


@dataclass(frozen=True, slots=True)
class Answer:
    """What one tier answered, and what it cost."""

    text: str
    cost_usd: float
    prompt_tokens: int
    completion_tokens: int


def prompts_of(requests: Iterable[StoredRequest]) -> tuple[list[Prompt], int]:
    """Return the stored requests that kept their text (the latest per id), and how many
    did not."""
    by_id: dict[str, Prompt] = {}
    without = 0
    for r in requests:
        if r.prompt is None and not r.messages:
            without += 1
            continue
        messages = tuple(ChatMessage(role, content) for role, content in r.messages or ())
        text = r.prompt if r.prompt is not None else _last_user(messages)
        by_id[r.request_id] = Prompt(r.request_id, r.tenant, text, messages)
    return list(by_id.values()), without


def _last_user(messages: Sequence[ChatMessage]) -> str:
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


def sample(prompts: Sequence[Prompt], n: int, seed: int = 0) -> list[Prompt]:
    """Return ``n`` prompts chosen by a seeded hash of their request ids (stable order)."""

    def rank(p: Prompt) -> bytes:
        return hashlib.sha256(f"{seed}:{p.request_id}".encode()).digest()

    return sorted(prompts, key=rank)[:n]


def without_gates(config: Config) -> Config:
    """Return the configuration with every tier's confidence gate off."""
    tiers = [t.model_copy(update={"gate": None}) for t in config.tiers]
    return config.model_copy(update={"tiers": tiers})


class TierRunner:
    """Run a prompt on exactly one tier through the backend layer."""

    def __init__(self, config: Config, max_tokens: int) -> None:
        from router.completion.engine import CompletionEngine

        self.config = without_gates(config)
        self._engine = CompletionEngine(self.config)
        self._generation = GenerationOptions(max_tokens=max_tokens, temperature=0.0)

    async def answer(self, tier_index: int, messages: Sequence[ChatMessage]) -> Answer:
        """Return the tier's whole answer; raise LabelError when it fails."""
        tier = self.config.tiers[tier_index]
        decision = RoutingDecision(
            request_id=f"label-{tier.name}",
            tier=tier.name,
            tier_index=tier_index,
            model=tier.model,
            backend=tier.backend,
            score=0.0,
            levels=(),
            rules=(),
            reason=DecisionReason.FORCED,
            estimated_prompt_tokens=0,
            estimated_cost_usd=0.0,
            strongest_tier_cost_usd=0.0,
            model_version="",
            decision_micros=0.0,
        )
        parts: list[str] = []
        summary: CompletionSummary | None = None
        try:
            run = self._engine.run(decision, messages, self._generation, max_tier_index=tier_index)
            async for event in run:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, CompletionSummary):
                    summary = event
        except BackendUnavailable as exc:
            raise LabelError(f"tier {tier.name} ({tier.model}): {exc}") from None
        if summary is None or summary.finish_reason == "error":
            raise LabelError(f"tier {tier.name} ({tier.model}): the answer was cut off")
        usage = summary.usage
        return Answer(
            "".join(parts), summary.cost_usd, usage.prompt_tokens, usage.completion_tokens
        )

    async def aclose(self) -> None:
        """Close the backends' connections."""
        await self._engine.aclose()


@dataclass
class Progress:
    """Counts of a run, and the terminal line that shows them."""

    total: int
    out: TextIO = sys.stderr
    done: int = 0
    reused_steps: int = 0
    paid_steps: int = 0
    failed: int = 0
    ungraded: int = 0
    cost_usd: float = 0.0

    def show(self, prompt: Prompt, note: str) -> None:
        """Print one line per prompt (a TTY gets it redrawn in place)."""
        line = (
            f"[{self.done}/{self.total}] {prompt.request_id}: {note}; "
            f"{self.paid_steps} calls paid (${self.cost_usd:.4f}), {self.reused_steps} reused"
        )
        if self.out.isatty():
            self.out.write("\r\x1b[2K" + line)
            if self.done == self.total:
                self.out.write("\n")
        else:
            self.out.write(line + "\n")
        self.out.flush()


class Labeller:
    """Label prompts with the cheapest and strongest tiers' answers and the judge's grades."""

    def __init__(
        self,
        store: Store,
        runner: TierRunner,
        judge_index: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._runner = runner
        tiers = runner.config.tiers
        self._cheap, self._strong = 0, len(tiers) - 1
        self._judge = judge_index
        self.cheap_model = tiers[0].model
        self.strong_model = tiers[-1].model
        self.judge_model = tiers[judge_index].model
        self._clock = clock

    def _save(self, key: str, value: Any) -> None:
        self._store.write([StateRecord(key, value, self._clock())])

    async def label(self, prompt: Prompt, progress: Progress) -> dict[str, Any]:
        """Run every step not yet done for one prompt; return its persisted state."""
        key = LABEL_KEY + prompt.request_id
        state = self._store.state(key)
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            state = {"version": STATE_VERSION, "text_sha256": _sha(prompt.text)}
        if state.get("text_sha256") != _sha(prompt.text):
            state = {"version": STATE_VERSION, "text_sha256": _sha(prompt.text)}
        messages = prompt.messages or (ChatMessage("user", prompt.text),)
        for side, index, model in (
            ("cheap", self._cheap, self.cheap_model),
            ("strong", self._strong, self.strong_model),
        ):
            done = state.get(side)
            if isinstance(done, dict) and done.get("model") == model:
                progress.reused_steps += 1
                continue
            answer = await self._runner.answer(index, messages)
            progress.paid_steps += 1
            progress.cost_usd += answer.cost_usd
            state[side] = {
                "model": model,
                "answer": answer.text,
                "cost_usd": answer.cost_usd,
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
            }
            state.pop(f"judge_{side}", None)  # a new answer needs a new grade
            self._save(key, state)
        for side in ("cheap", "strong"):
            graded = state.get(f"judge_{side}")
            if isinstance(graded, dict) and graded.get("model") == self.judge_model:
                progress.reused_steps += 1
            else:
                question = judge_prompt(prompt.text, state[side]["answer"])
                reply = await self._runner.answer(self._judge, (ChatMessage("user", question),))
                progress.paid_steps += 1
                progress.cost_usd += reply.cost_usd
                grade = parse_grade(reply.text)
                state[f"judge_{side}"] = {
                    "model": self.judge_model,
                    "reply": reply.text,
                    "grade": grade,
                    "cost_usd": reply.cost_usd,
                }
                self._save(key, state)
            if state[f"judge_{side}"]["grade"] is None:
                progress.ungraded += 1
        return dict(state)

    def row(self, prompt: Prompt, state: dict[str, Any]) -> dict[str, Any]:
        """Return the training row of a labelled prompt (scores: the grades that parsed)."""
        scores = {}
        for side, model in (("cheap", self.cheap_model), ("strong", self.strong_model)):
            grade = state.get(f"judge_{side}", {}).get("grade")
            if grade is not None:
                scores[model] = grade
        return {
            "id": prompt.request_id,
            "text": prompt.text,
            "scores": scores or None,
            "weak_model": self.cheap_model,
            "strong_model": self.strong_model,
            "source": SOURCE,
            "tenant": prompt.tenant,
            "judge": self.judge_model,
        }


def run_key(out: Path) -> str:
    """Return the named state that holds a run's sample: by its output file."""
    return RUN_KEY + str(out.resolve())


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write JSONL rows atomically (a temporary file renamed); return how many."""
    tmp = path.with_name(f".{path.name}.tmp")
    count = 0
    try:
        with tmp.open("w", encoding="utf-8", errors="backslashreplace") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return count


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


__all__ = [
    "Answer",
    "LabelError",
    "Labeller",
    "Progress",
    "Prompt",
    "TierRunner",
    "prompts_of",
    "run_key",
    "sample",
    "without_gates",
    "write_rows",
]

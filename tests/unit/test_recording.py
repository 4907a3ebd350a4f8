"""Records of served requests: Route's row is the row of the record it stands for."""

from __future__ import annotations

import json
import time

import pytest

from router.domain import ChatMessage, DecisionReason, RouteRequest, RoutingDecision, TierHints
from router.recording import route_row
from router.store.records import RequestRecord, RequestRow, RouteRow
from router.store.rows import REQUEST_COLUMNS, ROUTE_COLUMNS, ROUTE_CONSTANTS, request_row

NOW = 1_700_000_123.25
CHAT = (
    ChatMessage("system", "be brief"),
    ChatMessage("user", 'what is "2+2"?'),
    ChatMessage("assistant", "4"),
    ChatMessage("user", "and 日本 é?"),
)


def decision(
    rules: tuple[str, ...] = (), reason: DecisionReason = DecisionReason.SCORE
) -> RoutingDecision:
    return RoutingDecision(
        request_id="0a1b2c3d4e00000001",
        tier="strong",
        tier_index=1,
        model="demo-strong",
        backend="demo",
        score=0.6180339887498949,
        levels=(0.1, 0.25, 1 / 3, 0.2, 0.11666666666666667),
        rules=rules,
        reason=reason,
        estimated_prompt_tokens=42,
        estimated_cost_usd=42 * 2.5e-6,
        strongest_tier_cost_usd=42 * 15e-6,
        model_version="default-8d0c1de7821f",
        decision_micros=5.5,
    )


def the_record(
    key: str,
    request: RouteRequest,
    d: RoutingDecision,
    keep_text: bool,
    hints: tuple[tuple[str, str], ...],
) -> RequestRecord:
    """Return the Route's record as a RequestRecord, field by field (what the row stands for)."""
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    if keep_text:
        if request.messages:
            prompt = [m.content for m in request.messages if m.role == "user"][-1]
            messages = tuple((m.role, m.content) for m in request.messages)
        else:
            prompt = request.prompt
    return RequestRecord(
        key=key,
        request_id=d.request_id,
        time=NOW,
        method="route",
        tenant=request.tenant,
        session_id=request.session_id,
        tier=d.tier,
        tier_index=d.tier_index,
        model=d.model,
        backend=d.backend,
        score=d.score,
        levels=d.levels,
        rules=d.rules,
        reason=d.reason.value,
        model_version=d.model_version,
        hints=hints,
        outcome="routed",
        prompt_tokens=d.estimated_prompt_tokens,
        completion_tokens=0,
        cost_usd=d.estimated_cost_usd,
        strongest_cost_usd=d.strongest_tier_cost_usd,
        prompt=prompt,
        messages=messages,
    )


def whole(row: RouteRow) -> RequestRow:
    """Return a Route's row with the columns every Route shares: the row the store writes."""
    values = dict(zip(ROUTE_COLUMNS, row, strict=True)) | ROUTE_CONSTANTS
    return tuple(values[column] for column in REQUEST_COLUMNS)


@pytest.mark.parametrize("keep_text", [False, True])
@pytest.mark.parametrize(
    ("request_", "rules", "reason", "hints"),
    [
        (RouteRequest(prompt="hello"), (), DecisionReason.SCORE, ()),
        (
            RouteRequest(prompt="fix my code", tenant="acme", session_id="s-1"),
            ("code", 'a "quoted" rule'),
            DecisionReason.MARGIN,
            (),
        ),
        (
            RouteRequest(prompt="x", hints=TierHints(min_tier="strong")),
            (),
            DecisionReason.MIN_TIER,
            (("min_tier", "strong"),),
        ),
        (
            RouteRequest(messages=CHAT, hints=TierHints(tier="strong", max_tier="expert")),
            (),
            DecisionReason.FORCED,
            (("tier", "strong"), ("max_tier", "expert")),
        ),
    ],
)
def test_a_route_row_is_the_row_of_its_record(
    monkeypatch: pytest.MonkeyPatch,
    request_: RouteRequest,
    rules: tuple[str, ...],
    reason: DecisionReason,
    hints: tuple[tuple[str, str], ...],
    keep_text: bool,
) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)
    d = decision(rules, reason)
    row = route_row("k-1", request_, d, keep_text=keep_text)
    assert whole(row) == request_row(the_record("k-1", request_, d, keep_text, hints))
    columns = dict(zip(ROUTE_COLUMNS, row, strict=True))
    assert json.loads(columns["levels"]) == list(d.levels)
    assert json.loads(columns["rules"]) == list(rules)
    assert json.loads(columns["hints"]) == dict(hints)
    # Only the values of a row: nothing the collector keeps tracking once it has seen it.
    assert all(v is None or type(v) in (str, int, float) for v in row)

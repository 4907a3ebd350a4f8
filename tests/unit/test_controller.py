"""The online cost controller as pure logic, on an injected clock."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from router.config import Config, parse_config
from router.controller import (
    NO_TIER,
    STATE_KEY,
    Controllers,
    Pricing,
    Served,
    Settings,
    Target,
    TenantController,
    shift_thresholds,
)
from router.routing import choose_tier

PRICING = Pricing(
    thresholds=(0.4, 0.8),
    margins=(0.0, 0.0),
    input_price=(1e-7, 1e-6, 1e-5),
    output_price=(2e-7, 2e-6, 2e-5),
    model_version="m-1",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def controller(
    target: Target, pricing: Pricing = PRICING, clock: Clock | None = None, **overrides: Any
) -> TenantController:
    return TenantController(
        "acme",
        target,
        Settings(**overrides),
        pricing,
        clock=clock or Clock(),
    )


def serve(
    c: TenantController,
    score: float,
    *,
    forced: int = NO_TIER,
    min_index: int = NO_TIER,
    max_index: int = NO_TIER,
    cheap_fails: bool = False,
    tokens: tuple[int, int] = (100, 200),
) -> int:
    """Route one request with the controller's thresholds, as the service does; record it."""
    decided, _ = choose_tier(
        score,
        c.thresholds,
        forced=None if forced == NO_TIER else forced,
        min_index=None if min_index == NO_TIER else min_index,
        max_index=None if max_index == NO_TIER else max_index,
    )
    answered = 1 if decided == 0 and cheap_fails else decided
    c.record(Served(score, decided, answered, forced, min_index, max_index, *tokens))
    return answered


def test_shift_keeps_thresholds_ordered_and_inside_the_unit_interval() -> None:
    assert shift_thresholds((0.4, 0.8), 0.0) == (0.4, 0.8)
    for offset in (-20.0, -3.0, -0.1, 0.1, 3.0, 20.0):
        low, high = shift_thresholds((0.4, 0.8), offset)
        assert 0.0 < low < high < 1.0
    assert shift_thresholds((0.4, 0.8), 1.0)[0] > 0.4 > shift_thresholds((0.4, 0.8), -1.0)[0]
    assert shift_thresholds((0.0, 1.0), 0.5)[0] > 0.0
    # sigmoid(logit(0.02)) rounds an ulp above 0.02: an offset too small to move the logit
    # leaves the threshold where it is, and none moves it against the offset's sign.
    assert shift_thresholds((0.02,), -1e-300) == (0.02,)
    raised = shift_thresholds((0.02, 0.4), 1e-300)
    assert all(new >= old for new, old in zip(raised, (0.02, 0.4), strict=True))


def test_share_target_is_held_on_a_stationary_stream() -> None:
    c = controller(Target("strong_share", 0.3))
    rng = random.Random(1)
    served = [serve(c, rng.random()) for _ in range(6000)]
    tail = served[-2000:]
    assert abs(sum(t >= 1 for t in tail) / len(tail) - 0.3) < 0.03
    # Uniform scores: a 30% share needs the first threshold near 0.7, up from 0.4.
    assert c.offset > 0 and c.thresholds[0] == pytest.approx(0.7, abs=0.05)


def test_the_share_follows_a_shift_in_the_difficulty_mix() -> None:
    c = controller(Target("strong_share", 0.3))
    rng = random.Random(2)
    for _ in range(3000):
        serve(c, rng.random() * 0.5)  # easy traffic: little above 0.4
    low_offset = c.offset
    served = [serve(c, 0.5 + rng.random() * 0.5) for _ in range(3000)]  # hard traffic
    assert c.offset > low_offset
    tail = served[-1000:]
    assert abs(sum(t >= 1 for t in tail) / len(tail) - 0.3) < 0.03


def test_each_update_moves_the_offset_by_at_most_max_step_within_the_limits() -> None:
    c = controller(Target("strong_share", 0.05), max_step=0.1, max_offset=1.0, update_every=10)
    previous, moves = c.offset, []
    for i in range(2000):
        serve(c, 0.9)  # every request wants the strong tier; the target wants 5%
        if (i + 1) % 10 == 0:
            moves.append(c.offset - previous)
            previous = c.offset
    assert max(abs(m) for m in moves) <= 0.1 + 1e-12
    assert c.offset == 1.0  # the limit, not further
    assert c.snapshot().saturated  # and the target is not met there


def test_forced_and_min_tier_requests_count_toward_the_target_and_are_never_overridden() -> None:
    c = controller(Target("strong_share", 0.3))
    rng = random.Random(3)
    served = []
    for _ in range(6000):
        hint = rng.random()
        if hint < 0.1:
            # The caller forces the strong tier: answered there whatever the offset.
            assert serve(c, rng.random(), forced=1) == 1
            served.append(1)
        elif hint < 0.2:
            assert serve(c, rng.random(), min_index=1) >= 1
            served.append(1)
        elif hint < 0.25:
            assert serve(c, rng.random(), max_index=0) == 0
            served.append(0)
        else:
            served.append(serve(c, rng.random()))
    tail = served[-2000:]
    # 20% are above the cheapest by the caller's choice: the controller moves the rest.
    assert abs(sum(t >= 1 for t in tail) / len(tail) - 0.3) < 0.03
    assert c.thresholds[0] > 0.8


def test_escalations_count_toward_the_target() -> None:
    plain = controller(Target("strong_share", 0.3))
    climbing = controller(Target("strong_share", 0.3))
    rng = random.Random(4)
    served = []
    for _ in range(6000):
        score = rng.random()
        serve(plain, score)
        served.append(serve(climbing, score, cheap_fails=rng.random() < 0.2))
    tail = served[-2000:]
    assert abs(sum(t >= 1 for t in tail) / len(tail) - 0.3) < 0.03
    # A fifth of the cheap tier's requests climb: fewer may be sent up by score.
    assert climbing.thresholds[0] > plain.thresholds[0]


def test_spend_target_is_held_on_a_simulated_clock() -> None:
    clock = Clock()
    c = controller(Target("usd_per_hour", 2.0), clock=clock)
    rng = random.Random(5)
    spent = []
    for _ in range(8000):
        clock.now += 1.0  # one request a second
        tier = serve(c, rng.random(), tokens=(200, 300))
        spent.append(200 * PRICING.input_price[tier] + 300 * PRICING.output_price[tier])
    # The last 2,000 requests took 2,000 s.
    rate = sum(spent[-2000:]) / (2000 / 3600)
    assert rate == pytest.approx(2.0, rel=0.1)
    snap = c.snapshot()
    assert snap.realised == pytest.approx(2.0, rel=0.15)
    assert not snap.saturated


def test_old_requests_leave_the_window() -> None:
    clock = Clock()
    c = controller(Target("strong_share", 0.3), clock=clock, window_s=60.0, min_requests=10)
    for _ in range(50):
        serve(c, 0.9)
    assert c.snapshot().window_requests == 50
    clock.now += 61.0
    snap = c.snapshot()
    assert snap.window_requests == 0 and snap.realised is None
    before = c.offset
    for _ in range(9):  # below min_requests: no update
        serve(c, 0.1)
    c.update()
    assert c.offset == before


def _served_tier(pricing: Pricing, offset: float, record: Served) -> int:
    decided, _ = choose_tier(
        record.score,
        shift_thresholds(pricing.thresholds, offset),
        margin=pricing.margins,
        forced=None if record.forced == NO_TIER else record.forced,
        min_index=None if record.min_index == NO_TIER else record.min_index,
        max_index=None if record.max_index == NO_TIER else record.max_index,
    )
    climbed = record.answered if record.answered > record.decided else NO_TIER
    return max(decided, climbed)


@st.composite
def windows(draw: st.DrawFn) -> tuple[Pricing, list[Served], float]:
    n_tiers = draw(st.integers(2, 5))
    thresholds = sorted(
        draw(
            st.lists(st.floats(0.01, 0.99), min_size=n_tiers - 1, max_size=n_tiers - 1, unique=True)
        )
    )
    margins = draw(
        st.lists(st.sampled_from([0.0, 0.02, 0.1]), min_size=n_tiers - 1, max_size=n_tiers - 1)
    )
    prices = sorted(draw(st.lists(st.floats(1e-8, 1e-4), min_size=n_tiers, max_size=n_tiers)))
    pricing = Pricing(tuple(thresholds), tuple(margins), tuple(prices), tuple(prices), "m")
    records = []
    for _ in range(draw(st.integers(1, 40))):
        score = draw(st.floats(0.0, 1.0))
        forced = draw(st.sampled_from([NO_TIER, NO_TIER, NO_TIER, *range(n_tiers)]))
        low = draw(st.sampled_from([NO_TIER, NO_TIER, *range(n_tiers)]))
        high = draw(st.sampled_from([NO_TIER, NO_TIER, *range(n_tiers)]))
        if low != NO_TIER and high != NO_TIER and low > high:
            low, high = high, low
        if forced != NO_TIER:
            forced = min(max(forced, low), high if high != NO_TIER else forced)
        decided = draw(st.integers(0, n_tiers - 1))
        answered = draw(st.integers(decided, n_tiers - 1))
        tokens = draw(st.integers(0, 500)), draw(st.integers(0, 500))
        records.append(Served(score, decided, answered, forced, low, high, *tokens))
    offset = draw(st.floats(-6.0, 6.0))
    return pricing, records, offset


@settings(max_examples=300, deadline=None)
@given(windows())
# A threshold of 0.02 less its margin of 0.02 is 0.0, the score: at offset 0 the score
# reaches it, but sigmoid(logit(0.02)) rounds an ulp above 0.02, so any offset too small
# to move the logit used to raise the threshold (the served tier 0, the curve's tier 1).
@example(
    (
        Pricing(
            thresholds=(0.02, 0.5, 0.75),
            margins=(0.02, 0.0, 0.0),
            input_price=(
                5e-06,
                6.684847278012341e-06,
                3.603903903372739e-05,
                7.978806090172277e-05,
            ),
            output_price=(
                5e-06,
                6.684847278012341e-06,
                3.603903903372739e-05,
                7.978806090172277e-05,
            ),
            model_version="m",
        ),
        [Served(score=0.0, decided=0, answered=0)],
        -4.293418820820291e-116,
    )
)
def test_the_window_at_any_offset_is_what_choose_tier_would_have_served(
    case: tuple[Pricing, list[Served], float],
) -> None:
    pricing, records, offset = case
    share = controller(Target("strong_share", 0.5), pricing, update_every=10**6)
    clock = Clock()
    spend = controller(Target("usd_per_hour", 1.0), pricing, clock, update_every=10**6)
    for record in records:
        share.record(record)
        spend.record(record)
    clock.now += 3600.0
    tiers = [_served_tier(pricing, offset, r) for r in records]
    assert share.quantity_at(offset) == pytest.approx(
        sum(t >= 1 for t in tiers) / len(tiers), abs=1e-9
    )
    cost = sum(
        r.prompt_tokens * pricing.input_price[t] + r.completion_tokens * pricing.output_price[t]
        for r, t in zip(records, tiers, strict=True)
    )
    assert spend.quantity_at(offset) == pytest.approx(cost, rel=1e-9, abs=1e-15)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.floats(0.01, 0.99),
    st.sampled_from([0.0, 0.02, 0.1]),
    st.integers(-40, 40),
)
def test_the_window_is_what_choose_tier_serves_ulps_around_a_breakpoint(
    score: float, threshold: float, margin: float, ulps: int
) -> None:
    # The offsets a few ulps either side of the logit-space estimate of the breakpoint,
    # where the estimate and the served arithmetic disagree.
    pricing = Pricing((threshold,), (margin,), (1e-6, 1e-5), (1e-6, 1e-5), "m")
    level = min(max(score + margin, 1e-6), 1.0 - 1e-6)
    offset = math.log(level / (1.0 - level)) - math.log(threshold / (1.0 - threshold))
    for _ in range(abs(ulps)):
        offset = math.nextafter(offset, math.copysign(math.inf, ulps))
    offset = min(max(offset, -6.0), 6.0)
    share = controller(Target("strong_share", 0.5), pricing, update_every=10**6)
    record = Served(score, decided=0, answered=0)
    share.record(record)
    assert share.quantity_at(offset) == float(_served_tier(pricing, offset, record) >= 1)


def test_state_round_trips_through_json_and_resumes_warm() -> None:
    c = controller(Target("strong_share", 0.3))
    rng = random.Random(6)
    for _ in range(1000):
        serve(c, rng.random())
    state = json.loads(json.dumps(c.state()))
    fresh = controller(Target("strong_share", 0.3))
    assert fresh.restore(state)
    assert fresh.offset == c.offset and fresh.thresholds == c.thresholds
    assert fresh.snapshot().realised == pytest.approx(c.snapshot().realised)
    assert fresh.state()["window"] == state["window"]


@pytest.mark.parametrize(
    "change",
    [
        {"model_version": "m-2"},
        {"tiers": 4},
        {"target": {"kind": "usd_per_hour", "value": 1.0}},
        {"version": 99},
        {"offset": "nan"},
        {"window": [[1.0, 0.5, 0, 0, -1, -1, -1, 1, 1]]},  # a column short
        {"window": [[1.0, 0.5, 0, 7, -1, -1, -1, 1, 1, 0.0]]},  # tier 7 of 3
        {"window": [[1.0, 1.5, 0, 0, -1, -1, -1, 1, 1, 0.0]]},  # score out of range
        {"window": "garbage"},
    ],
)
def test_a_state_that_does_not_fit_is_refused_and_the_controller_starts_cold(
    change: dict[str, object],
) -> None:
    c = controller(Target("strong_share", 0.3))
    for _ in range(200):
        serve(c, 0.9)
    state = {**c.state(), **change}
    fresh = controller(Target("strong_share", 0.3))
    assert not fresh.restore(state)
    assert fresh.offset == 0.0 and fresh.snapshot().window_requests == 0


def test_a_new_model_starts_a_new_window_and_new_prices_keep_it() -> None:
    c = controller(Target("strong_share", 0.1))
    for _ in range(500):
        serve(c, 0.9)
    assert c.offset > 0
    offset = c.offset
    c.reprice(Pricing(PRICING.thresholds, PRICING.margins, (1e-6,) * 3, (1e-6,) * 3, "m-1"))
    assert c.offset == offset and c.snapshot().window_requests == 500
    c.reprice(Pricing((0.5, 0.6), PRICING.margins, (1e-6,) * 3, (1e-6,) * 3, "m-2"))
    assert c.offset == 0.0 and c.thresholds == (0.5, 0.6)
    assert c.snapshot().window_requests == 0


def test_no_target_in_reach_lowers_the_thresholds_only_to_the_limit() -> None:
    # Every query is easy; 50% above the cheapest needs thresholds below 0.05.
    c = controller(Target("strong_share", 0.5), min_offset=-1.0)
    for _ in range(2000):
        serve(c, float(np.float64(0.01)))
    assert c.offset == -1.0
    assert c.snapshot().saturated


def targets_config(controller: dict[str, float] | None = None, **targets: Any) -> Config:
    """Return a three-tier configuration with these tenants' targets."""
    data = {
        "version": 1,
        "tiers": [
            {
                "name": n,
                "model": n,
                "backend": "demo",
                "price": {"input_per_mtok": p, "output_per_mtok": p},
            }
            for n, p in (("cheap", 0.1), ("strong", 1.0), ("expert", 10.0))
        ],
        "backends": {"demo": {"kind": "demo"}},
        "controller": controller or {},
        "tenants": {name: {"target": target} for name, target in targets.items()},
    }
    return parse_config(data, environ={})


def test_a_service_restart_resumes_every_tenant_from_its_stored_state() -> None:
    config = targets_config(acme={"strong_share": 0.3}, globex={"usd_per_hour": 1})
    before = Controllers(Clock())
    before.configure(config, PRICING)
    acme = before.get("acme")
    assert acme is not None
    rng = random.Random(7)
    for _ in range(1000):
        serve(acme, rng.random())
    states = json.loads(json.dumps(before.states()))
    assert sorted(states) == [STATE_KEY + "acme", STATE_KEY + "globex"]
    after = Controllers(Clock())
    after.configure(config, PRICING)
    assert after.restore(states) == ["acme", "globex"]
    resumed = after.get("acme")
    assert resumed is not None and resumed.offset == acme.offset != 0.0
    assert resumed.snapshot().window_requests == acme.snapshot().window_requests
    # Another model's state does not fit: a cold start.
    other = Controllers(Clock())
    other.configure(
        config,
        Pricing(
            PRICING.thresholds, PRICING.margins, PRICING.input_price, PRICING.output_price, "m-2"
        ),
    )
    assert other.restore(states) == []

"""PGR curve, APGR, CPT, cost saved and the operating point, against hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.training.metrics import (
    STRONG_PRICE,
    WEAK_PRICE,
    apgr,
    cost_ratio,
    cost_saved_at_quality,
    cpt,
    operating_point,
    pgr_curve,
    summarize,
)

# Four queries: the strong model helps on the first two only.
WEAK = [0.0, 0.0, 1.0, 0.0]
STRONG = [1.0, 1.0, 1.0, 0.0]  # q_weak 0.25, q_strong 0.75
ORACLE = [0.9, 0.8, 0.1, 0.2]  # the two helped queries first


def saved_at(share: float) -> float:
    return 1.0 - (share * STRONG_PRICE + (1 - share) * WEAK_PRICE) / STRONG_PRICE


def test_the_oracle_curve_by_hand() -> None:
    curve = pgr_curve(ORACLE, WEAK, STRONG)
    assert (curve.q_weak, curve.q_strong) == (0.25, 0.75)
    assert curve.shares.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.25, 0.5, 0.75, 0.75, 0.75]
    assert curve.pgr.tolist() == [0.0, 0.5, 1.0, 1.0, 1.0]
    # Trapezoids of width 1/4: (0 + .5)/2 + (.5 + 1)/2 + 1 + 1 = 3, times 1/4.
    assert apgr(curve) == 0.75
    assert cpt(curve, 0.5) == 0.25
    assert cpt(curve, 0.8) == 0.5
    assert cpt(curve, 1.0) == 0.5
    # 98% of 0.75 is 0.735: first reached with half the queries on the strong model.
    saved, share = cost_saved_at_quality(curve)
    assert saved == pytest.approx(saved_at(0.5), abs=1e-15)
    assert share == 0.5
    assert summarize(curve).apgr == 0.75
    assert summarize(curve).share_98 == 0.5


def test_the_reversed_order_by_hand() -> None:
    curve = pgr_curve([-s for s in ORACLE], WEAK, STRONG)
    assert curve.quality.tolist() == [0.25, 0.25, 0.25, 0.5, 0.75]
    assert curve.pgr.tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert apgr(curve) == 0.25
    assert cpt(curve, 0.5) == 0.75
    assert cost_saved_at_quality(curve)[1] == 1.0
    assert cost_saved_at_quality(curve)[0] == pytest.approx(0.0, abs=1e-15)


def test_a_constant_score_is_the_random_router() -> None:
    curve = pgr_curve([0.5] * 4, WEAK, STRONG)
    assert curve.pgr.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert apgr(curve) == 0.5
    assert cpt(curve, 0.5) == 0.5
    assert cpt(curve, 0.8) == 1.0


def test_ties_share_their_group_mean_gain() -> None:
    """Scores 0.9 | 0.5 0.5 | 0.1 with gains 1 | 0 1 | 1: the tied pair counts 0.5 each."""
    weak = [0.0, 0.0, 0.0, 0.0]
    strong = [1.0, 0.0, 1.0, 1.0]
    curve = pgr_curve([0.9, 0.5, 0.5, 0.1], weak, strong)
    assert curve.quality.tolist() == [0.0, 0.25, 0.375, 0.5, 0.75]
    assert curve.pgr.tolist() == pytest.approx([0.0, 1 / 3, 0.5, 2 / 3, 1.0], abs=1e-15)
    # The order of the rows within a tie does not matter.
    swapped = pgr_curve([0.9, 0.5, 0.5, 0.1], weak, [1.0, 1.0, 0.0, 1.0])
    assert swapped.quality.tolist() == curve.quality.tolist()


def test_the_oracle_can_pass_the_strong_model() -> None:
    """Where the weak model wins, the oracle keeps it: PGR above 1 midway, APGR above 1."""
    weak, strong = [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]  # q_weak 1/3, q_strong 2/3
    curve = pgr_curve([2.0, 0.0, 1.0], weak, strong)
    assert curve.pgr.tolist() == pytest.approx([0.0, 1.0, 2.0, 1.0])
    # Trapezoids of width 1/3: (0 + 1)/2 + (1 + 2)/2 + (2 + 1)/2 = 3.5.
    assert apgr(curve) == pytest.approx(3.5 / 3)
    assert cpt(curve, 1.5) == pytest.approx(2 / 3)
    assert cpt(curve, 2.5) is None


def test_equal_weak_and_strong_quality_gives_a_flat_curve() -> None:
    curve = pgr_curve([0.1, 0.2], [1.0, 0.0], [0.0, 1.0])
    assert curve.pgr.tolist() == [0.0, 0.0, 0.0]
    assert cost_saved_at_quality(curve)[1] == 0.0


def test_no_rows_is_an_error() -> None:
    with pytest.raises(ValueError, match="no outcome rows"):
        pgr_curve([], [], [])


def test_cost_ratio_and_prices() -> None:
    assert cost_ratio(1.0) == 1.0
    assert cost_ratio(0.0) == WEAK_PRICE / STRONG_PRICE
    assert cost_ratio(0.5, strong_price=10.0, weak_price=2.0) == 0.6
    curve = pgr_curve(ORACLE, WEAK, STRONG)
    saved, share = cost_saved_at_quality(curve, 0.98, strong_price=10.0, weak_price=0.0)
    assert (saved, share) == (0.5, 0.5)
    # A quality target of 100% also needs half the queries here; 50% needs none.
    assert cost_saved_at_quality(curve, 1.0)[1] == 0.5
    assert cost_saved_at_quality(curve, 1 / 3)[1] == 0.0


def test_operating_point_by_hand() -> None:
    point = operating_point([True, False, True, False], WEAK, STRONG)
    # Strong answers rows 0 and 2 (1, 1), weak rows 1 and 3 (0, 0): quality 0.5 of 0.75.
    assert point.strong_share == 0.5
    assert point.quality == 0.5
    assert point.quality_kept == pytest.approx(2 / 3, abs=1e-15)
    assert point.cost_saved == pytest.approx(saved_at(0.5), abs=1e-15)
    none_up = operating_point([False] * 4, WEAK, STRONG)
    assert (none_up.strong_share, none_up.quality) == (0.0, 0.25)
    assert operating_point([True] * 4, WEAK, STRONG).quality_kept == 1.0
    assert operating_point([False, True], [0.0, 0.0], [0.0, 0.0]).quality_kept == 1.0


outcomes = st.lists(
    st.tuples(
        st.integers(0, 4).map(lambda s: s / 4),  # few distinct scores: many ties
        st.sampled_from([0.0, 1.0]),
        st.sampled_from([0.0, 0.5, 1.0]),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(rows=outcomes, seed=st.integers(0, 2**32 - 1))
def test_curve_properties(rows: list[tuple[float, float, float]], seed: int) -> None:
    score, weak, strong = (np.array(col) for col in zip(*rows, strict=True))
    curve = pgr_curve(score, weak, strong)
    n = len(rows)
    assert curve.quality[0] == pytest.approx(weak.mean())
    assert curve.quality[-1] == pytest.approx(strong.mean())
    # Sending rows in the opposite order mirrors the curve: APGR(s) + APGR(-s) = 1.
    if curve.q_strong != curve.q_weak:
        assert apgr(curve) + apgr(pgr_curve(-score, weak, strong)) == pytest.approx(1.0)
        assert apgr(pgr_curve(np.zeros(n), weak, strong)) == pytest.approx(0.5)
    # Shuffling the rows changes nothing (ties count as a random order, not file order).
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = pgr_curve(score[perm], weak[perm], strong[perm])
    assert shuffled.quality == pytest.approx(curve.quality)
    # The oracle is never beaten.
    oracle = pgr_curve(strong - weak, weak, strong)
    assert np.all(oracle.quality >= curve.quality - 1e-12)

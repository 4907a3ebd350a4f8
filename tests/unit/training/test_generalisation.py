"""Leave one source out: splits, ranking metrics, per-source calibration, report shape."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.training.calibrate import Target
from router.training.data import Row
from router.training.generalisation import (
    auc,
    format_generalisation,
    generalisation_report,
    held_out_sources,
    leave_one_source_out,
    out_of_fold,
    spearman,
)
from tests.unit.training.support import TIERS, quiet


def test_auc_by_hand() -> None:
    assert auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auc(np.array([0.5]), np.array([0.5])) == 0.5  # a tie counts half
    # Pairs: (0.6 > 0.5), (0.6 > 0.7)? no, (0.4 > 0.5)? no, (0.4 > 0.7)? no -> 1 of 4.
    assert auc(np.array([0.6, 0.4]), np.array([0.5, 0.7])) == 0.25
    assert auc(np.array([]), np.array([0.1])) is None


@settings(max_examples=100, deadline=None)
@given(
    pos=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.4]), min_size=1, max_size=12),
    neg=st.lists(st.sampled_from([0.1, 0.2, 0.3, 0.4]), min_size=1, max_size=12),
)
def test_auc_counts_pairs(pos: list[float], neg: list[float]) -> None:
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg]
    assert auc(np.array(pos), np.array(neg)) == pytest.approx(sum(pairs) / len(pairs))


def test_spearman_by_hand() -> None:
    x = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, np.array([1.0, 3.0, 2.0, 4.0])) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.ones(4)) is None
    # Ties take their average rank: ranks of y are 1.5, 1.5, 3, 4.
    y = np.array([2.0, 2.0, 3.0, 4.0])
    expected = float(np.corrcoef([1, 3, 2, 4], [1.5, 1.5, 3, 4])[0, 1])
    assert spearman(np.array([1.0, 3.0, 2.0, 4.0]), y) == pytest.approx(expected)


def _rows() -> list[Row]:
    """Three sources: a simple one, a hard one, one with outcomes."""
    rows = [Row(i, i, f"simple {i}", tier=0, source="simple") for i in range(10)]
    rows += [Row(10 + i, 10 + i, f"hard {i}", tier=3 + i % 2, source="hard") for i in range(10)]
    rows += [
        Row(20 + i, 20 + i, f"mixed {i}", tier=1 + i % 3, weak=float(i % 2), strong=1.0, source="o")
        for i in range(10)
    ]
    return rows


def test_splits_never_train_on_what_they_score() -> None:
    rows = _rows()
    seen: list[tuple[set[int], set[int]]] = []

    def fit_score(
        train: npt.NDArray[np.intp], test: npt.NDArray[np.intp]
    ) -> npt.NDArray[np.float64]:
        seen.append((set(train.tolist()), set(test.tolist())))
        return np.full(len(test), float(len(seen)))

    held = leave_one_source_out(rows, fit_score, quiet)
    assert len(seen) == 3 == len(held_out_sources(rows))
    for train, test in seen:
        assert not train & test and len(train | test) == len(rows)
        assert len({rows[i].source for i in test}) == 1
        assert not {rows[i].source for i in test} & {rows[i].source for i in train}
    assert sorted(set(held.tolist())) == [1.0, 2.0, 3.0]
    seen.clear()
    oof = out_of_fold(rows, fit_score, 3, quiet)
    assert len(seen) == 3 and np.all(oof > 0)
    assert set().union(*(t for _, t in seen)) == set(range(len(rows)))


def test_one_source_has_nothing_to_hold_out() -> None:
    rows = [Row(i, i, f"t {i}", tier=0, source="only") for i in range(4)]
    assert held_out_sources(rows) == []
    assert np.isnan(leave_one_source_out(rows, lambda a, b: np.zeros(len(b)), quiet)).all()


def test_report_calibrates_each_source_without_its_rows() -> None:
    """The hard source's own low scores would pull the threshold down if calibration saw them."""
    rows = _rows()
    level = np.array([r.tier for r in rows])
    # Out-of-fold scores: level / 4; the hard source scores itself low when held out.
    calibration = level / 4.0
    held = calibration.copy()
    held[10:20] = 0.05
    target = Target(max_hard_on_cheapest=0.0, min_simple_on_cheapest=1.0)
    report = generalisation_report(rows, held, calibration, target, 3, 0.2)
    hard, simple = report["sources"]["hard"], report["sources"]["simple"]
    # Without the hard source, the only hard rows are o's level-3 rows (score 0.75).
    assert hard["thresholds"][0] == 0.75
    assert hard["hard_on_cheapest"] == 1.0  # the unseen hard source went to the cheapest tier
    assert hard["tier_shares"][0] == 1.0
    # Without the simple source there are no level 0 rows: the hard bound alone sets it.
    assert simple["thresholds"][0] == 0.75
    assert simple["simple_on_cheapest"] == 1.0
    o = report["sources"]["o"]
    assert o["outcomes"]["rows"] == 10
    assert 0.0 <= o["outcomes"]["apgr"] <= 1.5
    assert o["spearman_score_level"] == pytest.approx(1.0)
    pooled = report["pooled"]
    assert pooled["rows"] == 30
    # The held-out hard rows (0.05) score above the simple rows (0) but below the rest.
    assert 0.0 < pooled["auc_level_34_vs_012"] < 1.0
    text = format_generalisation(report, TIERS)
    assert text.splitlines()[0].startswith("leave-one-source-out (each source scored")
    assert text.splitlines()[2].split()[:2] == ["hard", "10"]
    assert "100.0%" in text.splitlines()[2]


def test_report_gives_each_held_out_source_its_gate() -> None:
    """With the rows' gates, each source says how far the outcome level placed its rows."""
    rows = _rows()
    scores = np.array([r.tier for r in rows]) / 4.0
    gates = np.zeros(len(rows))
    gates[10:20] = np.linspace(0.0, 0.9, 10)  # the hard source: 4 of 10 above one half
    target = Target(max_hard_on_cheapest=0.0, min_simple_on_cheapest=1.0)
    report = generalisation_report(rows, scores, scores, target, 3, 0.2, gates=gates)
    hard = report["sources"]["hard"]
    assert hard["gate_mean"] == pytest.approx(0.45)
    assert hard["gate_open_share"] == pytest.approx(0.4)
    assert report["sources"]["simple"]["gate_open_share"] == 0.0
    assert format_generalisation(report, TIERS).splitlines()[2].split()[-1] == "40.0%"
    # A score without a gate (the plain baseline's) reports none.
    plain = generalisation_report(rows, scores, scores, target, 3, 0.2)
    assert "gate_mean" not in plain["sources"]["hard"]
    assert format_generalisation(plain, TIERS).splitlines()[2].split()[-1] == "-"

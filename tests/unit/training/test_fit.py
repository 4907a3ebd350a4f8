"""Fitting the heads through the serving featurizer: features, priors, weights, folds."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

from router.fastpath import GAIN_HEAD, GATE_HEAD, HEADS, LEVELS, FastPath
from router.model import Rule
from router.routing import Router
from router.training.data import Row, read_rows
from router.training.fit import (
    Heads,
    RulePriors,
    build_model,
    capped_rows,
    cross_validate,
    featurize,
    fit_heads,
    query_lengths,
    source_weights,
)
from router.training.generalisation import fold_of
from tests.unit.training.support import SAMPLE, quiet, small_options

OPTIONS = small_options()
SPEC = OPTIONS.spec()


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return read_rows(SAMPLE)


@pytest.fixture(scope="module")
def features(rows: list[Row]) -> sp.csr_matrix:
    return featurize([r.text for r in rows], SPEC)


@pytest.fixture(scope="module")
def lengths(rows: list[Row]) -> npt.NDArray[np.float64]:
    return query_lengths([r.text for r in rows], SPEC)


@pytest.fixture(scope="module")
def heads(features: sp.csr_matrix, rows: list[Row]) -> Heads:
    return fit_heads(features, rows, OPTIONS, quiet)


def test_featurize_is_the_serving_featurizer(features: sp.csr_matrix, rows: list[Row]) -> None:
    assert features.shape == (len(rows), SPEC.n_features)
    fastpath = SPEC.fastpath(implementation=FastPath)
    for i in range(0, len(rows), 7):
        indices, values, _ = fastpath.features(rows[i].text)
        dense = np.zeros(SPEC.n_features)
        np.add.at(dense, indices, values)
        assert features[i].toarray()[0] == pytest.approx(dense, abs=1e-12)


def test_featurize_no_rows() -> None:
    assert featurize([], SPEC).shape == (0, SPEC.n_features)


def test_training_scores_are_serving_scores(
    heads: Heads, features: sp.csr_matrix, lengths: npt.NDArray[np.float64], rows: list[Row]
) -> None:
    """The numpy formula fit_heads uses equals what Router computes from the saved weights."""
    router = Router(build_model(heads, OPTIONS, {}))
    assert heads.score_formula.length_weight > 0.0  # the length term is part of what is checked
    scores, levels = heads.score(features, lengths), heads.levels(features)
    for i in range(0, len(rows), 5):
        scored = router.score(rows[i].text)
        assert scored.score == pytest.approx(scores[i], rel=1e-9, abs=1e-12)
        assert scored.levels == pytest.approx(tuple(levels[i]), rel=1e-9, abs=1e-12)


def test_fitted_heads_shape_and_sense(
    heads: Heads, features: sp.csr_matrix, lengths: npt.NDArray[np.float64], rows: list[Row]
) -> None:
    assert heads.weights.shape == (SPEC.n_features, HEADS)
    assert heads.weights.dtype == np.float32
    assert heads.bias.shape == (HEADS,)
    # The length term is 0 at the training rows' median length.
    assert heads.score_formula == OPTIONS.score_formula(float(np.median(lengths)))
    assert np.all(np.isfinite(heads.weights)) and np.all(np.isfinite(heads.bias))
    # On its own training rows the level head beats always guessing the commonest level.
    tiers = np.array([r.tier for r in rows])
    accuracy = (heads.levels(features).argmax(axis=1) == tiers).mean()
    assert accuracy > np.bincount(tiers).max() / len(tiers)


def test_fitting_is_deterministic(heads: Heads, features: sp.csr_matrix, rows: list[Row]) -> None:
    again = fit_heads(features, rows, OPTIONS, quiet)
    assert again.weights.tobytes() == heads.weights.tobytes()
    assert again.bias.tobytes() == heads.bias.tobytes()


def test_rule_priors_are_added_to_the_rule_rows(
    heads: Heads, features: sp.csr_matrix, rows: list[Row]
) -> None:
    no_priors = small_options(priors=RulePriors(level=0.0))
    plain = fit_heads(features, rows, no_priors, quiet)
    n_rules = len(OPTIONS.rules)
    base = SPEC.n_features - n_rules
    # Everything but the rule rows is untouched by the priors.
    assert heads.weights[:base].tobytes() == plain.weights[:base].tobytes()
    assert heads.bias.tobytes() == plain.bias.tobytes()
    added = heads.weights[base:].astype(np.float64) - plain.weights[base:].astype(np.float64)
    wanted = np.zeros((n_rules, HEADS))
    RulePriors().apply(wanted, OPTIONS.rules)
    assert added == pytest.approx(wanted, abs=1e-5)  # float32 rounding of the sums
    assert np.count_nonzero(wanted) > 0


def test_rule_priors_by_hand() -> None:
    rules = (
        Rule("greeting", ("hi",), 0),
        Rule("lookup", ("how",), 1),
        Rule("analysis", ("compare",), 2),
        Rule("expert", ("clause",), 4),
        Rule("free", ("x",), None),
    )
    weights: npt.NDArray[np.float64] = np.zeros((10, HEADS))
    RulePriors(level=10.0).apply(weights, rules)
    expected = np.zeros((10, HEADS))
    expected[7, 2] = 10.0  # no prior below level 2
    expected[8, 4] = 10.0
    assert weights.tolist() == expected.tolist()


def test_source_weights() -> None:
    rows = [Row(i, i, "t", source=s) for i, s in enumerate("aaaab")]
    weights = source_weights(rows)
    # 1/sqrt(4) for the a rows, 1 for b: 0.5 * 4 + 1 = 3, scaled to mean 1 (times 5/3).
    assert weights.tolist() == pytest.approx([5 / 6] * 4 + [5 / 3])
    assert weights.mean() == pytest.approx(1.0)


def test_capped_rows_keep_each_source_weight() -> None:
    rows = [Row(i, i, f"text {i}", source="big" if i < 9 else "small") for i in range(11)]
    keep, weights = capped_rows(rows, 3)
    assert len(keep) == 5 and list(keep) == sorted(keep)
    big = keep < 9
    assert big.sum() == 3 and (~big).sum() == 2
    # Each source weighs sqrt(its rows) in all: 3 and sqrt(2), scaled to mean 1.
    total = 3 + np.sqrt(2)
    assert weights[big].sum() == pytest.approx(5 * 3 / total)
    assert weights[~big].sum() == pytest.approx(5 * np.sqrt(2) / total)
    assert weights.mean() == pytest.approx(1.0)
    # The same texts are kept whatever the order of the rows.
    again, _ = capped_rows(rows[::-1], 3)
    assert sorted(rows[::-1][i].text for i in again) == sorted(rows[i].text for i in keep)
    # Under the cap every row is kept, weighted as source_weights does.
    all_rows, w = capped_rows(rows, 100)
    assert list(all_rows) == list(range(11))
    assert w == pytest.approx(source_weights(rows))


def test_folds_follow_the_text(rows: list[Row]) -> None:
    folds = [fold_of(r, 5) for r in rows]
    assert set(folds) == {0, 1, 2, 3, 4}
    assert fold_of(Row(1, "x", "same text", source="a"), 5) == fold_of(Row(9, "y", "same text"), 5)
    assert fold_of(Row(1, 1, "\ud800 lone"), 3) in range(3)


def test_cross_validate_gives_out_of_fold_numbers(
    features: sp.csr_matrix, lengths: npt.NDArray[np.float64], rows: list[Row], heads: Heads
) -> None:
    scores, levels = cross_validate(features, rows, OPTIONS, 2, quiet)
    assert scores.shape == (len(rows),)
    assert levels.shape == (len(rows), LEVELS)
    assert np.all((scores > 0) & (scores < 1))
    assert levels.sum(axis=1) == pytest.approx(np.ones(len(rows)))
    # Out-of-fold scores are not the in-sample ones.
    assert not np.allclose(scores, heads.score(features, lengths))
    # Each fold is scored by a model fitted without it.
    fold = np.array([fold_of(r, 2) for r in rows])
    train_rows = [r for r, f in zip(rows, fold, strict=True) if f == 1]
    fold0 = fit_heads(features[fold == 1], train_rows, OPTIONS, quiet)
    assert scores[fold == 0] == pytest.approx(fold0.score(features[fold == 0], lengths[fold == 0]))


def test_degenerate_data_leaves_heads_neutral() -> None:
    """One level, no outcomes: nothing to fit, only the priors; the gate is shut."""
    rows = [Row(i, i, f"what time is it {i}", tier=1, source="s") for i in range(12)]
    X = featurize([r.text for r in rows], SPEC)
    messages: list[str] = []
    heads = fit_heads(X, rows, OPTIONS, messages.append)
    assert messages == [
        "levels: fewer than two levels in the data; the level head stays uniform",
        "gain: fewer than two outcome rows; the gain head stays zero",
        "gate: too few outcomes: shut",
    ]
    base = SPEC.n_features - len(OPTIONS.rules)
    assert not heads.weights[:base].any()
    assert heads.bias.tolist() == [0.0] * GAIN_HEAD + [0.0, -30.0]


def test_outcome_rows_only_open_the_gate(
    features: sp.csr_matrix, lengths: npt.NDArray[np.float64], rows: list[Row]
) -> None:
    """A user's own traffic, every row with outcomes: the outcome level places every query."""
    picked = [i for i, r in enumerate(rows) if r.has_outcome]
    messages: list[str] = []
    heads = fit_heads(features[picked], [rows[i] for i in picked], OPTIONS, messages.append)
    assert messages[-1] == "gate: every row has outcomes: open"
    assert heads.bias[GATE_HEAD] == 30.0 and not heads.weights[:, GATE_HEAD].any()
    outcome_level = heads.logits(features[picked])[:, GAIN_HEAD]
    # On the level scale: outcome_center at the median, outcome_spread levels per deviation.
    assert np.median(outcome_level) == pytest.approx(OPTIONS.outcome_center, abs=1e-5)
    assert outcome_level.std() == pytest.approx(OPTIONS.outcome_spread, rel=1e-4)
    # The gate open, the score is the outcome level's (and the length's): the strong model
    # helps more, higher.
    score = heads.score(features[picked], lengths[picked])
    f = heads.score_formula
    level = outcome_level + f.length_weight * (lengths[picked] - f.length_center)
    at_level = 1.0 / (1.0 + np.exp(-OPTIONS.level_weight * (level - 2.0)))
    assert score == pytest.approx(at_level, rel=1e-6)


def test_a_single_outcome_row_leaves_the_gate_shut(
    features: sp.csr_matrix, rows: list[Row]
) -> None:
    """One outcome row is too few for a gain head: the expected level places every query."""
    first = next(i for i, r in enumerate(rows) if r.has_outcome)
    picked = [i for i, r in enumerate(rows) if not r.has_outcome] + [first]
    messages: list[str] = []
    heads = fit_heads(features[picked], [rows[i] for i in picked], OPTIONS, messages.append)
    assert messages[-2:] == [
        "gain: fewer than two outcome rows; the gain head stays zero",
        "gate: too few outcomes: shut",
    ]
    assert heads.bias[GATE_HEAD] == -30.0 and not heads.weights[:, GATE_HEAD].any()


def test_the_gate_opens_on_outcome_rows(
    heads: Heads, features: sp.csr_matrix, rows: list[Row]
) -> None:
    gate = heads.logits(features)[:, GATE_HEAD]
    outcome = np.array([r.has_outcome for r in rows])
    assert gate[outcome].min() > gate[~outcome].max() - 1e-9 or (
        (gate[outcome] > 0).mean() > 0.9 and (gate[~outcome] < 0).mean() > 0.9
    )


def test_two_levels_fill_the_level_head(features: sp.csr_matrix, rows: list[Row]) -> None:
    """scikit-learn fits one logit for two classes; the others get a probability near 0."""
    picked = [i for i, r in enumerate(rows) if r.tier in (0, 3)]
    sub = [rows[i] for i in picked]
    heads = fit_heads(features[picked], sub, OPTIONS, quiet)
    levels = heads.levels(features[picked])
    assert levels[:, [1, 2, 4]].max() < 1e-9
    predicted = np.where(levels[:, 3] > levels[:, 0], 3, 0)
    assert (predicted == np.array([r.tier for r in sub])).mean() > 0.9

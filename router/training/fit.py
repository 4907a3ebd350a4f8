"""Fit the routing model's three linear heads through the serving featurizer.

- levels (5 logits): multinomial logistic regression on the rows' complexity levels.
  Their expected level E[level] is the general difficulty every query gets a value of;
- gain: ridge regression of (strong outcome - weak outcome) on the rows with measured
  outcomes: how much the stronger model helps on this query. It is read as the query's
  *outcome level*: ``outcome_center`` at the outcome rows' median gain, ``outcome_spread``
  levels per standard deviation of it;
- gate: logistic regression of "a row with measured outcomes" against the rest: how much
  a query is like the rows that taught the gain head.

The score (``ScoreFormula``, gated_level) is
sigmoid(level_weight * ((1 - g) * E[level] + g * outcome level + length level - 2)),
g = sigmoid(gate): a gated mixture of two levels, plus the query's length. On traffic like
the outcome rows the outcomes place the query, ranked by how much the strong model helps;
elsewhere the gate shuts and the expected level alone places it, as a plain level model
would. Both are on the level scale, so the thresholds keep their meaning (level 1.5 ends
the cheapest tier, 3.5 starts the strongest) whichever signal places a query. The length
level, ``length_weight`` * (log1p(bytes) - the training rows' median), ranks a source's
longer queries above its shorter ones, which the levels cannot do where a source's rows
share one level. Rows are weighted by 1/sqrt(rows of
their source), so that a large source does not drown a small one. Every fit is
deterministic.

Held-out numbers come from cross-validation and from leaving each source out
(``router/training/generalisation.py``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from router._fastpath_py import normalize, query_length
from router.fastpath import (
    GAIN_HEAD,
    GATE_HEAD,
    HEADS,
    LEVELS,
    SCORE_GATED_LEVEL,
    FastPath,
)
from router.model import FeaturizerSpec, RouterModel, Rule, ScoreFormula
from router.training.data import Row
from router.training.generalisation import out_of_fold
from router.training.rules import load_rules

if TYPE_CHECKING:
    import scipy.sparse as sp

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RulePriors:
    """What a fired rule of level L >= 2 adds to the level head's logit for L, on top of
    what data teaches (the data has no short expert requests).

    Rules of levels 0-1 get no prior: a greeting in front of a hard request ("Hi! Review
    this contract clause...") must not pull it down to the cheap tier.
    """

    level: float = 10.0

    def apply(self, weights: npt.NDArray[np.float64], rules: Sequence[Rule]) -> None:
        """Add the priors of ``rules`` to their rows, the last ``len(rules)`` of ``weights``."""
        base = weights.shape[0] - len(rules)
        for i, rule in enumerate(rules):
            if rule.level is not None and rule.level >= 2:
                weights[base + i, rule.level] += self.level


@dataclass(frozen=True, slots=True)
class TrainOptions:
    buckets_log2: int = 18
    word_max: int = 2
    char_min: int = 3
    # Byte 3-grams only: with 4- and 5-grams too the held-out sources ranked the same (every
    # held-out APGR and AUC of train --report within 0.002) and a query had 2.5 times the
    # n-grams (docs/model_decisions.md, "The byte n-grams"; bench/README.md, the distinct stream).
    char_max: int = 3
    level_c: float = 0.2
    gate_c: float = 0.2
    gain_alpha: float = 100.0
    # The outcome level: the level at the outcome rows' median gain, and the levels per
    # standard deviation of it (chosen by cross-validated MMLU APGR and the held-out
    # sources' hard-on-cheapest shares: docs/model_decisions.md, "How the score's formula was
    # chosen").
    outcome_center: float = 2.0
    outcome_spread: float = 0.5
    # Score logit per level of E[level] (the spread of scores in [0, 1]).
    level_weight: float = 1.5
    # Levels per e-fold of a query's byte count, from the training rows' median length
    # (chosen by the held-out sources' in-source ranking: docs/model_decisions.md, "The length
    # term").
    length_weight: float = 0.3
    # Rows per source the logistic heads fit on (capped_rows).
    max_rows_per_source: int = 4000
    max_iter: int = 500
    name: str = "model"
    rules: tuple[Rule, ...] = field(default_factory=load_rules)
    priors: RulePriors = field(default_factory=RulePriors)

    def spec(self) -> FeaturizerSpec:
        return FeaturizerSpec(
            buckets_log2=self.buckets_log2,
            word_max=self.word_max,
            char_min=self.char_min,
            char_max=self.char_max,
            rules=self.rules,
        )

    def score_formula(self, length_center: float = 0.0) -> ScoreFormula:
        """Return the score formula: E[level] = 2 at the center length sits at score 1/2."""
        return ScoreFormula(
            SCORE_GATED_LEVEL,
            level_weight=self.level_weight,
            bias=-2.0 * self.level_weight,
            length_weight=self.length_weight,
            length_center=length_center,
        )


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=np.float64)


@dataclass(frozen=True)
class Heads:
    """Fitted weights and bias of the seven heads, and the score formula."""

    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float64]
    score_formula: ScoreFormula

    def logits(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        return np.asarray(X @ self.weights.astype(np.float64)) + self.bias

    def score(self, X: sp.csr_matrix, lengths: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Return the scores of featurized rows of ``query_lengths`` ``lengths`` (the fast
        path's formula, in numpy)."""
        logits = self.logits(X)
        f = self.score_formula
        if f.formula != SCORE_GATED_LEVEL:
            raise ValueError("training scores with the gated_level formula only")
        expected = _levels(logits) @ np.arange(LEVELS, dtype=np.float64)
        g = _sigmoid(logits[:, GATE_HEAD])
        length = f.length_weight * (lengths - f.length_center)
        level = (1.0 - g) * expected + g * logits[:, GAIN_HEAD] + length
        return _sigmoid(f.level_weight * level + f.bias)

    def levels(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        return _levels(self.logits(X))

    def gate(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        """Return sigmoid(gate): how far the outcome level places each row (0: not at all)."""
        return _sigmoid(self.logits(X)[:, GATE_HEAD])


def _levels(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    level_logits = logits[:, :LEVELS]
    exp = np.exp(level_logits - level_logits.max(axis=1, keepdims=True))
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


def query_lengths(texts: Sequence[str], spec: FeaturizerSpec) -> npt.NDArray[np.float64]:
    """Return the length the score reads of each text (the fast path's query_length)."""
    return np.array(
        [query_length(len(normalize(t, spec.max_bytes))) for t in texts], dtype=np.float64
    )


def featurize(texts: Sequence[str], spec: FeaturizerSpec) -> sp.csr_matrix:
    """Return the rows' features as a sparse matrix, computed by the serving fast path."""
    import scipy.sparse as sp  # the train extra: the CLI imports this module without it

    fastpath = spec.fastpath(implementation=FastPath)
    indices: list[npt.NDArray[np.int32]] = []
    values: list[npt.NDArray[np.float64]] = []
    for text in texts:
        i, v, _ = fastpath.features(text)
        indices.append(i)
        values.append(v)
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum([len(i) for i in indices], out=indptr[1:])
    X = sp.csr_matrix(
        (
            np.concatenate(values) if values else np.zeros(0),
            np.concatenate(indices) if indices else np.zeros(0, dtype=np.int32),
            indptr,
        ),
        shape=(len(texts), spec.n_features),
    )
    X.sum_duplicates()
    return X


def source_weights(rows: Sequence[Row]) -> npt.NDArray[np.float64]:
    """Return per-row weights 1/sqrt(rows of its source) times the row's own weight,
    scaled to mean 1."""
    counts = Counter(r.source for r in rows)
    w = np.array([r.weight / math.sqrt(counts[r.source]) for r in rows], dtype=np.float64)
    return np.asarray(w / w.mean(), dtype=np.float64)


def _text_rank(row: Row) -> int:
    digest = hashlib.sha256(row.text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[8:16], "little")  # not the bytes fold_of reads


def capped_rows(
    rows: Sequence[Row], cap: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Return the rows a logistic head fits on and their weights.

    A source with more than ``cap`` rows keeps the ``cap`` of them with the smallest hash
    of their text; each source still weighs sqrt(its rows) in all, as with
    ``source_weights``, and the weights are scaled to mean 1. Large sources of
    near-identical queries (intents, banking FAQs) then cost fitting time in proportion
    to what they teach.
    """
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(r.source, []).append(i)
    keep: list[int] = []
    weight: dict[int, float] = {}
    for members in by_source.values():
        picked = members
        if len(members) > cap:
            picked = sorted(sorted(members, key=lambda i: _text_rank(rows[i]))[:cap])
        for i in picked:
            weight[i] = rows[i].weight * math.sqrt(len(members)) / len(picked)
        keep.extend(picked)
    keep.sort()
    w = np.array([weight[i] for i in keep], dtype=np.float64)
    return np.array(keep, dtype=np.intp), np.asarray(w / w.mean(), dtype=np.float64)


def fit_heads(X: sp.csr_matrix, rows: Sequence[Row], options: TrainOptions, log: Log) -> Heads:
    """Fit the level, gain and gate heads on featurized rows."""
    from sklearn.linear_model import LogisticRegression, Ridge

    n_features = X.shape[1]
    weights = np.zeros((n_features, HEADS), dtype=np.float64)
    bias = np.zeros(HEADS, dtype=np.float64)
    started = time.monotonic()

    tiers = np.array([-1 if r.tier is None else r.tier for r in rows])
    with_tier = np.flatnonzero(tiers >= 0)
    level_rows, level_w = capped_rows(
        [rows[int(i)] for i in with_tier], options.max_rows_per_source
    )
    level_rows = with_tier[level_rows]
    present = sorted(set(tiers[with_tier].tolist()))
    if len(present) >= 2:
        levels = LogisticRegression(C=options.level_c, max_iter=options.max_iter)
        levels.fit(X[level_rows], tiers[level_rows], sample_weight=level_w)
        coef, intercept = levels.coef_, levels.intercept_
        if len(present) == 2:  # sklearn fits one logit for two classes: it is the second's
            coef = np.vstack([np.zeros_like(coef[0]), coef[0]])
            intercept = np.array([0.0, intercept[0]])
        for i, level in enumerate(levels.classes_):
            weights[:, level] = coef[i]
            bias[level] = intercept[i]
        # Levels never seen in training get a probability far below the others.
        for level in set(range(LEVELS)) - set(present):
            bias[level] = -30.0
        log(
            f"levels: fitted on {len(level_rows)} rows, levels {present} "
            f"({levels.n_iter_[0]} iterations, {time.monotonic() - started:.1f}s)"
        )
    else:
        log("levels: fewer than two levels in the data; the level head stays uniform")

    outcome = np.array([r.has_outcome for r in rows])
    if outcome.sum() >= 2:
        gain = np.array([(r.strong or 0.0) - (r.weak or 0.0) for r in rows])
        ridge = Ridge(alpha=options.gain_alpha, solver="sparse_cg", tol=1e-6)
        row_weight = np.array([r.weight for r in rows])
        ridge.fit(X[outcome], gain[outcome], sample_weight=row_weight[outcome])
        predicted = np.asarray(X[outcome] @ ridge.coef_) + ridge.intercept_
        spread = float(predicted.std()) or 1.0
        median = float(np.median(predicted))
        # On the level scale: outcome_center at the median gain, outcome_spread levels per
        # standard deviation, so that outcomes rank the queries like the outcome rows
        # within a level or so of the center and never alone reach the expert levels.
        scale = options.outcome_spread / spread
        weights[:, GAIN_HEAD] = scale * ridge.coef_
        bias[GAIN_HEAD] = options.outcome_center + scale * (ridge.intercept_ - median)
        log(
            f"gain: fitted on {int(outcome.sum())} outcome rows (spread {spread:.4f}, "
            f"{time.monotonic() - started:.1f}s)"
        )
    else:
        log("gain: fewer than two outcome rows; the gain head stays zero")

    if outcome.all() or outcome.sum() < 2:
        # Every row has outcomes (the gate is open on everything), or too few for a gain
        # head (shut: the expected level alone places every query).
        opened = bool(outcome.all() and outcome.sum() >= 2)
        bias[GATE_HEAD] = 30.0 if opened else -30.0
        log("gate: " + ("every row has outcomes: open" if opened else "too few outcomes: shut"))
    else:
        gate_rows, gate_w = capped_rows(rows, options.max_rows_per_source)
        gate = LogisticRegression(C=options.gate_c, max_iter=options.max_iter)
        gate.fit(X[gate_rows], outcome[gate_rows].astype(np.int64), sample_weight=gate_w)
        weights[:, GATE_HEAD] = gate.coef_[0]
        bias[GATE_HEAD] = gate.intercept_[0]
        log(
            f"gate: fitted on {len(gate_rows)} rows "
            f"({int(outcome[gate_rows].sum())} with outcomes; "
            f"{gate.n_iter_[0]} iterations, {time.monotonic() - started:.1f}s)"
        )
    options.priors.apply(weights, options.rules)
    # The length term is 0 at the training rows' median length.
    center = float(np.median(query_lengths([r.text for r in rows], options.spec())))
    return Heads(weights.astype(np.float32), bias, options.score_formula(center))


def fit_score(
    X: sp.csr_matrix,
    rows: Sequence[Row],
    options: TrainOptions,
    levels_out: npt.NDArray[np.float64],
    gates_out: npt.NDArray[np.float64] | None = None,
) -> Callable[[npt.NDArray[np.intp], npt.NDArray[np.intp]], npt.NDArray[np.float64]]:
    """Return a function fitting heads on some rows and scoring others (their level
    probabilities go into ``levels_out``, their gates into ``gates_out`` if given), for
    cross-validation and held-out sources."""

    lengths = query_lengths([r.text for r in rows], options.spec())

    def run(train: npt.NDArray[np.intp], test: npt.NDArray[np.intp]) -> npt.NDArray[np.float64]:
        heads = fit_heads(X[train], [rows[i] for i in train], options, lambda _msg: None)
        levels_out[test] = heads.levels(X[test])
        if gates_out is not None:
            gates_out[test] = heads.gate(X[test])
        return heads.score(X[test], lengths[test])

    return run


def cross_validate(
    X: sp.csr_matrix, rows: Sequence[Row], options: TrainOptions, folds: int, log: Log
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return out-of-fold scores and level probabilities for every row."""
    levels = np.zeros((len(rows), LEVELS))
    scores = out_of_fold(rows, fit_score(X, rows, options, levels), folds, log)
    return scores, levels


def build_model(heads: Heads, options: TrainOptions, info: dict[str, object]) -> RouterModel:
    """Return an uncalibrated model (placeholder thresholds) holding the fitted heads."""
    return RouterModel(
        spec=options.spec(),
        weights=heads.weights,
        bias=heads.bias,
        tier_names=("cheap", "strong", "expert"),
        thresholds=(0.5, 0.9),
        score=heads.score_formula,
        name=options.name,
        info=info,
    )

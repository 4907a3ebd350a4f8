"""Fit the routing model's three linear heads through the serving featurizer.

- levels (5 logits): multinomial logistic regression on the rows' complexity levels;
- gain: ridge regression of (strong outcome - weak outcome) on the rows with measured
  outcomes: how much the stronger model helps on this query;
- placement: logistic regression of "is this the kind of query where the model choice
  matters" (level >= 2, or a row with measured outcomes) against FAQ/chit-chat/lookups.

The score is sigmoid(gain + gate * (sigmoid(placement) - 1/2)) (the -gate/2 is folded
into the gain bias): placement decides which kind of traffic a query belongs to, gain
ranks queries within it. Rows are weighted by 1/sqrt(rows of their source), so that a
large source does not drown a small one. Every fit is deterministic.

Held-out numbers come from cross-validation (``cross_validate``): rows are split in
folds by a hash of their text, so the same text never lands on both sides.
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

from router.fastpath import GAIN_HEAD, HEADS, LEVELS, PLACE_HEAD, FastPath
from router.model import FeaturizerSpec, RouterModel, Rule
from router.training.data import Row
from router.training.rules import load_rules

if TYPE_CHECKING:
    import scipy.sparse as sp

Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class RulePriors:
    """What a fired rule of level L adds to the fitted weights, on top of what data teaches.

    The level head's logit for L gets ``level``; the placement logit gets ``placement``
    for L >= 2 (the kind of query where the model choice matters); the gain logit gets
    ``gain[L]`` (level 4 rules aim at the strongest tier). Low-level rules get no placement
    prior: a greeting in front of a hard request ("Hi! Review this contract clause...")
    must not pull it down to the cheap tier.
    """

    level: float = 10.0
    placement: float = 6.0
    gain: tuple[float, ...] = (0.0, 0.0, 0.0, 0.5, 3.0)

    def apply(self, weights: npt.NDArray[np.float64], rules: Sequence[Rule]) -> None:
        """Add the priors of ``rules`` to their rows, the last ``len(rules)`` of ``weights``."""
        base = weights.shape[0] - len(rules)
        for i, rule in enumerate(rules):
            if rule.level is None:
                continue
            row = weights[base + i]
            row[rule.level] += self.level
            if rule.level >= 2:
                row[PLACE_HEAD] += self.placement
            row[GAIN_HEAD] += self.gain[rule.level]


@dataclass(frozen=True, slots=True)
class TrainOptions:
    buckets_log2: int = 18
    word_max: int = 2
    char_min: int = 3
    char_max: int = 5
    level_c: float = 0.2
    place_c: float = 0.2
    gain_alpha: float = 100.0
    gain_anchor: float = 0.05
    # Spread (standard deviation) of the gain logit over the outcome rows.
    gain_scale: float = 1.0
    score_gate: float = 6.0
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


@dataclass(frozen=True)
class Heads:
    """Fitted weights and bias of the seven heads, and the score gate."""

    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float64]
    score_gate: float

    def logits(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        return np.asarray(X @ self.weights.astype(np.float64)) + self.bias

    def score(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        """Return the scores of featurized rows (the fast path's formula, in numpy)."""
        logits = self.logits(X)
        placement = 1.0 / (1.0 + np.exp(-logits[:, PLACE_HEAD]))
        return 1.0 / (1.0 + np.exp(-(logits[:, GAIN_HEAD] + self.score_gate * placement)))

    def levels(self, X: sp.csr_matrix) -> npt.NDArray[np.float64]:
        logits = self.logits(X)[:, :LEVELS]
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)


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


def placement_label(row: Row) -> int | None:
    """Return 1 where the model choice matters (level >= 2 or measured outcomes), 0 for
    levels 0-1, None when the row says neither."""
    if row.has_outcome:
        return 1
    if row.tier is None:
        return None
    return 1 if row.tier >= 2 else 0


def fold_of(row: Row, folds: int) -> int:
    """Return the row's cross-validation fold, from a hash of its text."""
    digest = hashlib.sha256(row.text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") % folds


def fit_heads(X: sp.csr_matrix, rows: Sequence[Row], options: TrainOptions, log: Log) -> Heads:
    """Fit the level, gain and placement heads on featurized rows."""
    from sklearn.linear_model import LogisticRegression, Ridge

    n_features = X.shape[1]
    weights = np.zeros((n_features, HEADS), dtype=np.float64)
    bias = np.zeros(HEADS, dtype=np.float64)
    sample_w = source_weights(rows)
    started = time.monotonic()

    tiers = np.array([-1 if r.tier is None else r.tier for r in rows])
    have_tier = tiers >= 0
    present = sorted(set(tiers[have_tier].tolist()))
    if len(present) >= 2:
        levels = LogisticRegression(C=options.level_c, max_iter=options.max_iter)
        levels.fit(X[have_tier], tiers[have_tier], sample_weight=sample_w[have_tier])
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
            f"levels: fitted on {int(have_tier.sum())} rows, levels {present} "
            f"({levels.n_iter_[0]} iterations, {time.monotonic() - started:.1f}s)"
        )
    else:
        log("levels: fewer than two levels in the data; the level head stays uniform")

    outcome = np.array([r.has_outcome for r in rows])
    if outcome.sum() >= 2:
        gain = np.array([(r.strong or 0.0) - (r.weak or 0.0) for r in rows])
        # Rows without outcomes anchor the gain at its mean, with a small weight: the head
        # then ranks within the kind of queries it has outcomes for, instead of
        # extrapolating far on text unlike them (e.g. very short queries).
        gain[~outcome] = gain[outcome].mean()
        anchor = np.where(outcome, 1.0, options.gain_anchor) * np.array([r.weight for r in rows])
        ridge = Ridge(alpha=options.gain_alpha, solver="sparse_cg", tol=1e-6)
        ridge.fit(X, gain, sample_weight=anchor)
        predicted = np.asarray(X[outcome] @ ridge.coef_) + ridge.intercept_
        spread = float(predicted.std()) or 1.0
        scale = options.gain_scale / spread
        weights[:, GAIN_HEAD] = scale * ridge.coef_
        bias[GAIN_HEAD] = scale * (ridge.intercept_ - float(predicted.mean()))
        log(
            f"gain: fitted on {int(outcome.sum())} outcome rows (spread {spread:.4f}, "
            f"{time.monotonic() - started:.1f}s)"
        )
    else:
        log("gain: no outcome rows; the gain head stays zero")
    bias[GAIN_HEAD] -= options.score_gate / 2.0

    labels = [placement_label(r) for r in rows]
    placed = np.array([lab is not None for lab in labels])
    y = np.array([lab or 0 for lab in labels])
    if placed.any() and len(set(y[placed].tolist())) == 2:
        place = LogisticRegression(C=options.place_c, max_iter=options.max_iter)
        place.fit(X[placed], y[placed], sample_weight=sample_w[placed])
        weights[:, PLACE_HEAD] = place.coef_[0]
        bias[PLACE_HEAD] = place.intercept_[0]
        log(
            f"placement: fitted on {int(placed.sum())} rows "
            f"({int(y[placed].sum())} where the choice matters; {place.n_iter_[0]} iterations, "
            f"{time.monotonic() - started:.1f}s)"
        )
    else:
        log("placement: needs rows of both kinds; the placement head stays neutral")
    options.priors.apply(weights, options.rules)
    return Heads(weights.astype(np.float32), bias, options.score_gate)


def cross_validate(
    X: sp.csr_matrix, rows: Sequence[Row], options: TrainOptions, folds: int, log: Log
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Return out-of-fold scores and level probabilities for every row."""
    fold = np.array([fold_of(r, folds) for r in rows])
    sizes = np.bincount(fold, minlength=folds)
    if (sizes == 0).any():  # with two or more folds, this also means no fold holds every row
        raise ValueError(
            f"{len(rows)} rows do not fill {folds} cross-validation folds (rows per fold: "
            f"{sizes.tolist()}); give more distinct texts or fewer folds (--cv-folds)"
        )
    scores = np.zeros(len(rows))
    levels = np.zeros((len(rows), LEVELS))
    for f in range(folds):
        test = fold == f
        train_rows = [r for r, t in zip(rows, test, strict=True) if not t]
        log(f"fold {f + 1}/{folds}: training on {len(train_rows)} rows")
        heads = fit_heads(X[~test], train_rows, options, lambda _msg: None)
        scores[test] = heads.score(X[test])
        levels[test] = heads.levels(X[test])
    return scores, levels


def cross_validate_sources(
    X: sp.csr_matrix, rows: Sequence[Row], options: TrainOptions, log: Log
) -> dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]]:
    """Return, for each source, its scores and level probabilities from a model that never
    saw a row of that source."""
    source = np.array([r.source for r in rows])
    out = {}
    for name in sorted(set(source.tolist())):
        held = source == name
        log(f"holding out source {name!r} ({int(held.sum())} rows)")
        kept = [r for r, h in zip(rows, held, strict=True) if not h]
        heads = fit_heads(X[~held], kept, options, lambda _msg: None)
        out[name] = (heads.score(X[held]), heads.levels(X[held]))
    return out


def build_model(heads: Heads, options: TrainOptions, info: dict[str, object]) -> RouterModel:
    """Return an uncalibrated model (placeholder thresholds) holding the fitted heads."""
    return RouterModel(
        spec=options.spec(),
        weights=heads.weights,
        bias=heads.bias,
        tier_names=("cheap", "strong", "expert"),
        thresholds=(0.5, 0.9),
        score_gate=heads.score_gate,
        name=options.name,
        info=info,
    )

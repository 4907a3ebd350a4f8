"""The plain baseline through the same quality protocol as ``modelrouter train --report``.

The baseline of issue 9: scikit-learn's HashingVectorizer (word 1-2-grams and char_wb
3-5-grams, 2^18 buckets each) and a LogisticRegression on the five levels, its score the
expected level (and, second, P(level >= 2)), fitted on a 15,000-row level-stratified
subsample of each split's training rows (issue 9 quotes it on all rows or on such a
subsample, with the same held-out numbers; ``--train-rows 0`` fits on all, 4x slower).
It is cross-validated in the same 5 folds (split by a hash of the text) and held out
source by source exactly as the shipped model is (``router/training/generalisation.py``),
with thresholds calibrated for the same promise on out-of-fold scores, so that every "at
least as good as the baseline" is side by side.
Writes ``bench/results/quality_baseline.json``.

    .venv/bin/python bench/quality_baseline.py              # ~40 minutes on 2 cores
    .venv/bin/python bench/quality_baseline.py --smoke      # the test fixture, ~20 s of CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from router.routing import tier_for_score
from router.training.calibrate import Target
from router.training.data import read_rows
from router.training.evaluate import ScoredRows, build_report
from router.training.generalisation import (
    IndexArray,
    calibrate,
    fold_of,
    generalisation_report,
    leave_one_source_out,
    out_of_fold,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "routing_train.jsonl"
SAMPLE = REPO / "tests" / "fixtures" / "routing_sample.jsonl"
OUT = REPO / "bench" / "results" / "quality_baseline.json"
TIERS = ("cheap", "strong", "expert")
FOLDS = 5


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run on the test fixture's rows")
    parser.add_argument(
        "--train-rows",
        type=int,
        default=15_000,
        help="fit each split on a level-stratified subsample of this many rows (15000; 0: all)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"JSON to write (default: {OUT.name}; none with --smoke)"
    )
    args = parser.parse_args()

    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_union

    rows = read_rows(SAMPLE if args.smoke else DATA)
    rows = [r for r in rows if r.tier is not None]
    started = time.monotonic()
    # The smoke run checks the protocol, not the baseline: a small space fits in seconds.
    buckets = 2**10 if args.smoke else 2**18
    vectorizer = make_union(
        HashingVectorizer(n_features=buckets, ngram_range=(1, 2)),
        HashingVectorizer(n_features=buckets, analyzer="char_wb", ngram_range=(3, 5)),
    )
    X = vectorizer.transform([r.text for r in rows]).tocsr()
    levels = np.array([r.tier for r in rows])
    _log(f"featurized {len(rows)} rows in {time.monotonic() - started:.1f}s")
    probabilities = {name: np.full((len(rows), 5), np.nan) for name in ("oof", "held_out")}
    rank = np.array([fold_of(r, 1 << 30) for r in rows])

    def subsample(train: IndexArray) -> IndexArray:
        """Return at most --train-rows of ``train``, each level keeping its share."""
        if not args.train_rows or len(train) <= args.train_rows:
            return train
        kept = []
        for level in np.unique(levels[train]):
            members = train[levels[train] == level]
            k = round(args.train_rows * len(members) / len(train))
            kept.append(members[np.argsort(rank[members], kind="stable")[:k]])
        return np.sort(np.concatenate(kept))

    def fitter(kind: str) -> Any:
        def fit_score(train: IndexArray, test: IndexArray) -> npt.NDArray[np.float64]:
            train = subsample(train)
            model = LogisticRegression(max_iter=200 if args.smoke else 1000)
            model.fit(X[train], levels[train])
            p = np.zeros((len(test), 5))
            p[:, model.classes_] = model.predict_proba(X[test])
            probabilities[kind][test] = p
            return np.asarray(p @ np.arange(5), dtype=np.float64)

        return fit_score

    out_of_fold(rows, fitter("oof"), FOLDS, _log)
    leave_one_source_out(rows, fitter("held_out"), _log)
    target = Target.promise(
        outcomes=any(r.has_outcome for r in rows),
        hard=any(r.tier in (3, 4) for r in rows),
        simple=any(r.tier == 0 for r in rows),
        levels=True,
    )
    results: dict[str, Any] = {
        "baseline": "HashingVectorizer word 1-2 + char_wb 3-5 (2^18 each), "
        "LogisticRegression(max_iter=1000) on the 5 levels",
        "train_rows": args.train_rows or "all",
        "rows": len(rows),
        "data": str(SAMPLE.name if args.smoke else DATA.name),
        "buckets": buckets,
        "seconds": 0.0,
    }
    for score_name, column in (("expected_level", None), ("p_level_2plus", 2)):

        def score_of(p: npt.NDArray[np.float64], column: int | None = column) -> Any:
            return p @ np.arange(5) if column is None else p[:, column:].sum(axis=1)

        oof = np.asarray(score_of(probabilities["oof"]), dtype=np.float64)
        held = np.asarray(score_of(probabilities["held_out"]), dtype=np.float64)
        # Scores in [0, 1] as the router's are (the expected level divided by 4).
        if column is None:
            oof, held = oof / 4.0, held / 4.0

        # The promise's level bound on the baseline's scale: the expected level over 4, and
        # for P(level >= 2) the point where level 2 or more is as likely as not.
        def score_of_level(level: float, column: int | None = column) -> float:
            return level / 4.0 if column is None else 0.5

        thresholds = calibrate(oof, rows, target, len(TIERS), 0.2, score_of_level)
        tiers = np.array([tier_for_score(float(s), thresholds) for s in oof], dtype=np.int64)
        cv = build_report(
            ScoredRows(oof, probabilities["oof"], tiers),
            rows,
            version=f"baseline {score_name} ({FOLDS}-fold cross-validation)",
            tier_names=TIERS,
            thresholds=thresholds,
        )
        for group in cv["outcomes"]:
            group.pop("curve")
        results[score_name] = {
            "held_out_sources": generalisation_report(
                rows, held, oof, target, len(TIERS), 0.2, score_of_level
            ),
            "cross_validation": cv,
        }
    results["seconds"] = time.monotonic() - started
    out = args.out or (None if args.smoke else OUT)
    if out is None:
        _log(f"smoke run done in {results['seconds']:.0f}s (no JSON written)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    _log(f"wrote {out} in {results['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

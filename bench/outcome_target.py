"""What the outcome level's training target does to MMLU at the operating point (issue 9).

The outcome level is a ridge on the gain (strong outcome - weak outcome). Here it is also
fitted on the gain plus ``beta`` times "both models wrong" (beta 1: "the weak model
fails"), for several centers and spreads, by 5-fold cross-validation of the training data:
the level and gate heads are fitted once per fold (they do not depend on the variant), only
the outcome head per variant; each variant's out-of-fold scores are calibrated for the
promise as ``modelrouter train`` does. Prints and writes, per variant, the MMLU APGR, the
cost saved at 98% quality, MMLU's strong share, quality kept and cost saved at the
operating point, the level 3-4 and level 0 shares on the cheapest tier and the cost saved
on the whole mix. About 11 minutes on 2 cores. Writes ``bench/results/outcome_target.json``.

    .venv/bin/python bench/outcome_target.py [--data ../shared/data/routing_train.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.fastpath import GAIN_HEAD
from router.routing import tier_for_score
from router.training.data import read_rows
from router.training.evaluate import ScoredRows, build_report
from router.training.fit import Heads, TrainOptions, featurize, fit_heads, query_lengths
from router.training.generalisation import fold_of
from router.training.train import calibrate_thresholds, default_target

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "routing_train.jsonl"
OUT = REPO / "bench" / "results" / "outcome_target.json"
FOLDS = 5
BETAS = (0.0, 0.5, 1.0)
CENTERS = (2.0, 1.75, 1.5)
SPREADS = (0.5, 0.75)


def main() -> int:
    from sklearn.linear_model import Ridge

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = read_rows(args.data)
    options = TrainOptions()
    spec = options.spec()
    started = time.monotonic()
    X = featurize([r.text for r in rows], spec)
    lengths = query_lengths([r.text for r in rows], spec)
    fold = np.array([fold_of(r, FOLDS) for r in rows])
    outcome = np.array([r.has_outcome for r in rows])
    strong = np.array([r.strong or 0.0 for r in rows])
    weak = np.array([r.weak or 0.0 for r in rows])
    weight = np.array([r.weight for r in rows])
    variants = [(b, c, s) for b in BETAS for c in CENTERS for s in SPREADS]
    scores = {v: np.zeros(len(rows)) for v in variants}
    levels = np.zeros((len(rows), 5))
    heads: Heads | None = None
    for f in range(FOLDS):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        heads = fit_heads(X[train], [rows[i] for i in train], options, lambda _m: None)
        levels[test] = heads.levels(X[test])
        fitted = train[outcome[train]]
        for beta in BETAS:
            both_wrong = (1.0 - strong[fitted]) * (1.0 - weak[fitted])
            ridge = Ridge(alpha=options.gain_alpha, solver="sparse_cg", tol=1e-6)
            ridge.fit(
                X[fitted],
                strong[fitted] - weak[fitted] + beta * both_wrong,
                sample_weight=weight[fitted],
            )
            predicted = np.asarray(X[fitted] @ ridge.coef_) + ridge.intercept_
            spread, median = float(predicted.std()) or 1.0, float(np.median(predicted))
            for center, levels_per_sd in ((c, s) for b, c, s in variants if b == beta):
                w, bias = heads.weights.astype(np.float64), heads.bias.copy()
                scale = levels_per_sd / spread
                w[:, GAIN_HEAD] = scale * ridge.coef_
                bias[GAIN_HEAD] = center + scale * (ridge.intercept_ - median)
                variant = Heads(w.astype(np.float32), bias, heads.score_formula)
                scores[(beta, center, levels_per_sd)][test] = variant.score(X[test], lengths[test])
        print(f"fold {f + 1}/{FOLDS}: {time.monotonic() - started:.0f} s", flush=True)
    assert heads is not None
    target = default_target(rows)
    results: dict[str, Any] = {}
    for beta, center, levels_per_sd in variants:
        s = scores[(beta, center, levels_per_sd)]
        thresholds = calibrate_thresholds(
            s, rows, target, 3, None, heads.score_formula.score_at_level
        )
        tiers = np.array([tier_for_score(x, thresholds) for x in s], dtype=np.int64)
        report = build_report(
            ScoredRows(s, levels, tiers),
            rows,
            version="variant",
            tier_names=("cheap", "strong", "expert"),
            thresholds=thresholds,
        )
        mmlu, by_level = report["outcomes"][0], report["levels"]
        record = {
            "beta": beta,
            "center": center,
            "spread": levels_per_sd,
            "thresholds": list(thresholds),
            "mmlu_apgr": mmlu["model"]["apgr"],
            "mmlu_cost_saved_98": mmlu["model"]["cost_saved_98"],
            "mmlu_strong_share_at_operating_point": mmlu["operating_point"]["strong_share"],
            "mmlu_quality_kept_at_operating_point": mmlu["operating_point"]["quality_kept"],
            "mmlu_cost_saved_at_operating_point": mmlu["operating_point"]["cost_saved"],
            "hard_on_cheapest": by_level["hard_on_cheapest"],
            "level0_on_cheapest": by_level["level0_on_cheapest"],
            "mix_cost_saved": report["traffic"]["cost_saved"],
        }
        results[f"beta={beta:g} center={center:g} spread={levels_per_sd:g}"] = record
        print(
            f"beta {beta:g} center {center:g} spread {levels_per_sd:g}: APGR "
            f"{record['mmlu_apgr']:.4f}, saved@98 {record['mmlu_cost_saved_98']:.4f}, MMLU "
            f"strong share {record['mmlu_strong_share_at_operating_point']:.4f} (quality "
            f"{record['mmlu_quality_kept_at_operating_point']:.4f}), level 3-4 on cheapest "
            f"{record['hard_on_cheapest']:.4f}, mix saved {record['mix_cost_saved']:.4f}",
            flush=True,
        )
    command = "python " + " ".join([str(Path(sys.argv[0])), *sys.argv[1:]])
    args.out.write_text(
        json.dumps({"command": command, "folds": FOLDS, "variants": results}, indent=2) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

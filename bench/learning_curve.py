"""How many labelled rows of a new source the relabel-retrain loop needs to route it well.

One source of ``../shared/data/routing_train.jsonl`` with measured outcomes
(``routellm_mmlu``: Mixtral-8x7B vs GPT-4) is held out of the base model. A fixed split of
it (chosen by a hash of the text) is the evaluation set and is never fed back; from the
rest, the first 100, 300, 1,000 and 3,000 rows of a fixed shuffle are fed back as if they
were the user's own labelled traffic: text and outcomes only (no level), as
``modelrouter export`` writes them, merged with the base data as ``modelrouter train
--data base.jsonl --data rows.jsonl`` merges them. Each step trains with the project's
training code (``router.training.train.train``, the function behind ``modelrouter
train``) and measures, on the evaluation split, APGR and the cost saved at 98% of the
strong model's quality (PRODUCT.md's prices). With ``--draws K`` the smaller steps are
repeated on other draws of the fed rows, to show how much the result depends on which rows
a user has (each draw is one more training).

Writes ``bench/results/learning_curve.json`` and ``bench/results/learning_curve.png``.

    .venv/bin/python bench/learning_curve.py            # 6 trainings: ~15 minutes on 2 quiet cores
    .venv/bin/python bench/learning_curve.py --smoke    # a minute: CI checks it still runs
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
from report_files import write_report

from router.routing import Router
from router.training.data import Row, outcome_arrays, read_rows
from router.training.evaluate import score_rows
from router.training.fit import TrainOptions
from router.training.metrics import pgr_curve, summarize
from router.training.train import train

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "routing_train.jsonl"
RESULTS = HERE / "results"

SOURCE = "routellm_mmlu"
STEPS: tuple[int, ...] = (0, 100, 300, 1000, 3000)
FEED_POOL = 3000
# Draws of the fed rows per step with --draws K (the largest step has one: the pool is
# the same 3,000 rows).
LARGEST = 3000
TIERS = ("cheap", "strong", "expert")
SEED = 11


def split(rows: Sequence[Row], pool: int) -> tuple[list[Row], list[Row]]:
    """Return the fixed feed pool and the evaluation rows of the held-out source."""
    ranked = sorted(
        rows, key=lambda r: hashlib.sha256(r.text.encode("utf-8", "surrogatepass")).digest()
    )
    return ranked[:pool], ranked[pool:]


def as_feedback(row: Row) -> Row:
    """Return a row as the user's exported traffic carries it: text and outcomes only."""
    return replace(row, tier=None, source="feedback")


def measure(
    model_rows: Sequence[Row], evaluation: Sequence[Row], options: TrainOptions, quiet: bool
) -> dict[str, Any]:
    """Train on ``model_rows`` with the project's training code; measure on ``evaluation``."""
    started = time.monotonic()
    model, _ = train(
        model_rows,
        options,
        folds=0,
        target=None,
        tier_names=TIERS,
        top_share=None,
        log=(lambda _m: None) if quiet else (lambda m: print(f"  {m}", file=sys.stderr)),
    )
    scores = score_rows(Router(model), evaluation).scores
    weak, strong = outcome_arrays(evaluation)
    summary = summarize(pgr_curve(scores, weak, strong))
    return {
        "apgr": summary.apgr,
        "cost_saved_98": summary.cost_saved_98,
        "share_98": summary.share_98,
        "cpt50": summary.cpt50,
        "train_seconds": round(time.monotonic() - started, 1),
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Draw APGR and cost saved at 98% quality against the rows fed back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = report["steps"]
    xs = [max(s["fed"], 30) for s in steps]  # 0 drawn at the left edge of the log axis
    for ax, key, label in (
        (ax1, "apgr", "APGR on the evaluation split"),
        (ax2, "cost_saved_98", "cost saved at 98% quality"),
    ):
        means = [np.mean([d[key] for d in s["draws"]]) for s in steps]
        for x, s in zip(xs, steps, strict=True):
            ax.scatter([x] * len(s["draws"]), [d[key] for d in s["draws"]], color="tab:blue", s=12)
        ax.plot(xs, means, color="tab:blue", marker="o", label="base + fed-back rows")
        reference = report["reference"][key]
        ax.axhline(
            reference, color="tab:green", linestyle="--", label="trained with the whole source"
        )
        if key == "apgr":
            ax.axhline(0.5, color="tab:gray", linestyle=":", label="random router")
        ax.set_xscale("log")
        ax.set_xticks(xs, ["0" if s["fed"] == 0 else str(s["fed"]) for s in steps])
        ax.set_xlabel(f"labelled {report['source']} rows fed back")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Learning curve on a held-out source ({report['source']}, "
        f"{report['evaluation_rows']} evaluation rows never fed back)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    """Train the base model and one per step; write the JSON report and the picture."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a small run, for CI")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--verbose", action="store_true", help="show the training log")
    parser.add_argument(
        "--draws",
        type=int,
        default=1,
        help="draws of the fed rows for each step below 3,000 (1; each is one more training)",
    )
    args = parser.parse_args(argv)

    started = time.monotonic()
    rows = read_rows(args.data)
    held = [r for r in rows if r.source == SOURCE]
    base = [r for r in rows if r.source != SOURCE]
    draws = {fed: 1 if fed in (0, LARGEST) else max(1, args.draws) for fed in STEPS}
    steps, pool_size = STEPS, FEED_POOL
    options = TrainOptions(name="learning-curve")
    if args.smoke:
        rng = np.random.default_rng(SEED)
        base = [base[i] for i in sorted(rng.choice(len(base), 1500, replace=False))]
        held = held[:800]
        steps, draws, pool_size = (0, 100, 300), {100: 1, 300: 1}, 300
        options = replace(options, buckets_log2=12)
    pool, evaluation = split(held, pool_size)
    report: dict[str, Any] = {
        "benchmark": "learning_curve",
        "source": SOURCE,
        "base_rows": len(base),
        "feed_pool_rows": len(pool),
        "evaluation_rows": len(evaluation),
        "training": {
            "code": "router.training.train.train (modelrouter train)",
            "options": {k: v for k, v in asdict(options).items() if k != "rules"},
            "commit": _commit(),
            "cv_folds": 0,
        },
        "steps": [],
        "smoke": args.smoke,
        "python": platform.python_version(),
    }
    for fed in steps:
        runs = []
        for draw in range(draws.get(fed, 1)):
            order = np.random.default_rng(SEED + draw).permutation(len(pool))
            fed_rows = [as_feedback(pool[i]) for i in order[:fed]]
            result = measure(base + fed_rows, evaluation, options, quiet=not args.verbose)
            runs.append({"draw": draw, **result})
            print(
                f"fed {fed:>5} (draw {draw}): APGR {result['apgr']:.3f}, cost saved at 98% "
                f"{100 * result['cost_saved_98']:.1f}% ({result['train_seconds']} s)",
                flush=True,
            )
        report["steps"].append({"fed": fed, "draws": runs})
    # What the loop aims at: the source fed back whole (every pool row, with its level),
    # as in the shipped model's training data.
    reference = measure(base + list(pool), evaluation, options, quiet=not args.verbose)
    report["reference"] = {"description": "base + the whole feed pool with levels", **reference}
    print(f"reference (pool with levels): APGR {reference['apgr']:.3f}")
    report["seconds"] = round(time.monotonic() - started, 1)
    write_report(args.out, "learning_curve_smoke" if args.smoke else "learning_curve", report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

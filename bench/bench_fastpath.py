"""Time one routing decision: compiled fast path vs its pure-Python twin vs scikit-learn.

For a short (~30 B), a typical (~200 B) and a long (~4 KB) query, in one run on one core:
median and p99 microseconds per decision (featurize + score) of

- ``c``: the compiled fast path (``router._fastpath.FastPath.score``);
- ``py``: the pure-Python twin, same model, same results;
- ``sklearn``: the same kind of model as a scikit-learn pipeline (HashingVectorizer word
  1-2-grams + char 3-5-grams into 2^18 signed buckets, LogisticRegression over the 5
  levels), fitted on the training data, ``predict_proba`` on one query;
- ``route``: ``Router.route()`` from Python, the call included;

plus the model's load time and size in memory. Writes ``bench/results/fastpath.json`` and
a bar chart ``bench/results/fastpath.png``.

    .venv/bin/python bench/bench_fastpath.py            # ~1 minute
    .venv/bin/python bench/bench_fastpath.py --smoke    # seconds: CI checks it still runs
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from router import _fastpath_py
from router.model import FeaturizerSpec, default_model_path, load_model
from router.routing import Router

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "routing_train.jsonl"

SHORT = "What are your business hours?"
TYPICAL = (
    "I was charged twice for the same order last week and the second charge still shows as "
    "pending. How do I get the duplicate payment refunded, and how long will it take to "
    "reach my card? I used a Visa."
)
LOG_LINE = (
    "2026-11-28T04:05:{s:02d}Z ERROR worker-{w} request {r} failed: upstream timeout after "
    "30000 ms (pool=primary, retries=3)\n"
)
LONG = (
    "Analyze this error log and suggest a fix. The service started timing out after we "
    "raised the connection pool size; here is the log:\n"
    + "".join(LOG_LINE.format(s=i % 60, w=i % 7, r=1000 + i) for i in range(34))
    + "What is the root cause, and what should we change first?"
)
QUERIES = {"short": SHORT, "typical": TYPICAL, "long": LONG}


def time_calls(fn: Callable[[str], Any], text: str, calls: int) -> list[float]:
    """Return the microseconds of each of ``calls`` calls (after a warm-up)."""
    for _ in range(min(200, calls)):
        fn(text)
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        for _ in range(calls):
            start = clock()
            fn(text)
            samples.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return samples


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "calls": len(ordered),
    }


def scratch_bytes(spec: FeaturizerSpec) -> int:
    """Return the bytes of the fast path's per-instance scratch buffers (router/_fastpath.pyx)."""
    grams_per_byte = spec.word_max + spec.char_max - spec.char_min + 1
    # The normalised text, one token hash per byte, the n-gram hashes.
    return (spec.max_bytes + 2) * (1 + 8 + 8 * grams_per_byte)


def sklearn_pipeline(rows: int) -> Callable[[str], Any]:
    """Return predict_proba of a fitted HashingVectorizer + LogisticRegression pipeline."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    texts, levels = [], []
    with DATA.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i % max(1, 53_899 // rows):
                continue
            row = json.loads(line)
            if row["tier"] is not None:
                texts.append(row["text"])
                levels.append(row["tier"])
    vectorizer = make_union(
        HashingVectorizer(n_features=2**18, ngram_range=(1, 2)),
        HashingVectorizer(n_features=2**18, analyzer="char", ngram_range=(3, 5)),
    )
    pipeline = make_pipeline(vectorizer, LogisticRegression(max_iter=300))
    pipeline.fit(texts, levels)
    return lambda text: pipeline.predict_proba([text])


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--smoke", action="store_true", help="a few calls each, to check it runs")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fastpath.json")
    parser.add_argument("--plot", type=Path, default=HERE / "results" / "fastpath.png")
    args = parser.parse_args()
    pinned = pin_to_one_core()
    calls = {
        "c": 200 if args.smoke else 20_000,
        "route": 200 if args.smoke else 20_000,
        "py": 20 if args.smoke else 500,
        "sklearn": 20 if args.smoke else 1_000,
    }

    load_times = []
    for _ in range(3 if args.smoke else 10):
        start = time.perf_counter()
        router = Router(load_model(args.model))
        load_times.append((time.perf_counter() - start) * 1000)
    model = router.model
    tracemalloc.start()
    twin_router_model = load_model(args.model)
    twin = twin_router_model.fastpath(_fastpath_py.FastPath)
    twin_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    compiled = model.fastpath()
    implementations: dict[str, Callable[[str], Any]] = {
        "c": compiled.score,
        "py": twin.score,
        "route": router.route,
    }
    if router.implementation != "compiled":
        print(
            "warning: the compiled fast path is not in use; 'c' and 'route' time the twin",
            file=sys.stderr,
        )
    sklearn_rows = 2_000 if args.smoke else 20_000
    if DATA.exists():
        implementations["sklearn"] = sklearn_pipeline(sklearn_rows)

    results: dict[str, Any] = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "affinity": pinned,
            "load_average": os.getloadavg(),
        },
        "model": {
            "version": model.version,
            "file_bytes": args.model.stat().st_size,
            "weights_bytes_in_memory": int(model.weights.nbytes),
            "fastpath_scratch_bytes": scratch_bytes(model.spec),
            "twin_python_bytes": int(twin_bytes),
            "load_ms_p50": statistics.median(load_times),
            "fastpath": router.implementation,
        },
        "queries": {},
        "smoke": args.smoke,
    }
    for size, text in QUERIES.items():
        row: dict[str, Any] = {"bytes": len(text.encode())}
        for name, fn in implementations.items():
            stats = summary(time_calls(fn, text, calls[name]))
            row[f"{name}_us_p50"] = stats["p50"]
            row[f"{name}_us_p99"] = stats["p99"]
        row["py_over_c"] = row["py_us_p50"] / row["c_us_p50"]
        if "sklearn_us_p50" in row:
            row["sklearn_over_c"] = row["sklearn_us_p50"] / row["c_us_p50"]
        results["queries"][size] = row
        c_us, py_us = row["c_us_p50"], row["py_us_p50"]
        print(
            f"{size:8s} {row['bytes']:5d} B  c {c_us:8.2f} us (p99 {row['c_us_p99']:.2f})"
            f"  route {row['route_us_p50']:8.2f} us  py {py_us:9.1f} us ({row['py_over_c']:.0f}x)"
            + (
                f"  sklearn {row['sklearn_us_p50']:8.1f} us ({row['sklearn_over_c']:.0f}x)"
                if "sklearn_us_p50" in row
                else ""
            )
        )
    print(
        f"model {model.version}: load {results['model']['load_ms_p50']:.1f} ms p50, "
        f"{results['model']['weights_bytes_in_memory'] / 2**20:.1f} MiB of weights in memory, "
        f"file {results['model']['file_bytes'] / 2**20:.1f} MiB"
    )
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        plot(results, args.plot)
        print(f"wrote {args.out} and {args.plot}")
    return 0


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw the median microseconds per decision, per implementation and query size (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = list(results["queries"])
    names = [
        n for n in ("c", "route", "py", "sklearn") if f"{n}_us_p50" in results["queries"][sizes[0]]
    ]
    labels = {
        "c": "compiled fast path",
        "route": "Router.route()",
        "py": "pure-Python twin",
        "sklearn": "scikit-learn pipeline",
    }
    x = np.arange(len(sizes))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, name in enumerate(names):
        values = [results["queries"][s][f"{name}_us_p50"] for s in sizes]
        bars = ax.bar(x + i * width, values, width, label=labels[name])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(
        x + width * (len(names) - 1) / 2,
        [f"{s} ({results['queries'][s]['bytes']} B)" for s in sizes],
    )
    ax.set_ylabel("microseconds per decision (median, log scale)")
    ax.set_title("One routing decision on one core")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())

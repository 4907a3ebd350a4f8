"""Time one routing decision: compiled fast path vs its pure-Python twin vs scikit-learn.

For a short (~30 B), a typical (~200 B) and a long (~4 KB) query, in one run on one core:
median and p99 microseconds per decision (featurize + score) of

- ``c``: the compiled fast path (``router._fastpath.FastPath.score``);
- ``py``: the pure-Python twin, same model, same results;
- ``sklearn``: the same kind of model as a scikit-learn pipeline (HashingVectorizer word
  1-2-grams + char 3-5-grams into 2^18 signed buckets, LogisticRegression over the 5
  levels), fitted on the training data, ``predict_proba`` on one query;
- ``route``: ``Router.route()`` from Python, the call included;

plus the model's load time and size in memory.

One query repeated keeps its weights in cache; production sends distinct queries. So the
compiled path and ``Router.route()`` are also timed on a **stream** of distinct real
queries (the 150-250 byte rows of one cross-validation fold of the training data, each
scored once per pass, in file order) and on those same queries **repeated** (every tenth
one, scored many times in a row), in one run.

With ``--compare LABEL=CHECKOUT`` (repeatable) the stream and repeated timings are also
made for other checkouts (another branch's worktree with its extension built in place),
each build in its own process, the builds taking turns round by round, so that they are
measured side by side on the same model file. ``--compare-model LABEL=MODEL`` (repeatable)
adds turns of this checkout with another model file (a model trained with other settings).

Writes ``bench/results/fastpath.json`` and a bar chart ``bench/results/fastpath.png``.

    .venv/bin/python bench/bench_fastpath.py            # ~1 minute
    .venv/bin/python bench/bench_fastpath.py --compare before=../wt-main
    .venv/bin/python bench/bench_fastpath.py --compare-model old=/tmp/old_default.npz
    .venv/bin/python bench/bench_fastpath.py --smoke    # seconds: CI checks it still runs
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from report_files import cpu_model

from router import _fastpath_py
from router.model import FeaturizerSpec, RouterModel, default_model_path, load_model
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
# The stream: rows of this fold (of STREAM_FOLDS, by the training's rule: a hash of the
# text) whose text is STREAM_BYTES long.
STREAM_FOLD, STREAM_FOLDS = 0, 5
STREAM_BYTES = (150, 250)


def time_each(fn: Callable[[str], Any], texts: list[str]) -> list[float]:
    """Return the microseconds of each call of ``fn`` on the texts, in order."""
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        for text in texts:
            start = clock()
            fn(text)
            samples.append((clock() - start) / 1000.0)
    finally:
        gc.enable()
    return samples


def time_calls(fn: Callable[[str], Any], text: str, calls: int, warmup: int = 200) -> list[float]:
    """Return the microseconds of each of ``calls`` calls (after a warm-up)."""
    for _ in range(min(warmup, calls)):
        fn(text)
    return time_each(fn, [text] * calls)


def stream_queries(limit: int | None = None) -> list[str]:
    """Return the distinct 150-250 byte queries of one cross-validation fold, in file order."""
    texts: list[str] = []
    seen: set[str] = set()
    with DATA.open(encoding="utf-8") as fh:
        for line in fh:
            text = json.loads(line)["text"]
            encoded = text.encode("utf-8", "surrogatepass")
            if not STREAM_BYTES[0] <= len(encoded) <= STREAM_BYTES[1] or text in seen:
                continue
            # router/training/generalisation.py's fold_of.
            digest = hashlib.sha256(encoded).digest()
            if int.from_bytes(digest[:8], "little") % STREAM_FOLDS == STREAM_FOLD:
                texts.append(text)
                seen.add(text)
                if limit is not None and len(texts) == limit:
                    break
    return texts


def time_stream(fn: Callable[[str], Any], texts: list[str], passes: int) -> list[float]:
    """Return the microseconds of each call, scoring every text once per pass, in order."""
    return time_each(fn, texts * passes)


def time_repeated(fn: Callable[[str], Any], texts: list[str], calls: int) -> list[float]:
    """Return the microseconds of each call, scoring every tenth text ``calls`` times in a row."""
    samples = []
    for text in texts[::10]:
        fn(text)
        samples.extend(time_calls(fn, text, calls, warmup=0))
    return samples


def scores_digest(score: Callable[[str], Any], texts: list[str]) -> str:
    """Return a SHA-256 of the exact scores, level probabilities and rules of the texts."""
    digest = hashlib.sha256()
    for text in texts:
        value, levels, rules = score(text)
        digest.update(repr((value.hex(), [p.hex() for p in levels], rules)).encode())
    return digest.hexdigest()


def stream_timings(model_path: Path, texts: list[str], passes: int, repeats: int) -> dict[str, Any]:
    """Return median (and p99) microseconds of the compiled path and route(), both modes."""
    router = Router(load_model(model_path))
    fns: dict[str, Callable[[str], Any]] = {
        "c": router.model.fastpath().score,
        "route": router.route,
    }
    # Builds compared must decide alike: a speed-up that changed a score would not count.
    row: dict[str, Any] = {"scores_sha256": scores_digest(fns["c"], texts)}
    for name, fn in fns.items():
        time_stream(fn, texts[:200], 1)  # warm-up
        distinct = summary(time_stream(fn, texts, passes))
        repeated = summary(time_repeated(fn, texts, repeats))
        row[f"{name}_distinct_us_p50"] = distinct["p50"]
        row[f"{name}_distinct_us_p99"] = distinct["p99"]
        row[f"{name}_repeated_us_p50"] = repeated["p50"]
        row[f"{name}_distinct_over_repeated"] = distinct["p50"] / repeated["p50"]
    return row


def compare_builds(
    builds: dict[str, tuple[Path | None, Path]], rounds: int, smoke: bool
) -> dict[str, Any]:
    """Time the stream for each build (a checkout, None: this one; a model file) in its own
    process, the builds taking turns."""
    per_build: dict[str, list[dict[str, float]]] = {label: [] for label in builds}
    for _ in range(rounds):
        for label, (checkout, model_path) in builds.items():
            env = dict(os.environ)
            if checkout is not None:
                env["PYTHONPATH"] = str(checkout)
            command = [sys.executable, __file__, "--stream-worker", "--model", str(model_path)]
            if smoke:
                command.append("--smoke")
            out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
            per_build[label].append(json.loads(out.stdout))
    result: dict[str, Any] = {}
    for label, runs in per_build.items():
        result[label] = {
            key: statistics.median(run[key] for run in runs)
            for key in runs[0]
            if key not in ("implementation", "scores_sha256", "model")
        }
        result[label]["implementation"] = runs[0]["implementation"]
        result[label]["scores_sha256"] = runs[0]["scores_sha256"]
        result[label]["checkout"] = str(builds[label][0] or HERE.parent)
        result[label]["model"] = runs[0]["model"]
    return result


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "calls": len(ordered),
    }


def weight_rows_bytes(model: RouterModel, implementation: str) -> int:
    """Return the bytes of the compiled path's copy of float16 weights (router/_fastpath.pyx)."""
    if implementation != "compiled" or model.weights.dtype != np.float16:
        return 0  # float32 weights are read in place
    return model.spec.n_features * 8 * 2  # rows of 8 halves


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
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=CHECKOUT",
        help="also time the stream with another checkout's router package (repeatable)",
    )
    parser.add_argument(
        "--compare-model",
        action="append",
        default=[],
        metavar="LABEL=MODEL",
        help="also time the stream with this checkout and another model file (repeatable)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="turns of each build (--compare)")
    parser.add_argument("--stream-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    passes, repeats = (1, 20) if args.smoke else (5, 50)
    if args.stream_worker:
        # One build's turn in --compare: its numbers as JSON on stdout.
        texts = stream_queries(300 if args.smoke else None)
        timings: dict[str, Any] = stream_timings(args.model, texts, passes, repeats)
        router = Router(load_model(args.model))
        timings["implementation"] = router.implementation
        timings["model"] = router.version
        print(json.dumps(timings))
        return 0
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
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "affinity": pinned,
            "load_average": os.getloadavg(),
        },
        "model": {
            "version": model.version,
            "file_bytes": args.model.stat().st_size,
            "weights_bytes_in_memory": int(model.weights.nbytes),
            "weights_dtype": str(model.weights.dtype),
            "fastpath_weight_rows_bytes": weight_rows_bytes(model, router.implementation),
            "fastpath_scratch_bytes": scratch_bytes(model.spec),
            "twin_python_bytes": int(twin_bytes),
            "load_ms_p50": statistics.median(load_times),
            "fastpath": router.implementation,
        },
        "queries": {},
        "smoke": args.smoke,
    }
    if DATA.exists():
        texts = stream_queries(300 if args.smoke else None)
        lengths = sorted(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        results["stream"] = {
            "queries": len(texts),
            "fold": f"{STREAM_FOLD} of {STREAM_FOLDS}",
            "bytes_min": lengths[0],
            "bytes_median": statistics.median(lengths),
            "bytes_max": lengths[-1],
            "passes": passes,
            "repeated_calls": repeats,
            **stream_timings(args.model, texts, passes, repeats),
        }
        stream = results["stream"]
        for name in ("c", "route"):
            print(
                f"stream   {name:5s} {len(texts)} distinct queries "
                f"{stream[f'{name}_distinct_us_p50']:6.2f} us "
                f"(p99 {stream[f'{name}_distinct_us_p99']:.2f}), same queries repeated "
                f"{stream[f'{name}_repeated_us_p50']:6.2f} us: "
                f"{stream[f'{name}_distinct_over_repeated']:.2f}x"
            )
        if args.compare or args.compare_model:
            builds: dict[str, tuple[Path | None, Path]] = {"this": (None, args.model)}
            for item in args.compare:
                label, _, checkout = item.partition("=")
                builds[label] = (Path(checkout).resolve(), args.model)
            for item in args.compare_model:
                label, _, other = item.partition("=")
                builds[label] = (None, Path(other).resolve())
            compared = compare_builds(builds, args.rounds, args.smoke)
            results["stream_compare"] = {"rounds": args.rounds, "builds": compared}
            this = compared["this"]
            for label, build in compared.items():
                print(
                    f"compare  {label:12s} c distinct {build['c_distinct_us_p50']:6.2f} "
                    f"repeated {build['c_repeated_us_p50']:5.2f}  route distinct "
                    f"{build['route_distinct_us_p50']:6.2f} repeated "
                    f"{build['route_repeated_us_p50']:5.2f}  ({build['implementation']}"
                    + (
                        ", same scores)"
                        if build["scores_sha256"] == this["scores_sha256"]
                        else f", model {build['model']})"
                    )
                )
                if label != "this":
                    build["this_route_distinct_speedup"] = (
                        build["route_distinct_us_p50"] / this["route_distinct_us_p50"]
                    )
                    build["this_c_distinct_speedup"] = (
                        build["c_distinct_us_p50"] / this["c_distinct_us_p50"]
                    )
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
        f"{results['model']['weights_bytes_in_memory'] / 2**20:.1f} MiB of "
        f"{results['model']['weights_dtype']} weights in memory and "
        f"{results['model']['fastpath_weight_rows_bytes'] / 2**20:.1f} MiB of padded rows "
        "in the fast path, "
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
    stream = results.get("stream")
    if stream is None:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    else:
        fig, (ax, ax_stream) = plt.subplots(
            1, 2, figsize=(11, 4.5), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
        )
        plot_stream(ax_stream, stream, results.get("stream_compare", {}).get("builds", {}))
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


def plot_stream(ax: Any, stream: dict[str, Any], builds: dict[str, Any]) -> None:
    """Draw distinct-stream vs repeated-query medians (this build, and the compared ones)."""
    rows = {"this run": stream} | {k: v for k, v in builds.items() if k != "this"}
    modes = [
        ("c_repeated", "compiled\nrepeated"),
        ("c_distinct", "compiled\ndistinct"),
        ("route_repeated", "route()\nrepeated"),
        ("route_distinct", "route()\ndistinct"),
    ]
    x = np.arange(len(modes))
    width = 0.8 / len(rows)
    for i, (label, row) in enumerate(rows.items()):
        values = [row[f"{key}_us_p50"] for key, _ in modes]
        bars = ax.bar(x + i * width, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=6)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, [name for _, name in modes], fontsize=7)
    ax.set_ylabel("microseconds per decision (median)")
    ax.set_title(
        f"{stream['queries']} distinct {stream['bytes_min']}-{stream['bytes_max']} B queries"
    )
    ax.legend(fontsize=6)


if __name__ == "__main__":
    sys.exit(main())

"""Time the metrics work of one Route alone: pending counts vs writing through prometheus-client.

What a Route does to metrics: the gRPC started and handled counters, the handling-time
histogram, the decision counter and the decision-time and score histograms. Timed here
with nothing else running in the loop, in multiprocess mode (files in a temp directory), as
the request path does it (``router.telemetry.metrics``: plain counts, flushed once a second)
and as writing every value through prometheus-client on every call would, plus what one
flush of a second's Routes costs. Writes bench/results/metrics_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import timeit
from pathlib import Path

import grpc

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    """Time both ways and write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "metrics_cost.json")
    args = parser.parse_args()

    from router.telemetry.exporter import MultiprocessDir

    directory = MultiprocessDir()
    try:
        from router.telemetry.metrics import Metrics

        metrics = Metrics()
        rpc = metrics.rpc("unary", "modelrouter.v1.ModelRouter", "Route")
        ok = grpc.StatusCode.OK

        def pending() -> None:
            rpc.started.n += 1
            metrics.decided("cheap", 4.2e-6, 0.31)
            rpc.done(ok, 3.1e-4)

        labels = ("unary", "modelrouter.v1.ModelRouter", "Route")
        started = metrics.grpc_started.labels(*labels)
        handled = metrics.grpc_handled.labels(*labels, "OK")
        seconds = metrics.grpc_seconds.labels(*labels)
        decisions = metrics.decisions.labels("cheap")

        def direct() -> None:
            started.inc()
            metrics.inflight.inc()
            decisions.inc()
            metrics.decision_seconds.observe(4.2e-6)
            metrics.route_score.observe(0.31)
            metrics.inflight.dec()
            handled.inc()
            seconds.observe(3.1e-4)

        results = {}
        for name, call in (("pending_counts", pending), ("direct_writes", direct)):
            call()
            best = min(timeit.repeat(call, number=args.calls, repeat=3))
            results[name] = round(best / args.calls * 1e6, 3)
        metrics.flush(0, "m", [])  # the first flush also lays out the files
        for _ in range(1000):
            pending()
        flush_start = time.perf_counter()
        metrics.flush(0, "m", [])
        results["one_flush_us"] = round((time.perf_counter() - flush_start) * 1e6, 1)
    finally:
        directory.close()
    result = {
        "us_per_route": {k: v for k, v in results.items() if k != "one_flush_us"},
        "one_flush_us": results["one_flush_us"],
        "calls": args.calls,
        "command": "bench/metrics_cost.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

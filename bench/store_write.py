"""What recording a request costs: CPU per record to build it and to write it, per store.

The service builds one record per request on the event loop (``router.recording``) and the
store's writer thread writes them in batches (``Store.write``). This measures both, in
CPU time of this process (the server pays the same), for a Route decision and for a
Complete with two attempts, into a fresh SQLite file and, when PostgreSQL is installed,
into a throwaway PostgreSQL server (its own CPU, in another process, is not counted).

    .venv/bin/python bench/store_write.py            # about a minute
    .venv/bin/python bench/store_write.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.domain import (  # noqa: E402
    Attempt,
    AttemptOutcome,
    CompletionSummary,
    DecisionReason,
    GateReport,
    RouteRequest,
    RoutingDecision,
    Usage,
)
from router.recording import complete_record, route_row  # noqa: E402
from router.request_ids import RequestIds  # noqa: E402
from router.store import Record, open_store  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "store_write.json"
TIER_INDEX = {"cheap": 0, "strong": 1, "expert": 2}
DECISION = RoutingDecision(
    request_id="bench-1",
    tier="cheap",
    tier_index=0,
    model="llama-4-8b",
    backend="local",
    score=0.231,
    levels=(0.61, 0.22, 0.09, 0.05, 0.03),
    rules=("greeting",),
    reason=DecisionReason.SCORE,
    estimated_prompt_tokens=42,
    estimated_cost_usd=42 * 0.24e-6,
    strongest_tier_cost_usd=42 * 15e-6,
    model_version="default-8d0c1de7821f",
    decision_micros=4.5,
)
REQUEST = RouteRequest(prompt="How do I reset my password with 2FA enabled?", tenant="acme")


def _attempt(index: int, tier: str, outcome: AttemptOutcome) -> Attempt:
    return Attempt(
        index=index,
        tier=tier,
        model=f"{tier}-model",
        backend="local",
        outcome=outcome,
        duration_ms=250.0,
        first_token_ms=80.0,
        prompt_tokens=42,
        completion_tokens=120,
        cost_usd=0.0004,
        gate=GateReport(enabled=True, held_tokens=8, passed=outcome is AttemptOutcome.OK),
    )


ATTEMPTS = (
    _attempt(0, "cheap", AttemptOutcome.GATE_REJECTED),
    _attempt(1, "strong", AttemptOutcome.OK),
)
SUMMARY = CompletionSummary(
    tier="strong",
    tier_index=1,
    model="strong-model",
    backend="local",
    usage=Usage(42, 120, True),
    cost_usd=0.0008,
    strongest_tier_cost_usd=0.0096,
    finish_reason="stop",
    attempts=ATTEMPTS,
    delivered_chars=600,
    duration_ms=900.0,
    first_text_ms=380.0,
)


def builders(ids: RequestIds) -> dict[str, Callable[[], Record]]:
    """Return a record builder per kind of request, as the service calls them."""
    return {
        "route": lambda: route_row(ids.new(), REQUEST, DECISION, keep_text=False),
        "complete": lambda: complete_record(
            ids.new(),
            REQUEST,
            DECISION,
            SUMMARY,
            (),
            outcome="ok",
            escalations=1,
            started=time.time(),
            duration_ms=900.0,
            tier_index=TIER_INDEX,
            keep_text=False,
        ),
    }


def measure(target: str, kind: str, count: int, batch: int, rounds: int) -> dict[str, float]:
    """Return the median CPU microseconds per record to build and to write, over rounds."""
    build_us, write_us = [], []
    for _ in range(rounds):
        build = builders(RequestIds())[kind]
        started = time.process_time()
        records = [build() for _ in range(count)]
        build_us.append((time.process_time() - started) / count * 1e6)
        store = open_store(target)
        try:
            started = time.process_time()
            for i in range(0, count, batch):
                store.write(records[i : i + batch])
            write_us.append((time.process_time() - started) / count * 1e6)
        finally:
            store.close()
    return {
        "build_us_per_record": statistics.median(build_us),
        "write_us_per_record": statistics.median(write_us),
    }


def postgres_url(stack: ExitStack) -> str | None:
    """Return a throwaway PostgreSQL server's URL, or None when it is not installed."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None
    from tests.postgres_server import find_bindir, postgres_server

    if find_bindir() is None:
        return None
    url: str = stack.enter_context(postgres_server())
    return url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000, help="records per round")
    parser.add_argument("--batch", type=int, default=500, help="records per write (batch_size)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measure (median)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check it runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.smoke:
        args.records, args.rounds = 1000, 1
    load_before = os.getloadavg()[0]
    results: dict[str, Any] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        targets = {"sqlite": None, "postgres": postgres_url(stack)}
        for name, url in targets.items():
            if name == "postgres" and url is None:
                print("postgres: not installed, skipped")
                continue
            for kind in ("route", "complete"):
                if url is None:
                    target = str(Path(tmp) / f"{kind}.db")
                else:
                    target = _fresh_database(str(url), kind)
                result = measure(target, kind, args.records, args.batch, args.rounds)
                results[f"{name}/{kind}"] = result
                print(
                    f"{name:8s} {kind:8s} build {result['build_us_per_record']:6.2f} us  "
                    f"write {result['write_us_per_record']:6.2f} us CPU per record"
                )
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


def _fresh_database(admin_url: str, name: str) -> str:
    import psycopg

    database = f"bench_{name}_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {database}")
    return admin_url.rsplit("/", 1)[0] + f"/{database}"


if __name__ == "__main__":
    sys.exit(main())

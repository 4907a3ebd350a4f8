"""Where a Route RPC's server CPU goes: py-spy samples of one worker under load, by category.

Starts ``modelrouter serve --workers 1``, loads it with the client of ``route_grpc.py``,
samples the worker with py-spy (``pip install py-spy``) and sorts every sample into: the
gRPC stack and event loop, gRPC's poller thread, the ``x-request-id`` header send, the
per-RPC log line, the fast path (featurize and score), and the rest of the service layer
(interceptor, servicer, conversion, validation). Writes bench/results/route_grpc_profile.json.

    .venv/bin/python bench/profile_route.py [--model FILE] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from route_grpc import (
    ROOT,
    client_process,
    free_port,
    load_payloads,
    stop_processes,
    wait_listening,
)

OURS = ("interceptor.py", "servicer.py", "service.py", "convert.py", "feedback.py")


def category(frames: list[str]) -> str:
    """Return the category of one sampled stack (outermost frame first)."""
    stack = ";".join(frames)
    if "Router.score" in stack:
        return "fast path (featurize and score)"
    # py-spy shows time inside a C call as the calling Python line: _start's own time is
    # its await of send_initial_metadata (the rest of it calls Python functions).
    if "ModelRouterServicer._start" in frames[-1]:
        return "x-request-id header (a separate initial-metadata batch)"
    if "_log (router/server/interceptor.py" in stack:
        return "per-RPC log line"
    if any(name in stack for name in OURS):
        return "rest of the service layer"
    if "Thread.run" in stack:
        return "gRPC poller thread"
    return "gRPC stack and event loop"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/route_grpc_profile.json")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    from router.config import DEFAULT_CONFIG_YAML

    data = yaml.safe_load(DEFAULT_CONFIG_YAML)
    data["model"] = str(Path(args.model).resolve()) if args.model != "builtin" else "builtin"
    payloads = load_payloads(1000, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        config = tmp / "c.yaml"
        config.write_text(yaml.safe_dump(data))
        log = tmp / "serve.log"
        with log.open("wb") as fh:
            server = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "serve", "--config", str(config),
                 "--host", "127.0.0.1", "--port", "0", "--workers", "1",
                 "--metrics-port", str(free_port())],
                stdout=fh, stderr=subprocess.STDOUT,
                # The default store goes to the per-user state directory: not here.
                env={**os.environ, "XDG_STATE_HOME": str(tmp / "state")},
            )  # fmt: skip
        try:
            port = wait_listening(log, 1, [server])[0]["port"]
            ctx = multiprocessing.get_context("spawn")
            out = ctx.Queue()
            client = ctx.Process(
                target=client_process,
                args=(port, payloads, args.concurrency, 4, 2.0, args.seconds + 2.0, out),
            )
            client.start()
            time.sleep(3.0)
            raw = tmp / "samples.txt"
            subprocess.run(
                [py_spy, "record", "-p", str(server.pid), "-d", str(int(args.seconds)), "-r",
                 "1000", "-f", "raw", "-o", str(raw)],
                check=True, capture_output=True,
            )  # fmt: skip
            latencies, errors = out.get(timeout=args.seconds + 60)
            client.join(30)
            counts: Counter[str] = Counter()
            for line in raw.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                counts[category(stack.split(";"))] += int(n)
        finally:
            stop_processes([server])
    total = sum(counts.values())
    shares = {name: round(100 * n / total, 1) for name, n in counts.most_common()}
    for name, share in shares.items():
        print(f"{share:5.1f}%  {name}")
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "samples": total,
        "requests": len(latencies),
        "errors": errors,
        "share_of_server_cpu_percent": shares,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What callers see when a replica is stopped with SIGTERM, without and with a drain delay.

Two ``modelrouter serve`` replicas (one worker each, the embedded default configuration) on
loopback; replica A gets SIGTERM while two kinds of caller keep calling Route:

- ``round_robin``: one channel over both replicas with gRPC's ``round_robin`` policy and
  client-side health checking (``healthCheckConfig``), four threads calling back to back
  (the headless Service setup the README recommends);
- ``new_connections``: for ``--lag`` seconds after the SIGTERM, a fresh channel to replica A
  every 20 ms with one Route on it: the connections a layer-4 balancer (kube-proxy) keeps
  sending to a pod until the pod's endpoint removal reaches it.

It runs ``--rounds`` rounds with ``server.drain_delay_s`` 0 (the default outside the Helm
chart) and ``--drain`` seconds, and reports per setting the calls answered and failed (by
status) of each caller, when replica A's health turned ``NOT_SERVING`` (a Watch on it) and
when A exited, after the SIGTERM. Writes ``bench/results/drain.json``.

    .venv/bin/python bench/drain.py [--rounds 3] [--drain 2] [--lag 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc as pb_grpc
from router.config import DEFAULT_CONFIG_YAML

RESULTS = Path(__file__).resolve().parent / "results" / "drain.json"
SERVICE = "modelrouter.v1.ModelRouter"
THREADS = 4
NEW_CONNECTION_EVERY_S = 0.02
CALL_TIMEOUT_S = 5.0
SERVE = [sys.executable, "-m", "router.cli", "serve"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per drain setting")
    parser.add_argument("--drain", type=float, default=2.0, help="the drain delay compared to 0")
    parser.add_argument("--lag", type=float, default=1.0, help="seconds of new connections")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Replica:
    """One ``modelrouter serve`` process on a free loopback port."""

    def __init__(self, folder: Path, drain_s: float) -> None:
        self.port = _free_port()
        data = yaml.safe_load(DEFAULT_CONFIG_YAML)
        data["server"] = {
            **(data.get("server") or {}),
            "port": self.port,
            "workers": 1,
            "metrics_port": 0,
            "drain_delay_s": drain_s,
            "grace_period_s": 5,
        }
        config = folder / f"replica-{self.port}.yaml"
        config.write_text(yaml.safe_dump(data))
        self.log = folder / f"replica-{self.port}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*SERVE, "--config", str(config), "--host", "127.0.0.1"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.target = f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        """Return once health says SERVING."""
        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"replica exited: {self.log.read_text()[-2000:]}")
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica not serving: {self.log.read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the process (SIGINT: at once), if it still runs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _stub(channel: grpc.Channel) -> pb_grpc.ModelRouterStub:
    return pb_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]


class Calls:
    """Calls answered and failed (by status), counted from several threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: Counter[str] = Counter()

    def route(self, stub: pb_grpc.ModelRouterStub) -> None:
        """Make one Route call and count how it ended."""
        try:
            stub.Route(pb.RouteRequest(prompt="hello"), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            with self.lock:
                self.failed[exc.code().name] += 1
        else:
            with self.lock:
                self.ok += 1

    def report(self) -> dict[str, Any]:
        """Return the counts."""
        return {"ok": self.ok, "failed": sum(self.failed.values()), "by_status": dict(self.failed)}


def _watch_not_serving(target: str, since: list[float], seen: list[float]) -> None:
    """Append the time health turns NOT_SERVING (after ``since[0]`` is set) to ``seen``."""
    with grpc.insecure_channel(target) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        try:
            for answer in stream:
                if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING and since:
                    seen.append(time.monotonic())
                    return
        except grpc.RpcError:
            return  # the server stopped before NOT_SERVING was seen


def one_round(drain_s: float, lag_s: float) -> dict[str, Any]:
    """Stop replica A of two with SIGTERM under load; return what the callers saw."""
    with tempfile.TemporaryDirectory(prefix="modelrouter-drain-") as folder:
        a, b = Replica(Path(folder), drain_s), Replica(Path(folder), drain_s)
        try:
            a.wait_serving()
            b.wait_serving()
            return _measure(a, b, lag_s)
        finally:
            a.stop()
            b.stop()


def _measure(a: Replica, b: Replica, lag_s: float) -> dict[str, Any]:
    service_config = json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "healthCheckConfig": {"serviceName": SERVICE},
        }
    )
    balanced = grpc.insecure_channel(
        f"ipv4:{a.target},{b.target}", options=[("grpc.service_config", service_config)]
    )
    grpc.channel_ready_future(balanced).result(timeout=30)
    stub = _stub(balanced)
    steady, fresh = Calls(), Calls()
    running = threading.Event()
    running.set()

    def call_on() -> None:
        while running.is_set():
            steady.route(stub)

    threads = [threading.Thread(target=call_on) for _ in range(THREADS)]
    since: list[float] = []
    seen: list[float] = []
    watcher = threading.Thread(target=_watch_not_serving, args=(a.target, since, seen))
    watcher.start()
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # both replicas take calls
    signalled = time.monotonic()
    since.append(signalled)
    a.process.send_signal(signal.SIGTERM)
    while time.monotonic() < signalled + lag_s:
        with grpc.insecure_channel(a.target) as channel:
            fresh.route(_stub(channel))
        time.sleep(NEW_CONNECTION_EVERY_S)
    a.process.wait(60)
    exited = time.monotonic()
    time.sleep(1.0)  # the callers go on with replica B alone
    running.clear()
    for thread in threads:
        thread.join()
    watcher.join(10)
    balanced.close()
    return {
        "round_robin": steady.report(),
        "new_connections": fresh.report(),
        "not_serving_after_ms": round((seen[0] - signalled) * 1000, 1) if seen else None,
        "exited_after_s": round(exited - signalled, 2),
        "exit_code": a.process.returncode,
    }


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Add up the callers' counts over the rounds; the median of the times."""
    summary: dict[str, Any] = {}
    for caller in ("round_robin", "new_connections"):
        statuses: Counter[str] = Counter()
        for r in rounds:
            statuses.update(r[caller]["by_status"])
        summary[caller] = {
            "ok": sum(r[caller]["ok"] for r in rounds),
            "failed": sum(r[caller]["failed"] for r in rounds),
            "by_status": dict(statuses),
        }
    not_serving = [r["not_serving_after_ms"] for r in rounds if r["not_serving_after_ms"]]
    summary["not_serving_after_ms_median"] = statistics.median(not_serving) if not_serving else None
    summary["exited_after_s_median"] = statistics.median(r["exited_after_s"] for r in rounds)
    summary["exit_codes"] = sorted({r["exit_code"] for r in rounds})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rounds for both drain settings; write and print the report."""
    args = parse_args(argv)
    started = time.monotonic()
    load = os.getloadavg()[0]
    settings: dict[str, Any] = {}
    for drain_s in (0.0, args.drain):
        rounds = [one_round(drain_s, args.lag) for _ in range(args.rounds)]
        settings[f"{drain_s:g}"] = {"rounds": rounds, **summarise(rounds)}
    report = {
        "benchmark": "drain",
        "machine": f"{platform.node()} {platform.machine()} Python {platform.python_version()}",
        # The machine is shared: the 1-minute load average when the run started.
        "load_average": load,
        "rounds": args.rounds,
        "lag_s": args.lag,
        "threads": THREADS,
        "drain_delay_s": settings,
        "seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("drain_delay_s  round_robin ok/failed  new connections ok/failed  NOT_SERVING  exit")
    for name, s in settings.items():
        rr, fresh = s["round_robin"], s["new_connections"]
        print(
            f"{name:>13}  {rr['ok']:>9} / {rr['failed']:<8} {fresh['ok']:>13} / "
            f"{fresh['failed']:<10} {s['not_serving_after_ms_median']} ms  "
            f"{s['exited_after_s_median']} s  {fresh['by_status'] or ''} {rr['by_status'] or ''}"
        )
    print(f"wrote {args.out} in {report['seconds']} s (load average {load:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

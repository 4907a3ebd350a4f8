"""A real Prometheus scrapes a ``--workers 2`` server: its totals are what was sent.

Debian's ``prometheus`` (installed by scripts/test.sh when missing) is started on a free
port with a generated scrape configuration and a temporary storage directory, scraping
every second. A SIGHUP reload and a SIGKILLed worker (restarted by the supervisor) must
neither reset nor double a counter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from router._proto.modelrouter.v1 import router_pb2 as pb
from tests.integration.server.support import (
    SERVICE,
    ServeProcess,
    free_port,
    router_stub,
    write_config,
)

pytestmark = pytest.mark.slow

Start = Callable[..., ServeProcess]
# Own connection per channel, so that SO_REUSEPORT can hand each to a different worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


class Prometheus:
    """A Prometheus server scraping one target every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            if os.environ.get("MODELROUTER_REQUIRE_PROMETHEUS"):
                pytest.fail("prometheus is not installed (scripts/test.sh installs it)")
            pytest.skip("prometheus is not installed (apt-get install prometheus)")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [
                {"job_name": "modelrouter", "static_configs": [{"targets": [target]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = workdir / "prometheus.log"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Return the result vector of an instant query."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        with urllib.request.urlopen(url, timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by(self, promql: str, *labels: str) -> dict[tuple[str, ...], float]:
        """Return an instant query's values keyed by the given labels."""
        return {
            tuple(sample["metric"].get(label, "") for label in labels): float(sample["value"][1])
            for sample in self.query(promql)
        }

    def wait_for(
        self, promql: str, labels: tuple[str, ...], expected: dict[tuple[str, ...], float]
    ) -> None:
        """Wait until the query gives exactly ``expected`` (scrapes are a second apart)."""
        deadline = time.monotonic() + 60
        got: dict[tuple[str, ...], float] | str = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {self.log_path.read_text()}")
            try:
                got = self.by(promql, *labels)
            except OSError as exc:  # not listening yet
                got = repr(exc)
            if got == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{promql}: {got} after 60 s, expected {expected}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[str], Prometheus]]:
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(tmp_path, target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


class Traffic:
    """Known numbers of Route and Complete calls, spread over several connections."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, ...], float] = {}  # by (method, code)

    def send(self, port: int, connections: int) -> None:
        for i in range(connections):
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
                stub = router_stub(channel)
                for j in range(3):
                    stub.Route(pb.RouteRequest(prompt=f"query {i} {j}"), timeout=10)
                    self.count("Route", "OK")
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Route(pb.RouteRequest(prompt=" "), timeout=10)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                self.count("Route", "INVALID_ARGUMENT")
                request = pb.CompleteRequest(
                    route=pb.RouteRequest(prompt=f"explain {i}"),
                    generation=pb.GenerationOptions(max_tokens=4),
                )
                events = list(stub.Complete(request, timeout=20))
                assert events[-1].WhichOneof("event") == "summary"
                self.count("Complete", "OK")
                with pytest.raises(grpc.RpcError) as caught:
                    list(stub.Complete(pb.CompleteRequest(route=pb.RouteRequest()), timeout=10))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                self.count("Complete", "INVALID_ARGUMENT")

    def count(self, method: str, code: str) -> None:
        self.sent[method, code] = self.sent.get((method, code), 0) + 1

    def started(self) -> dict[tuple[str, ...], float]:
        totals: dict[tuple[str, ...], float] = {}
        for (method, _), n in self.sent.items():
            totals[(method,)] = totals.get((method,), 0) + n
        return totals

    def decisions(self) -> float:
        return sum(n for (_, code), n in self.sent.items() if code == "OK")


HANDLED = f'sum by (grpc_method, grpc_code) (grpc_server_handled_total{{grpc_service="{SERVICE}"}})'
STARTED = f'sum by (grpc_method) (grpc_server_started_total{{grpc_service="{SERVICE}"}})'
DECISIONS = "sum(modelrouter_route_decisions_total)"
RELOADS = "sum by (result) (modelrouter_config_reloads_total)"


def check_totals(prometheus: Prometheus, traffic: Traffic) -> None:
    prometheus.wait_for(HANDLED, ("grpc_method", "grpc_code"), dict(traffic.sent))
    prometheus.wait_for(STARTED, ("grpc_method",), traffic.started())
    prometheus.wait_for(DECISIONS, (), {(): traffic.decisions()})
    [count] = prometheus.by(
        f'sum(grpc_server_handling_seconds_count{{grpc_service="{SERVICE}"}})'
    ).values()
    assert count == sum(traffic.sent.values())


def test_prometheus_sees_every_rpc_of_both_workers_across_reload_and_restart(
    serve_process: Start,
    prometheus_for: Callable[[str], Prometheus],
    tmp_path: Path,
    model_path: Path,
) -> None:
    config = write_config(tmp_path / "c.yaml", model_path)
    metrics_port = free_port()
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        "--metrics-port", str(metrics_port),
    )  # fmt: skip
    listening = server.wait_for("listening", count=2)
    port = listening[0]["port"]
    prometheus = prometheus_for(f"127.0.0.1:{metrics_port}")
    traffic = Traffic()

    traffic.send(port, connections=8)
    check_totals(prometheus, traffic)
    served_by = {line["worker"] for line in server.events("rpc")}
    assert served_by == {0, 1}, "both workers must have had traffic"
    versions = prometheus.by("max by (version) (modelrouter_model_info)", "version")
    assert list(versions.values()) == [1.0] and next(iter(versions))[0].startswith("test")

    # A reload: every worker reloads, no counter moves.
    server.signal(signal.SIGHUP)
    server.wait_for("reloaded", count=2)
    prometheus.wait_for(RELOADS, ("result",), {("success",): 1.0})
    traffic.send(port, connections=4)
    check_totals(prometheus, traffic)

    # A worker killed outright and restarted: its counts stay, the new one adds to them.
    pids = {line["pid"] for line in listening}
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    server.wait_for("worker died; restarting")
    server.wait_for("listening", count=3)
    traffic.send(port, connections=8)
    check_totals(prometheus, traffic)
    inflight = prometheus.by("sum(modelrouter_inflight_rpcs)")
    assert inflight == {(): 0.0}

    server.signal(signal.SIGTERM)
    assert server.wait() == 0

"""The real ``modelrouter serve`` process: graceful stop, workers, reload, configuration errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from router.config import REPLICA_ID_ENV
from tests.integration.server.support import (
    SERVICE,
    ServeProcess,
    config_data,
    free_port,
    make_model,
    router_stub,
    serve_args,
    slow_demo,
    write_config,
)

Start = Callable[..., ServeProcess]
# Own connection per channel (gRPC otherwise shares one per target), so that SO_REUSEPORT
# can hand each channel to a different worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@contextmanager
def stub_for(port: int) -> Iterator[router_pb2_grpc.ModelRouterStub]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        yield router_stub(channel)


def route(port: int, prompt: str = "hello") -> pb.RoutingDecision:
    with stub_for(port) as stub:
        decision: pb.RoutingDecision = stub.Route(
            pb.RouteRequest(prompt=prompt), timeout=10
        ).decision
        return decision


def test_sigterm_lets_an_in_flight_stream_finish_and_exits_zero(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    # About 34 tokens at 20 per second: the stream is in flight for well over a second.
    config = write_config(tmp_path / "c.yaml", model_path, backends=slow_demo(20))
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )
    port = server.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_stub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stream = stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")))
        assert next(stream).WhichOneof("event") == "decision"
        assert next(stream).WhichOneof("event") == "delta"

        server.signal(signal.SIGTERM)
        server.wait_for("stopping")
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        # New RPCs are refused.
        with pytest.raises(grpc.RpcError) as refused, stub_for(port) as fresh:
            fresh.Route(pb.RouteRequest(prompt="hi"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The stream in flight runs to its end.
        rest = [event.WhichOneof("event") for event in stream]
        assert rest[-1] == "summary" and set(rest[:-1]) == {"delta"}
        assert stream.code() == grpc.StatusCode.OK
    assert server.wait() == 0
    [stopping] = server.events("stopping")
    assert stopping["in_flight"] == 1
    assert server.events("stopped")


def test_a_stream_longer_than_the_grace_period_is_cut_and_the_exit_is_still_zero(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml", model_path, backends=slow_demo(5), server={"grace_period_s": 0.5}
    )
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stream = router_stub(channel).Complete(
            pb.CompleteRequest(route=pb.RouteRequest(prompt="hi"))
        )
        assert next(stream).WhichOneof("event") == "decision"
        server.signal(signal.SIGTERM)
        with pytest.raises(grpc.RpcError) as cut:
            for _ in stream:
                pass
        assert cut.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert server.wait() == 0


def scrape(port: int, wanted: str, timeout: float = 15.0) -> str:
    """Return the metrics page once it holds ``wanted`` (workers write theirs once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            page: str = reply.read().decode()
        if wanted in page or time.monotonic() > deadline:
            return page
        time.sleep(0.2)


def test_two_workers_serve_from_both_and_a_dead_worker_or_exporter_is_restarted(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", model_path)
    metrics_port = free_port()
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        "--metrics-port", str(metrics_port), env={REPLICA_ID_ENV: "pod-7"},
    )  # fmt: skip
    listening = server.wait_for("listening", count=2)
    ports = {line["port"] for line in listening}
    workers = {line["pid"] for line in listening}
    assert len(ports) == 1 and len(workers) == 2
    port = ports.pop()
    for i in range(16):
        route(port, f"query number {i}")
    rpcs = server.wait_for("rpc", count=16)
    assert {line["pid"] for line in rpcs} == workers
    assert {line["worker"] for line in rpcs} == {0, 1}
    # GetConfig says which replica and worker answered: a connection each, both workers.
    answered = set()
    for _ in range(16):
        with stub_for(port) as stub:
            config_answer = stub.GetConfig(pb.GetConfigRequest(), timeout=10)
        answered.add((config_answer.replica_id, config_answer.worker_index))
    assert answered == {("pod-7", 0), ("pod-7", 1)}

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    [died] = server.wait_for("worker died; restarting")
    assert died["worker_pid"] == victim and died["died_of"] == "signal SIGKILL"
    third = server.wait_for("listening", count=3)[-1]
    assert third["pid"] not in workers and third["port"] == port
    assert route(port).tier

    # The metrics exporter is restarted too, and logged as what it is: it has no worker slot.
    [exporter] = server.wait_for("metrics exporter started")
    # By its own pid ("pid" on every line is the process that logs it: the supervisor).
    supervisor = server.proc.pid
    assert exporter["pid"] == supervisor and exporter["exporter_pid"] != supervisor
    os.kill(exporter["exporter_pid"], signal.SIGKILL)
    [died] = server.wait_for("metrics exporter died; restarting")
    assert died["exporter_pid"] == exporter["exporter_pid"] and died["died_of"] == "signal SIGKILL"
    assert "slot" not in died and "worker_pid" not in died
    server.wait_for("metrics exporter started", count=2)
    assert "grpc_server_handled_total{" in scrape(metrics_port, "grpc_server_handled_total{")
    assert len(server.events("worker died; restarting")) == 1

    server.signal(signal.SIGTERM)
    assert server.wait() == 0
    assert sorted(line["slot"] for line in server.events("worker stopped")) == [0, 1]
    [stopped] = server.events("metrics exporter stopped")
    assert stopped["exit_code"] == 0 and "slot" not in stopped
    assert stopped["exporter_pid"] not in (supervisor, exporter["exporter_pid"])


def gone(pid: int) -> bool:
    """Return whether a process (not our child) has exited: no such pid, or a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_a_supervisor_killed_outright_has_its_metrics_directory_removed_by_the_next_one(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    config = write_config(tmp_path / "c.yaml", model_path)

    def start() -> tuple[ServeProcess, Path, list[int]]:
        """Start a --workers 2 server with metrics; return it, its directory and its children."""
        before = set(temp.glob("modelrouter-metrics-*"))
        server = serve_process(
            "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2",
            "--metrics-port", str(free_port()), env={"TMPDIR": str(temp)},
        )  # fmt: skip
        children = [line["pid"] for line in server.wait_for("listening", count=2)]
        children += [line["exporter_pid"] for line in server.wait_for("metrics exporter started")]
        [made] = set(temp.glob("modelrouter-metrics-*")) - before
        return server, made, children

    killed, killed_dir, orphans = start()
    live, live_dir, _ = start()
    assert killed_dir.is_dir(), "a starting server removed a live server's directory"
    assert not live.events("removed the metrics directory of a dead server")

    killed.proc.kill()  # SIGKILL: the supervisor cannot clean up
    assert killed.wait() == -signal.SIGKILL
    # Its workers and exporter follow it (SIGTERM on their parent's death).
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in orphans):
        assert time.monotonic() < deadline, f"children of the killed server still run: {orphans}"
        time.sleep(0.1)
    assert killed_dir.is_dir()  # nobody else removes it

    after, after_dir, _ = start()
    [removed] = after.events("removed the metrics directory of a dead server")
    assert removed["path"] == str(killed_dir) and removed["owner_pid"] == killed.proc.pid
    assert not killed_dir.exists()
    assert live_dir.is_dir() and after_dir.is_dir()
    for server in (live, after):
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
    assert list(temp.glob("modelrouter-metrics-*")) == []


def test_a_worker_restarted_after_a_reload_binds_what_the_others_bind(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    # The host and the health port need a restart: a worker started after the reload must
    # not bind the new ones (unchecked, beside another server's, or an address not there).
    health_port = free_port()
    server_section: dict[str, Any] = {"host": "127.0.0.1", "health_port": health_port}
    config = write_config(tmp_path / "c.yaml", model_path, server=server_section)
    server = serve_process("--config", str(config), "--port", "0", "--workers", "2")
    listening = server.wait_for("listening", count=2)
    port = listening[0]["port"]
    server_section.update(host="fd00::99", health_port=free_port())
    write_config(config, model_path, server=server_section)
    server.signal(signal.SIGHUP)
    warned = server.wait_for("restart to apply", count=2)
    assert all(line["keys"] == ["server.host", "server.health_port"] for line in warned)

    victim = listening[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    server.wait_for("worker died; restarting")
    third = server.wait_for("listening", count=3)[-1]
    assert (third["host"], third["port"]) == ("127.0.0.1", port)
    assert not server.events("cannot listen")
    for i in range(10):
        assert route(port, f"query number {i}").tier
    check = health_pb2.HealthCheckRequest(service=SERVICE)
    with grpc.insecure_channel(f"127.0.0.1:{health_port}", options=OWN_CONNECTION) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_sighup_reloads_every_worker_and_rejects_a_bad_file(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    data = config_data(model_path)
    for tier in data["tiers"]:
        tier["model"] = f"v1-{tier['name']}"
    config.write_text(yaml.safe_dump(data))
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    port = server.wait_for("listening", count=2)[0]["port"]
    before = route(port)
    assert before.model.startswith("v1-")

    second_model = make_model(tmp_path / "second.npz", seed=99, name="second")
    data["model"] = "second.npz"  # relative to the configuration file
    for tier in data["tiers"]:
        tier["model"] = f"v2-{tier['name']}"
    config.write_text(yaml.safe_dump(data))
    server.signal(signal.SIGHUP)
    reloaded = server.wait_for("reloaded", count=2)
    assert {line["model_version"] for line in reloaded} == {second_model.version}
    for _ in range(8):
        decision = route(port)
        assert decision.model.startswith("v2-")
        assert decision.model_version == second_model.version

    data["tiers"][0]["modle"] = "typo"
    config.write_text(yaml.safe_dump(data))
    server.signal(signal.SIGHUP)
    rejected = server.wait_for("reload rejected", count=2)
    assert all("tiers[0].modle: unknown key" in line["error"] for line in rejected)
    for _ in range(8):
        assert route(port).model.startswith("v2-")

    config.write_text("version: 1\ntiers: [\n")
    server.signal(signal.SIGHUP)
    rejected = server.wait_for("reload rejected", count=4)
    assert all("not valid YAML" in line["error"] for line in rejected[2:])
    assert route(port).model.startswith("v2-")

    # Not UTF-8: every process, the supervisor included, keeps serving the old file.
    config.write_bytes(b"version: 1\n# caf\xe9\n")
    server.signal(signal.SIGHUP)
    rejected = server.wait_for("reload rejected", count=6)
    utf8 = f"{config}: not valid UTF-8: byte 0xe9 at offset 16 (line 2)"
    assert all(utf8 in line["error"] for line in rejected[4:])
    [kept] = server.wait_for("supervisor keeps its configuration", count=3)[2:]
    assert utf8 in kept["error"]
    assert route(port).model.startswith("v2-")
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def test_a_taken_port_is_an_error(serve_process: Start, tmp_path: Path, model_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", model_path)
    first = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )
    port = str(first.port)
    second = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", port, "--workers", "1"
    )
    assert second.wait() == 3
    assert second.events("cannot listen")


@pytest.mark.parametrize("shared", ["port", "health_port"])
def test_a_port_taken_by_another_supervisor_is_an_error_not_a_split(
    serve_process: Start, tmp_path: Path, model_path: Path, shared: str
) -> None:
    # Both servers' workers bind the gRPC port (and the health port) with SO_REUSEPORT,
    # which alone would let the second listen beside the first, the kernel spreading the
    # calls over both; the second must stop as a single process does on a taken port.
    server = {"health_port": free_port()} if shared == "health_port" else {}
    config = write_config(tmp_path / "c.yaml", model_path, server=server)
    first = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    port = first.wait_for("listening", count=2)[0]["port"]
    taken = port if shared == "port" else server["health_port"]
    second = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--workers", "2",
        "--port", str(port) if shared == "port" else "0",
    )  # fmt: skip
    try:
        code = second.wait(timeout=20)
    except subprocess.TimeoutExpired:
        code = None  # it listens: the bug
    assert code == 3, "".join(second.raw)
    [refused] = second.events("cannot listen")
    assert refused["address"] == f"127.0.0.1:{taken}"
    assert "Address already in use" in refused["error"]
    assert not second.events("listening") and not second.events("worker started")
    # The first server is untouched: it answers every call, each on a connection of its own.
    for i in range(10):
        assert route(port, f"query number {i}").tier
    assert len(first.wait_for("rpc", count=10)) == 10
    if shared == "health_port":
        check = health_pb2.HealthCheckRequest(service=SERVICE)
        for _ in range(10):
            with grpc.insecure_channel(f"127.0.0.1:{taken}", options=OWN_CONNECTION) as channel:
                answer = health_pb2_grpc.HealthStub(channel).Check(check, timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert first.proc.poll() is None


def ipv6_loopback() -> bool:
    """Return whether this machine can bind ::1."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("host", ["::1", "[::1]"])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_ipv6_host_is_served_with_or_without_brackets(
    serve_process: Start, tmp_path: Path, model_path: Path, workers: str, host: str
) -> None:
    # gRPC reads "::1:50051" as host "::1:50051" on port 443; the brackets are added for it.
    if not ipv6_loopback():
        pytest.skip("no IPv6 loopback here")
    config = write_config(tmp_path / "c.yaml", model_path)
    server = serve_process(
        "--config", str(config), "--host", host, "--port", "0", "--workers", workers
    )
    [listening, *_] = server.wait_for("listening", count=int(workers))
    assert listening["host"] == "[::1]"
    target = f"[::1]:{listening['port']}"
    with grpc.insecure_channel(target, options=OWN_CONNECTION) as channel:
        answer = router_stub(channel).Route(pb.RouteRequest(prompt="hello"), timeout=10)
    assert answer.decision.tier
    assert not server.events("cannot listen")


def test_a_host_with_a_port_in_it_is_a_usage_error() -> None:
    result = run_cli("serve", "--host", "localhost:50051")
    assert result.returncode == 2
    assert "argument --host: 'localhost:50051' is not a host name or an address" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_health_port_is_named_in_the_error(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    # One process binds the health port in gRPC itself (no supervisor to check it first).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health_port = taken.getsockname()[1]
        config = write_config(tmp_path / "c.yaml", model_path, server={"health_port": health_port})
        server = serve_process(*serve_args(config, workers=1))
        assert server.wait(timeout=30) == 3
    [refused] = server.events("cannot listen")
    assert refused["address"] == f"127.0.0.1:{health_port}"
    assert refused["hint"] == "server.health_port is taken; 0 turns the health port off"
    assert not server.events("listening")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _bad(data: dict[str, Any], path: tuple[str | int, ...], value: object) -> dict[str, Any]:
    """Return the configuration with the value at ``path`` replaced (or deleted)."""
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


_DELETE = object()

BAD_CONFIGS = [
    (("tiers", 0, "modle"), "x", "tiers[0].modle: unknown key"),
    (("servr",), {}, "servr: unknown key"),
    (("tiers",), "ONE", "tiers: Input should be a valid list"),
    (
        ("tiers", 0, "price", "input_per_mtok"),
        -1,
        "tiers[0].price.input_per_mtok: Input should be greater than or equal to 0",
    ),
    (("version",), 2, "version: 2 is not supported (expected 1)"),
    (("version",), _DELETE, "version: missing (this release reads version: 1)"),
    (
        ("tiers", 1, "backend"),
        "nowhere",
        "tiers[1].backend: unknown backend 'nowhere' (configured: demo)",
    ),
    (("backends", "demo", "api_key"), "x", "backends.demo.api_key: unknown key"),
    (
        ("backends", "demo", "tokens_per_second"),
        0,
        "backends.demo.tokens_per_second: Input should be greater than 0",
    ),
    (
        ("backends", "demo"),
        {"kind": "grpc"},
        "backends.demo: Input tag 'grpc' found using 'kind' does not match any of the expected "
        "tags: 'openai', 'anthropic', 'demo'",
    ),
    (
        ("tiers", 1, "timeouts"),
        {"idle_s": -1},
        "tiers[1].timeouts.idle_s: Input should be greater than 0",
    ),
    (
        ("tiers", 0, "escalation_margin"),
        0.1,
        "tiers[0].escalation_margin: the cheapest tier has no threshold to climb to; omit it",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), BAD_CONFIGS, ids=[m for *_, m in BAD_CONFIGS]
)
def test_config_check_names_the_bad_key(
    tmp_path: Path, model_path: Path, path: tuple[str | int, ...], value: object, message: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(_bad(config_data(model_path), path, value)))
    result = run_cli("config", "check", str(config))
    assert result.returncode == 1
    assert result.stdout == ""
    # The whole message: one uniform key path, no pydantic location artefacts.
    assert result.stderr == f"modelrouter: {config}: {message}\n"


def test_config_check_rejects_missing_tier_thresholds_out_of_order_and_env(
    tmp_path: Path, model_path: Path
) -> None:
    cases = []
    one_tier = config_data(model_path)
    one_tier["tiers"] = one_tier["tiers"][:1]
    cases.append((one_tier, "tiers: List should have at least 2 items"))
    disordered = config_data(model_path)
    disordered["tiers"][1]["min_score"], disordered["tiers"][2]["min_score"] = 0.8, 0.5
    cases.append((disordered, "tiers[2].min_score: thresholds must increase with the tier"))
    secret = config_data(model_path)
    secret["backends"]["remote"] = {
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key": "${MODELROUTER_TEST_UNSET_KEY}",
    }
    cases.append(
        (
            secret,
            "backends.remote.api_key: environment variable MODELROUTER_TEST_UNSET_KEY is not set",
        )
    )
    no_model = config_data(model_path)
    no_model["model"] = str(tmp_path / "absent.npz")
    cases.append((no_model, f"model: {tmp_path / 'absent.npz'}: no such model file"))
    for data, message in cases:
        config = tmp_path / "bad.yaml"
        config.write_text(yaml.safe_dump(data))
        result = run_cli("config", "check", str(config))
        assert result.returncode == 1, message
        assert message in result.stderr


def test_config_check_accepts_a_good_file(tmp_path: Path, model_path: Path) -> None:
    config = write_config(tmp_path / "good.yaml", model_path)
    result = run_cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK: tiers cheap, strong (>= 0.4), expert (>= 0.7)")


@pytest.mark.parametrize(
    ("store", "shown"),
    [
        (None, "store off"),
        ({"path": "s.db"}, "store sqlite {dir}/s.db"),
        (
            {"url": "postgresql://u:secret@db.example/x"},
            "store postgres postgresql://u:***@db.example/x",
        ),
    ],
)
def test_config_check_says_where_the_store_is(
    tmp_path: Path, model_path: Path, store: dict[str, str] | None, shown: str
) -> None:
    config = write_config(tmp_path / "good.yaml", model_path, store=store)
    result = run_cli("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith(shown.format(dir=tmp_path))
    assert not (tmp_path / "s.db").exists()  # checking opens no store


README = Path(__file__).resolve().parents[3] / "README.md"


def readme_config_example() -> str:
    """Return the YAML example of the README's Configuration section."""
    section = README.read_text(encoding="utf-8").split("### Configuration", 1)[1]
    return section.split("```yaml\n", 1)[1].split("```", 1)[0]


def test_config_check_accepts_the_readme_example(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(readme_config_example(), encoding="utf-8")
    keys = {"OPENAI_API_KEY": "sk-test", "ANTHROPIC_API_KEY": "sk-ant-test"}
    result = run_cli("config", "check", str(config), env=keys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK: tiers cheap, strong (>= ")
    assert "backends anthropic, local, openai" in result.stdout


def test_serve_exits_non_zero_on_a_bad_config(tmp_path: Path, model_path: Path) -> None:
    data = config_data(model_path)
    data["tiers"][0]["price"]["output_per_mtok"] = -0.5
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    result = run_cli("serve", "--config", str(config), "--port", "0")
    assert result.returncode == 1
    assert (
        "tiers[0].price.output_per_mtok: Input should be greater than or equal to 0"
        in result.stderr
    )
    missing = run_cli("serve", "--config", str(tmp_path / "nope.yaml"), "--port", "0")
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


# Runs the command line as if some modules were not installed: importing them fails.
WITHOUT_MODULES = (
    "import sys\n"
    "sys.modules.update(dict.fromkeys(sys.argv[1].split(',')))\n"
    "from router.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)

TRACING_MISSING = (
    "tracing.otlp_endpoint: traces exported over OTLP need opentelemetry-sdk and its "
    "OTLP/gRPC exporter: pip install 'modelrouter[tracing]'"
)
EXTRA_MISSING = [
    # The base install: none of OpenTelemetry.
    ("opentelemetry", {"tracing": {"otlp_endpoint": "http://127.0.0.1:9"}}, TRACING_MISSING),
    # The API alone (another package's dependency), or no exporter.
    ("opentelemetry.sdk", {"tracing": {"otlp_endpoint": "http://127.0.0.1:9"}}, TRACING_MISSING),
    (
        "opentelemetry.exporter.otlp.proto.grpc",
        {"tracing": {"otlp_endpoint": "https://127.0.0.1:9"}},
        TRACING_MISSING,
    ),
    (
        "redis",
        {"limits": {"redis_url": "redis://127.0.0.1:9/0"}},
        "limits.redis_url: limits shared in Redis need redis-py: pip install 'modelrouter[redis]'",
    ),
    # psycopg without its pool, or none of it: refused before any connection is tried.
    *(
        (
            hidden,
            {"store": {"url": "postgresql://u@127.0.0.1:9/modelrouter"}},
            "store.url: a PostgreSQL store needs psycopg: pip install 'modelrouter[postgres]'",
        )
        for hidden in ("psycopg", "psycopg_pool")
    ),
]


@pytest.mark.parametrize("command", ["config check", "serve"])
@pytest.mark.parametrize(
    ("hidden", "sections", "message"), EXTRA_MISSING, ids=[h for h, *_ in EXTRA_MISSING]
)
def test_a_configuration_whose_extra_is_missing_is_refused(
    tmp_path: Path,
    model_path: Path,
    hidden: str,
    sections: dict[str, Any],
    message: str,
    command: str,
) -> None:
    config = write_config(tmp_path / "router.yaml", model_path, **sections)
    args = ["config", "check", str(config)] if command != "serve" else ["serve"]
    if command == "serve":
        args += serve_args(config, workers=2)
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_MODULES, hidden, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # One line naming the extra, before any worker starts: no traceback, no restarts.
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr == f"modelrouter: {config}: {message}\n"


def test_serve_without_a_config_serves_the_shipped_model(serve_process: Start) -> None:
    server = serve_process("--host", "127.0.0.1", "--port", "0", "--workers", "1")
    port = server.port
    with stub_for(port) as stub:
        config = stub.GetConfig(pb.GetConfigRequest(), timeout=10)
        assert config.model_source == "builtin"
        # One process: no worker index; the replica id resolved as serve resolves it.
        replica = os.environ.get(REPLICA_ID_ENV) or socket.gethostname()
        assert (config.replica_id, config.HasField("worker_index")) == (replica, False)
        assert [t.name for t in config.tiers] == ["cheap", "strong", "expert"]
        events = list(
            stub.Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")), timeout=30)
        )
        text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
        assert text.startswith("[modelrouter demo backend]")

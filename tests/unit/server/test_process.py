"""The process helpers: flags over the configuration, the port reservation."""

from __future__ import annotations

import errno
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
import yaml

from router.config import DEFAULT_CONFIG_YAML, Config, ConfigError, parse_config
from router.loading import ConfigSource, load
from router.server import supervisor
from router.server.supervisor import Supervisor, port_lock, reserve_port
from router.server.worker import Reloader, keep_restart_only
from router.service import RouterService
from tests.integration.server.support import make_model, write_config


class BrokenSource(ConfigSource):
    """A configuration source whose loading fails with an error no one planned for."""

    def load(self) -> Config:
        raise RecursionError("maximum recursion depth exceeded")


def test_flags_override_the_file(tmp_path: Path) -> None:
    make_model(tmp_path / "m.npz")
    path = write_config(tmp_path / "c.yaml", tmp_path / "m.npz", server={"port": 7000})
    assert ConfigSource(path).load().server.port == 7000
    config = ConfigSource(path, host="127.0.0.1", port=0, workers=2).load()
    assert (config.server.host, config.server.port, config.server.workers) == ("127.0.0.1", 0, 2)
    assert ConfigSource(path).base_dir == tmp_path
    assert ConfigSource().load().tiers[0].backend == "demo"
    with pytest.raises(ConfigError, match="cannot read"):
        ConfigSource(tmp_path / "missing.yaml").load()


def assert_plain_bind_fails(port: int) -> None:
    """Check that a bind to 127.0.0.1:``port`` without SO_REUSEADDR or SO_REUSEPORT fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))


def test_reserved_port_is_shared_with_reuseport_sockets() -> None:
    held = reserve_port("127.0.0.1", 0)
    port = held.getsockname()[1]
    try:
        worker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))
        worker.listen()
        worker.close()
        assert_plain_bind_fails(port)
    finally:
        held.close()


def _listener(host: str, port: int = 0, reuseport: bool = True) -> socket.socket:
    """Return a listening socket made as gRPC makes a worker's (SO_REUSEADDR, SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:
            pytest.skip("no IPv6 here")
        raise
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuseport))
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
            pytest.skip("no IPv6 here")
        raise
    sock.listen()
    return sock


@pytest.mark.parametrize(
    ("listening", "reserved"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::", "0.0.0.0"),  # gRPC binds a wildcard as [::] for both families
        ("0.0.0.0", "[::]"),
        ("127.0.0.1", "[::]"),
        ("::1", "0.0.0.0"),  # gRPC binds 0.0.0.0 as [::] too
        ("::1", "localhost"),  # gRPC binds localhost on both loopbacks
    ],
)
def test_a_port_another_servers_workers_listen_on_is_not_reserved(
    listening: str, reserved: str
) -> None:
    # SO_REUSEPORT alone would let the reservation, then this server's workers, share it.
    other = _listener(listening)
    try:
        with pytest.raises(OSError) as refused:
            reserve_port(reserved, other.getsockname()[1])
        assert refused.value.errno == errno.EADDRINUSE
    finally:
        other.close()


def test_two_supervisors_reserving_one_port_at_once_do_not_both_get_it() -> None:
    # Another supervisor holds the port's lock while it checks and reserves: this one waits,
    # then finds the port taken (without the lock both checks pass and both reserve it).
    with _listener("127.0.0.1") as free:  # a free port, closed again at once
        port = free.getsockname()[1]
    outcome: list[BaseException | socket.socket] = []
    with port_lock(port):
        waiting = threading.Thread(target=lambda: outcome.append(_try_reserve(port)))
        waiting.start()
        time.sleep(0.3)
        assert not outcome, "reserve_port did not wait for the other supervisor's check"
        # The other supervisor's reservation, as reserve_port makes it.
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", port))
    try:
        waiting.join(timeout=10)
        [result] = outcome
        assert isinstance(result, OSError) and result.errno == errno.EADDRINUSE, result
    finally:
        other.close()
        if isinstance(outcome[0], socket.socket):
            outcome[0].close()


def test_a_port_lock_held_by_another_process_delays_a_start_but_never_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any local process can hold the abstract socket; the port itself is free.
    monkeypatch.setattr(supervisor, "PORT_LOCK_WAIT_S", 0.2)
    with _listener("127.0.0.1") as free:
        port = free.getsockname()[1]
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as squatter,
        structlog.testing.capture_logs() as logs,
    ):
        squatter.bind(f"\0modelrouter.port.{port}")
        started = time.monotonic()
        held = reserve_port("127.0.0.1", port)
        waited = time.monotonic() - started
    try:
        assert held.getsockname()[1] == port
        assert waited >= 0.2
        [warning] = [line for line in logs if line["log_level"] == "warning"]
        assert warning["event"] == "port lock held too long; checking the port without it"
        assert warning["lock"] == f"modelrouter.port.{port}"
    finally:
        held.close()


def test_without_ipv6_the_wildcard_is_checked_and_held_as_0_0_0_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel booted with ipv6.disable=1 makes no AF_INET6 socket; gRPC binds [::] as
    # 0.0.0.0 there, so the supervisor must check and hold that, not fail or check nothing.
    real_socket = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *args: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real_socket(family, *args)

    with _listener("127.0.0.1") as other:
        taken = other.getsockname()[1]
        monkeypatch.setattr(socket, "socket", no_ipv6)
        with pytest.raises(OSError) as refused:
            reserve_port("[::]", taken)
        assert refused.value.errno == errno.EADDRINUSE
        held = reserve_port("[::]", 0)
    monkeypatch.undo()
    try:
        assert held.family == socket.AF_INET and held.getsockname()[0] == "0.0.0.0"
    finally:
        held.close()


def _try_reserve(port: int) -> BaseException | socket.socket:
    try:
        return reserve_port("127.0.0.1", port)
    except OSError as exc:
        return exc


@pytest.mark.parametrize("reuseport", [True, False])
def test_a_port_held_only_by_time_wait_connections_is_reserved(reuseport: bool) -> None:
    # The connections of a server stopped a moment ago, which closed them first: a plain bind
    # fails on them, a restart must not (with SO_REUSEPORT: several workers; without: one).
    server = _listener("127.0.0.1", reuseport=reuseport)
    port = server.getsockname()[1]
    for _ in range(3):
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        time.sleep(0.05)  # the server's FIN first: the TIME_WAIT is on the server's side
        client.close()
    server.close()
    assert_plain_bind_fails(port)
    held = reserve_port("127.0.0.1", port)
    try:
        assert held.getsockname()[1] == port
        # Still no room beside it for a server of its own (SO_REUSEADDR, no SO_REUSEPORT).
        with pytest.raises(OSError):
            _listener("127.0.0.1", port, reuseport=False)
    finally:
        held.close()


def test_the_supervisor_keeps_its_configuration_whatever_a_reload_raises(
    tmp_path: Path,
) -> None:
    make_model(tmp_path / "m.npz")
    source = ConfigSource(write_config(tmp_path / "c.yaml", tmp_path / "m.npz"))
    supervisor = Supervisor(source, load(source), workers=2)
    before = supervisor.loaded
    errors = []
    for bad in (BrokenSource(), ConfigSource(tmp_path / "missing.yaml")):
        supervisor.source = bad
        with structlog.testing.capture_logs() as logs:
            supervisor._reload()
        assert supervisor.loaded is before
        [line] = logs
        assert line["event"] == "supervisor keeps its configuration"
        errors.append(line["error"])
    assert errors[0].startswith("RecursionError(")
    assert errors[1].startswith("cannot read")


async def test_a_worker_keeps_serving_whatever_a_reload_raises(tmp_path: Path) -> None:
    make_model(tmp_path / "m.npz")
    source = ConfigSource(write_config(tmp_path / "c.yaml", tmp_path / "m.npz"))
    loaded = load(source)
    service = RouterService(loaded.config, loaded.router, model_source=loaded.model_source)
    with structlog.testing.capture_logs() as logs:
        assert await Reloader(BrokenSource(), service).reload() is False
    assert service.config is loaded.config
    [line] = logs
    assert line["event"] == "reload rejected"
    assert "RecursionError" in line["error"]
    await service.aclose()


def test_a_reload_keeps_the_running_values_of_what_only_a_restart_applies() -> None:
    def config(**sections: dict[str, Any]) -> Config:
        data: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG_YAML)
        return parse_config(data | sections, environ={})

    running = config(server={"host": "127.0.0.1", "health_port": 8081})
    new = config(
        server={
            "host": "::1",
            "health_port": 8082,
            "max_prompt_bytes": 1000,  # applied by a reload
            "tls": {"cert": "s.crt", "key": "s.key"},
        },
        logging={"rpc": False},
        tracing={"otlp_endpoint": "http://127.0.0.1:4317"},
    )
    kept, stale = keep_restart_only(running, new)
    assert stale == ["server.host", "server.health_port", "server.tls", "logging", "tracing"]
    assert (kept.server.host, kept.server.health_port) == ("127.0.0.1", 8081)
    assert kept.server.tls is None and kept.logging.rpc and not kept.tracing.enabled
    assert kept.server.max_prompt_bytes == 1000
    assert kept.tiers == new.tiers
    # Nothing to keep: the new configuration as it is; new certificates of the same
    # transport are no restart.
    tls = {"cert": "s.crt", "key": "s.key"}
    same = config(server={"host": "127.0.0.1", "health_port": 8081, "tls": tls})
    renewed = config(
        server={"host": "127.0.0.1", "health_port": 8081, "tls": tls | {"cert": "n.crt"}}
    )
    assert keep_restart_only(same, renewed) == (renewed, [])

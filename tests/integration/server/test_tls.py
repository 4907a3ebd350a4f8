"""TLS and mutual TLS on the gRPC port, certificate reload on SIGHUP, HTTPS on the metrics port."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import Config, ConfigError
from router.loading import ConfigSource, load
from router.server import RunningServer
from tests.certs import CertificateAuthority, Issued
from tests.integration.server.support import (
    ServeProcess,
    free_port,
    router_stub,
    serve_args,
    slow_demo,
    write_config,
)

CALL_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority("modelrouter test CA")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority("someone else's CA")


def _tls_section(
    directory: Path, ca: CertificateAuthority, *, mutual: bool = False
) -> dict[str, str]:
    cert, key = ca.issue("modelrouter").write(directory, "server")
    section = {"cert": str(cert), "key": str(key)}
    if mutual:
        section["client_ca"] = str(ca.write(directory, "client-ca"))
    return section


def _credentials(ca: CertificateAuthority, client: Issued | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem,
        private_key=None if client is None else client.key,
        certificate_chain=None if client is None else client.cert,
    )


async def _route(channel: grpc.aio.Channel) -> pb.RouteResponse:
    response: pb.RouteResponse = await router_stub(channel).Route(
        pb.RouteRequest(prompt="What are your business hours?"), timeout=CALL_TIMEOUT_S
    )
    return response


async def _route_code(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        try:
            await _route(channel)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
def start_tls(
    tmp_path: Path,
    ca: CertificateAuthority,
    make_config: Callable[..., Config],
    start_server: Callable[..., Any],
) -> Callable[..., Any]:
    """Return a starter of in-process servers with TLS (mutual with ``mutual=True``)."""

    async def start(*, mutual: bool = False) -> str:
        config = make_config(server={"tls": _tls_section(tmp_path, ca, mutual=mutual)})
        server: RunningServer = await start_server(config)
        return f"127.0.0.1:{server.port}"

    return start


async def test_route_over_tls(start_tls: Callable[..., Any], ca: CertificateAuthority) -> None:
    target = await start_tls()
    async with grpc.aio.secure_channel(target, _credentials(ca)) as channel:
        response = await _route(channel)
        assert response.decision.tier in ("cheap", "strong", "expert")
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_to_a_tls_port_fails_cleanly(
    start_tls: Callable[..., Any], ca: CertificateAuthority
) -> None:
    target = await start_tls()
    # A status, quickly, and never a hang; the server keeps serving TLS callers.
    code = await asyncio.wait_for(_route_code(target, None), CALL_TIMEOUT_S + 5)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert await _route_code(target, _credentials(ca)) is grpc.StatusCode.OK


async def test_a_client_trusting_another_ca_fails(
    start_tls: Callable[..., Any], ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    target = await start_tls()
    assert await _route_code(target, _credentials(other_ca)) is grpc.StatusCode.UNAVAILABLE
    assert await _route_code(target, _credentials(ca)) is grpc.StatusCode.OK


async def test_mutual_tls_refuses_a_client_certificate_from_another_ca(
    start_tls: Callable[..., Any], ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    target = await start_tls(mutual=True)
    trusted = ca.issue("billing-service", client=True)
    foreign = other_ca.issue("billing-service", client=True)
    assert await _route_code(target, _credentials(ca, trusted)) is grpc.StatusCode.OK
    assert await _route_code(target, _credentials(ca, foreign)) is grpc.StatusCode.UNAVAILABLE
    # No client certificate at all is refused too.
    assert await _route_code(target, _credentials(ca)) is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("missing_cert", "server.tls.cert: cannot read"),
        ("not_pem", "server.tls.cert: "),
        ("wrong_key", "server.tls.key: "),
        ("bad_client_ca", "server.tls.client_ca: "),
    ],
)
def test_bad_certificate_files_are_config_errors(
    tmp_path: Path, model_path: Path, ca: CertificateAuthority, broken: str, message: str
) -> None:
    tls = _tls_section(tmp_path, ca, mutual=True)
    if broken == "missing_cert":
        tls["cert"] = str(tmp_path / "nowhere.crt")
    elif broken == "not_pem":
        Path(tls["cert"]).write_text("not a certificate\n")
    elif broken == "wrong_key":
        ca.issue("another").write(tmp_path, "another")
        tls["key"] = str(tmp_path / "another.key")
    else:
        Path(tls["client_ca"]).write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    path = write_config(tmp_path / "router.yaml", model_path, server={"tls": tls})
    with pytest.raises(ConfigError, match=message):
        load(ConfigSource(path))


def test_relative_certificate_paths_are_taken_from_the_config_directory(
    tmp_path: Path, model_path: Path, ca: CertificateAuthority
) -> None:
    ca.issue("modelrouter").write(tmp_path, "server")
    path = write_config(
        tmp_path / "router.yaml",
        model_path,
        server={"tls": {"cert": "server.crt", "key": "server.key"}},
    )
    loaded = load(ConfigSource(path))
    assert loaded.tls is not None
    assert loaded.tls.cert == (tmp_path / "server.crt").read_bytes()


def _wait_for_route(target: str, ca: CertificateAuthority) -> None:
    with grpc.secure_channel(target, _credentials(ca)) as channel:
        router_stub(channel).Route(
            pb.RouteRequest(prompt="hello"), timeout=CALL_TIMEOUT_S, wait_for_ready=True
        )


@pytest.mark.slow
def test_sighup_swaps_certificates_without_dropping_connections(
    tmp_path: Path,
    model_path: Path,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    serve_process: Callable[..., ServeProcess],
) -> None:
    tls = _tls_section(tmp_path, ca)
    # A slow backend keeps a Complete stream open across the reload.
    config = write_config(
        tmp_path / "router.yaml", model_path, server={"tls": tls}, backends=slow_demo(20)
    )
    process = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )
    target = f"127.0.0.1:{process.port}"
    with grpc.secure_channel(target, _credentials(ca)) as old:
        stub = router_stub(old)
        stub.Route(pb.RouteRequest(prompt="hello"), timeout=CALL_TIMEOUT_S, wait_for_ready=True)
        stream = stub.Complete(
            pb.CompleteRequest(
                route=pb.RouteRequest(prompt="hello"), generation=pb.GenerationOptions()
            ),
            timeout=60,
        )
        first = next(stream)
        assert first.HasField("decision")
        # Rotate: the same paths now hold a certificate from another CA.
        other_ca.issue("modelrouter").write(tmp_path, "server")
        process.signal(signal.SIGHUP)
        process.wait_for("certificates reloaded")
        # The open connection carries on: the stream ends normally, a new call on it works.
        events = list(stream)
        assert events[-1].HasField("summary")
        stub.Route(pb.RouteRequest(prompt="still here"), timeout=CALL_TIMEOUT_S)
        # A new connection is handed the new certificate.
        with grpc.secure_channel(target, _credentials(ca)) as fresh_old_trust:
            with pytest.raises(grpc.RpcError) as refused:
                router_stub(fresh_old_trust).Route(
                    pb.RouteRequest(prompt="hello"), timeout=CALL_TIMEOUT_S
                )
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        _wait_for_route(target, other_ca)


def _https_get(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S, context=context) as response:
        return int(response.status), response.read().decode()


@pytest.mark.slow
def test_metrics_port_speaks_https_apart_from_the_grpc_port(
    tmp_path: Path,
    model_path: Path,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    serve_process: Callable[..., ServeProcess],
) -> None:
    cert, key = ca.issue("modelrouter-metrics").write(tmp_path, "metrics")
    config = write_config(
        tmp_path / "router.yaml",
        model_path,
        server={"metrics_tls": {"cert": str(cert), "key": str(key)}, "metrics_host": "127.0.0.1"},
    )
    process = serve_process(*serve_args(config, 2, "--metrics-port", str(free_port())))
    metrics_port = process.wait_for("metrics exporter started")[0]["metrics_port"]
    assert process.port  # listening
    trusted = ssl.create_default_context(cadata=ca.cert_pem.decode())
    status, text = _https_get(f"https://127.0.0.1:{metrics_port}/metrics", trusted)
    assert status == 200
    assert "grpc_server_started_total" in text or "modelrouter_" in text
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _https_get(f"http://127.0.0.1:{metrics_port}/metrics", None)
    untrusting = ssl.create_default_context()
    with pytest.raises(urllib.error.URLError):
        _https_get(f"https://127.0.0.1:{metrics_port}/metrics", untrusting)
    # The exporter survived the failed handshakes.
    assert _https_get(f"https://127.0.0.1:{metrics_port}/metrics", trusted)[0] == 200
    # SIGHUP re-reads the metrics port's certificates too.
    other_ca.issue("modelrouter-metrics").write(tmp_path, "metrics")
    process.signal(signal.SIGHUP)
    process.wait_for("metrics certificates reloaded")
    now_trusted = ssl.create_default_context(cadata=other_ca.cert_pem.decode())
    assert _https_get(f"https://127.0.0.1:{metrics_port}/metrics", now_trusted)[0] == 200
    # An exporter restarted after the reload serves the new certificates as well.
    [exporter] = process.events("metrics exporter started")
    os.kill(exporter["exporter_pid"], signal.SIGKILL)
    process.wait_for("metrics exporter started", count=2)
    assert _https_get(f"https://127.0.0.1:{metrics_port}/metrics", now_trusted)[0] == 200


def test_config_check_says_how_the_port_and_the_tenants_are_guarded(
    tmp_path: Path, model_path: Path, ca: CertificateAuthority
) -> None:
    path = write_config(
        tmp_path / "router.yaml",
        model_path,
        server={"tls": _tls_section(tmp_path, ca, mutual=True)},
        auth={"enabled": True, "keys": [{"sha256": "a" * 64, "tenant": "t", "methods": ["Route"]}]},
        tenants={"t": {"limits": {"requests_per_s": 5}}},
    )
    result = subprocess.run(
        [sys.executable, "-m", "router.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "; mutual TLS, 1 API key(s), limits for 1 tenant(s), counted per worker; store " in (
        result.stdout
    )

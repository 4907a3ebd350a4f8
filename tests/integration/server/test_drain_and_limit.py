"""The real `modelrouter serve`: the drain delay on SIGTERM, one in-flight limit for all workers."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from tests.integration.server.support import (
    SERVICE,
    ServeProcess,
    router_stub,
    slow_demo,
    write_config,
)

Start = Callable[..., ServeProcess]
# Own connection per channel (gRPC otherwise shares one per target), so that SO_REUSEPORT
# can hand each channel to a different worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@contextmanager
def channel_to(port: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        yield channel


def _start(start: Start, config: Path, workers: int) -> tuple[ServeProcess, int]:
    server = start(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)
    )
    listening = server.wait_for("listening", count=workers)
    return server, int(listening[0]["port"])


def _complete(channel: grpc.Channel) -> Any:
    return router_stub(channel).Complete(pb.CompleteRequest(route=pb.RouteRequest(prompt="hi")))


def test_sigterm_turns_health_not_serving_and_serves_on_for_the_drain_delay(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    # About 34 tokens at 4 per second: a stream outlasts the drain and ends in the grace.
    config = write_config(
        tmp_path / "c.yaml",
        model_path,
        backends=slow_demo(4),
        # Long enough for the checks below on a loaded machine.
        server={"drain_delay_s": 6, "grace_period_s": 10},
    )
    server, port = _start(serve_process, config, workers=2)
    with channel_to(port) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        assert next(watch).status == SERVING
        before = _complete(channel)
        assert next(before).WhichOneof("event") == "decision"

        server.signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        # The drain: health says NOT_SERVING on new connections too, and RPCs still succeed.
        with ExitStack() as stack:
            fresh = [stack.enter_context(channel_to(port)) for _ in range(4)]
            for other in fresh:
                check = health_pb2_grpc.HealthStub(other).Check(
                    health_pb2.HealthCheckRequest(service=SERVICE), timeout=5
                )
                assert check.status == NOT_SERVING
                assert router_stub(other).Route(pb.RouteRequest(prompt="hi"), timeout=5).decision
            during = _complete(fresh[0])
            assert next(during).WhichOneof("event") == "decision"
            draining = server.wait_for("draining", count=2)
            assert {line["drain_s"] for line in draining} == {6}
            assert not server.events("stopping")  # still draining: every RPC above was served

            # Then new RPCs are refused, and the streams in flight run to their end.
            server.wait_for("stopping", count=2)
            with pytest.raises(grpc.RpcError) as refused, channel_to(port) as late:
                router_stub(late).Route(pb.RouteRequest(prompt="hi"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            for stream in (before, during):
                rest = [event.WhichOneof("event") for event in stream]
                assert rest[-1] == "summary" and stream.code() == grpc.StatusCode.OK
    assert server.wait() == 0
    [stopping] = server.events("stopping workers")
    assert (stopping["drain_s"], stopping["grace_s"]) == (6, 10)


def test_sigint_skips_the_drain_delay(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml", model_path, server={"drain_delay_s": 60})
    server, port = _start(serve_process, config, workers=1)
    with channel_to(port) as channel:
        assert router_stub(channel).Route(pb.RouteRequest(prompt="hi"), timeout=5).decision
    sent = time.monotonic()
    server.signal(signal.SIGINT)
    assert server.wait(30) == 0
    assert time.monotonic() - sent < 30  # not the 60 s drain
    assert not server.events("draining")


def _admit(port: int, channels: int) -> tuple[list[Any], list[str], ExitStack]:
    """Start a Complete on each of ``channels`` connections; return the streams admitted,
    the messages of those refused, and the stack that closes the channels."""
    stack = ExitStack()
    admitted: list[Any] = []
    refused: list[str] = []
    for _ in range(channels):
        stream = _complete(stack.enter_context(channel_to(port)))
        try:
            assert next(stream).WhichOneof("event") == "decision"
            admitted.append(stream)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            refused.append(exc.details() or "")
    return admitted, refused, stack


def test_max_concurrent_rpcs_holds_for_all_workers_together(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml", model_path, backends=slow_demo(5), server={"max_concurrent_rpcs": 2}
    )
    server, port = _start(serve_process, config, workers=2)
    workers = {line["pid"] for line in server.events("listening")}
    with channel_to(port) as channel:
        info = router_stub(channel).GetConfig(pb.GetConfigRequest(), timeout=10)
    assert (info.max_concurrent_rpcs, info.workers) == (2, 2)

    admitted, refused, stack = _admit(port, 12)
    with stack:
        # 2 in all, not 2 per worker (4).
        assert len(admitted) == 2 and len(refused) == 10
        assert set(refused) == {
            "2 RPCs in flight, the limit is 2 (server.max_concurrent_rpcs): retry with backoff"
        }
        # Both workers were asked (else the test proves nothing about a per-worker count).
        lines = server.wait_for("rpc", count=10, where=lambda line: line["method"] == "Complete")
        assert {line["pid"] for line in lines} == workers

        # Workers killed with RPCs in flight: their counts die with them.
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        server.wait_for("listening", count=4)
        for stream in admitted:
            with pytest.raises(grpc.RpcError):
                for _ in stream:
                    pass
    admitted, refused, stack = _admit(port, 12)
    with stack:
        assert len(admitted) == 2 and len(refused) == 10
        for stream in admitted:
            stream.cancel()
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_health_port_serves_health_alone_and_drains_with_the_server(
    serve_process: Start, tmp_path: Path, model_path: Path
) -> None:
    health_port = _free_port()
    config = write_config(
        tmp_path / "c.yaml", model_path, server={"health_port": health_port, "drain_delay_s": 5}
    )
    server, _ = _start(serve_process, config, workers=2)
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    with channel_to(health_port) as channel:
        assert health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status == SERVING
        with pytest.raises(grpc.RpcError) as other:
            router_stub(channel).Route(pb.RouteRequest(prompt="hi"), timeout=5)
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
        server.signal(signal.SIGTERM)
        server.wait_for("draining", count=2)
        with channel_to(health_port) as fresh:
            check = health_pb2_grpc.HealthStub(fresh).Check(request, timeout=5)
        assert check.status == NOT_SERVING
    assert server.wait() == 0

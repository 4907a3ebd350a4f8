"""The real `modelrouter serve`: one in-flight limit for all workers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from router._proto.modelrouter.v1 import router_pb2 as pb
from tests.integration.server.support import (
    ServeProcess,
    router_stub,
    slow_demo,
    write_config,
)

Start = Callable[..., ServeProcess]
# Own connection per channel (gRPC otherwise shares one per target), so that SO_REUSEPORT
# can hand each channel to a different worker.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


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
            refused.append(exc.details())
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

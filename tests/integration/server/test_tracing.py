"""OpenTelemetry traces: spans reach an OTLP receiver and continue the caller's trace.

The receiver is opentelemetry-proto's TraceService, started in the test. The Go client's
example sends a W3C traceparent; the spans' trace id must be that one, and the attempt
spans must match the Complete summary the client received.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
import yaml

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.config import DEFAULT_CONFIG_YAML
from tests.integration.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.server.support import SERVICE, ServeProcess, router_stub, write_config
from tests.support import REPO

Start = Callable[..., ServeProcess]
ESCALATED_PROMPT = "How do I reset my password?"


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def traced_config(path: Path, model: Path, endpoint: str) -> Path:
    """Write a configuration with tracing on; its cheap tier's backend refuses connections."""
    tiers: list[dict[str, Any]] = yaml.safe_load(DEFAULT_CONFIG_YAML)["tiers"]
    tiers[0]["backend"] = "down"
    backends = {
        "down": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"},
        "demo": {"kind": "demo"},
    }
    return write_config(
        path,
        model,
        tiers=tiers,
        backends=backends,
        tracing={"otlp_endpoint": endpoint, "service_name": "router-under-test"},
    )


def traceparent() -> tuple[str, str, str]:
    """Return a fresh sampled traceparent, its trace id and its parent span id."""
    trace_id, parent = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{parent}-01", trace_id, parent


def serve_traced(serve_process: Start, config: Path) -> ServeProcess:
    return serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )


def stop(server: ServeProcess) -> None:
    """Stop the server: a stopping worker sends the spans it still holds."""
    server.signal(signal.SIGTERM)
    assert server.wait() == 0


def in_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.trace_id == trace_id]


def check_complete_trace(
    spans: list[ReceivedSpan], trace_id: str, parent: str, summary: dict[str, Any]
) -> None:
    """Check a Complete's spans against the summary its caller received (protojson names)."""
    [rpc] = [s for s in spans if s.name == f"{SERVICE}/Complete"]
    assert rpc.kind == "SPAN_KIND_SERVER" and rpc.parent_span_id == parent
    assert rpc.service_name == "router-under-test"
    assert rpc.attributes["rpc.grpc.status_code"] == 0
    assert rpc.attributes["modelrouter.tier"] == "cheap"
    attempts = sorted(
        (s for s in spans if s.parent_span_id == rpc.span_id),
        key=lambda s: s.attributes["modelrouter.attempt"],
    )
    assert len(attempts) == len(summary["attempts"]) == 2
    for span, attempt in zip(attempts, summary["attempts"], strict=True):
        a = span.attributes
        assert span.name == f"attempt {attempt['tier']}"
        assert a["modelrouter.tier"] == attempt["tier"]
        assert a["modelrouter.backend"] == attempt["backend"]
        assert a["gen_ai.request.model"] == attempt["model"]
        outcome = attempt["outcome"].removeprefix("ATTEMPT_OUTCOME_").lower()
        assert a["modelrouter.outcome"] == outcome
        assert a["gen_ai.usage.input_tokens"] == attempt.get("promptTokens", 0)
        assert a["gen_ai.usage.output_tokens"] == attempt.get("completionTokens", 0)
        assert a["modelrouter.cost_usd"] == pytest.approx(attempt.get("costUsd", 0.0))
        assert a.get("modelrouter.time_to_first_token_ms", 0.0) == pytest.approx(
            attempt.get("firstTokenMs", 0.0)
        )
        assert span.status == ("STATUS_CODE_UNSET" if outcome == "ok" else "STATUS_CODE_ERROR")
    cheap, strong = attempts
    assert cheap.attributes["gen_ai.provider.name"] == "openai"
    assert strong.attributes["gen_ai.provider.name"] == "demo"
    # The upstream HTTP call of the cheap tier: a CLIENT span under its attempt.
    [http] = [s for s in spans if s.parent_span_id == cheap.span_id]
    assert http.kind == "SPAN_KIND_CLIENT" and http.name == "POST"
    assert http.attributes["url.full"] == "http://127.0.0.1:9/v1/chat/completions"
    assert http.attributes["server.port"] == 9 and http.status == "STATUS_CODE_ERROR"
    assert all(s.trace_id == trace_id for s in (rpc, *attempts, http))


def test_spans_continue_the_callers_trace_and_the_log_line_names_them(
    serve_process: Start, otlp: OtlpReceiver, tmp_path: Path, model_path: Path
) -> None:
    server = serve_traced(
        serve_process, traced_config(tmp_path / "c.yaml", model_path, otlp.endpoint)
    )
    port = server.port
    route_parent, route_trace, route_parent_id = traceparent()
    complete_parent, complete_trace, complete_parent_id = traceparent()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = router_stub(channel)
        decision = stub.Route(
            pb.RouteRequest(prompt="hi", request_id="traced-1"),
            metadata=(("traceparent", route_parent),),
            timeout=10,
        ).decision
        request = pb.CompleteRequest(
            route=pb.RouteRequest(prompt=ESCALATED_PROMPT, hints={"tier": "cheap"})
        )
        events = list(
            stub.Complete(request, metadata=(("traceparent", complete_parent),), timeout=30)
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Route(pb.RouteRequest(prompt=""), timeout=10)  # no traceparent: a new trace
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    stop(server)
    spans = otlp.receiver.wait_for(6)  # Route, Complete, 2 attempts, 1 HTTP call, bad Route

    [route] = in_trace(spans, route_trace)
    assert route.name == f"{SERVICE}/Route" and route.parent_span_id == route_parent_id
    assert route.attributes["modelrouter.tier"] == decision.tier
    assert route.attributes["modelrouter.score"] == pytest.approx(decision.score)
    assert route.attributes["modelrouter.model_version"] == decision.model_version
    assert route.attributes["modelrouter.decision_micros"] == pytest.approx(
        decision.decision_micros
    )
    assert route.attributes["modelrouter.request_id"] == "traced-1"

    [summary] = [e.summary for e in events if e.WhichOneof("event") == "summary"]
    from google.protobuf import json_format

    check_complete_trace(
        in_trace(spans, complete_trace),
        complete_trace,
        complete_parent_id,
        json_format.MessageToDict(summary),
    )

    [bad] = [s for s in spans if s.trace_id not in (route_trace, complete_trace)]
    assert bad.parent_span_id == "" and bad.attributes["rpc.grpc.status_code"] == 3
    assert bad.status == "STATUS_CODE_UNSET"  # a bad request is not the server's error

    # The per-RPC log line carries the ids of its span.
    lines = {line["method"] + line["status"]: line for line in server.events("rpc")}
    assert (
        lines["RouteOK"]["trace_id"] == route_trace and lines["RouteOK"]["span_id"] == route.span_id
    )
    assert lines["CompleteOK"]["trace_id"] == complete_trace
    assert lines["RouteINVALID_ARGUMENT"]["trace_id"] == bad.trace_id


def go_example(tmp_path: Path) -> Path:
    """Build the Go client's example command (generating the Go code first)."""
    if shutil.which("go") is None:
        if os.environ.get("MODELROUTER_REQUIRE_GO"):
            pytest.fail("go is not installed; the Go client's tracing test needs it")
        pytest.skip("go is not installed")
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent)}
    subprocess.run(
        [REPO / "clients/go/generate.sh"], check=True, env=env, capture_output=True, timeout=600
    )
    binary = tmp_path / "modelrouter-example"
    subprocess.run(
        ["go", "build", "-o", str(binary), "./cmd/modelrouter-example"],
        cwd=REPO / "clients/go",
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


@pytest.mark.slow
def test_the_go_clients_traceparent_is_the_trace_of_every_span(
    serve_process: Start, otlp: OtlpReceiver, tmp_path: Path, model_path: Path
) -> None:
    example = go_example(tmp_path)
    server = serve_traced(
        serve_process, traced_config(tmp_path / "c.yaml", model_path, otlp.endpoint)
    )
    sent, trace_id, parent = traceparent()
    result = subprocess.run(
        [
            str(example), "-addr", f"127.0.0.1:{server.port}", "-traceparent", sent,
            "-complete", "-tier", "cheap", "-max-tokens", "16", "-summary-json", ESCALATED_PROMPT,
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "escalated cheap -> strong" in result.stdout
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    stop(server)
    spans = otlp.receiver.wait_for(4)
    assert {span.trace_id for span in spans} == {trace_id}
    check_complete_trace(spans, trace_id, parent, summary)


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from router.cli import main\n"
        "from router.config import default_config\n"
        "from router.server.app import create_server\n"
        "import router.server.process, router.completion.engine, router.backends.openai\n"
        "create_server(default_config(), host='127.0.0.1', port=0, reuse_port=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_sample_ratio_leaves_new_traces_out_but_continues_a_callers(
    otlp: OtlpReceiver,
    start_server: Callable[..., Any],
    make_config: Callable[..., Any],
) -> None:
    from router.config import TracingConfig
    from router.telemetry import install_tracing
    from router.telemetry.tracing import Tracing

    tracing = Tracing(TracingConfig(otlp_endpoint=otlp.endpoint, sample_ratio=0.0))
    install_tracing(tracing)
    try:
        server = await start_server(make_config())
        sent, trace_id, _ = traceparent()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = router_stub(channel)
            with structlog.testing.capture_logs() as logs:
                await stub.Route(pb.RouteRequest(prompt="left out"))
                request = pb.CompleteRequest(route=pb.RouteRequest(prompt="left out"))
                assert [event async for event in stub.Complete(request)]
                await stub.Route(
                    pb.RouteRequest(prompt="traced"), metadata=(("traceparent", sent),)
                )
    finally:
        install_tracing(None)
        tracing.shutdown()
    # Only the caller's trace: no span for the others, not even an attempt span.
    assert {(s.name, s.trace_id) for s in otlp.receiver.spans} == {(f"{SERVICE}/Route", trace_id)}
    lines = [line for line in logs if line["event"] == "rpc"]
    assert [line.get("trace_id") for line in lines] == [None, None, trace_id]

"""Probe a running ``modelrouter serve`` over gRPC, as a client of an installed package would.

Run by ``scripts/ci_install.sh`` with the interpreter of the install under test, from outside
the source tree, so that it uses that install's generated gRPC code:

    python tests/install_probe.py HOST:PORT [--pid PID] [--wait S] [--rpcs route,complete,...]

It waits until the health service reports SERVING (failing early if process PID exits), then
makes each RPC asked for and checks its answer; it prints one line per RPC and exits 1 with
the reason on the first failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc

SERVICE = "modelrouter.v1.ModelRouter"
RPCS = ("route", "complete", "feedback", "config")
TIMEOUT_S = 30.0


class ProbeFailed(Exception):
    """The server did not answer as documented."""


def check(condition: bool, message: str) -> None:
    """Raise ProbeFailed with the message unless the condition holds."""
    if not condition:
        raise ProbeFailed(message)


def alive(pid: int | None) -> bool:
    """Return whether the process is still running (always true without a pid)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_serving(channel: grpc.Channel, pid: int | None, wait_s: float) -> None:
    """Wait until the health service reports the router SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + wait_s
    last = "no answer"
    while time.monotonic() < deadline:
        check(alive(pid), f"the server (pid {pid}) exited before serving")
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2.0)
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        else:
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                print("health: SERVING")
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        time.sleep(0.5)
    raise ProbeFailed(f"not SERVING after {wait_s:g} s (last: {last})")


def probe_route(stub: router_pb2_grpc.ModelRouterStub) -> str:
    """Route a simple and a hard query; return the simple one's request id."""
    easy = stub.Route(pb.RouteRequest(prompt="What are your business hours?"), timeout=TIMEOUT_S)
    hard = stub.Route(
        pb.RouteRequest(prompt="Review this contract clause for compliance issues"),
        timeout=TIMEOUT_S,
    )
    for reply in (easy, hard):
        decision = reply.decision
        check(bool(decision.tier and decision.model_version), f"Route: incomplete {decision}")
        check(0.0 <= decision.score <= 1.0, f"Route: score {decision.score} not in [0, 1]")
    check(
        easy.decision.tier_index < hard.decision.tier_index,
        f"Route: the hard query went to {hard.decision.tier}, the simple one to "
        f"{easy.decision.tier}",
    )
    print(
        f"Route: {easy.decision.tier} ({easy.decision.score:.3f}) and {hard.decision.tier} "
        f"({hard.decision.score:.3f}), model {easy.decision.model_version}"
    )
    return easy.decision.request_id


def probe_complete(stub: router_pb2_grpc.ModelRouterStub) -> None:
    """Stream a completion: the decision first, text, then the summary."""
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt="What are your business hours?"))
    events = list(stub.Complete(request, timeout=TIMEOUT_S))
    kinds = [event.WhichOneof("event") for event in events]
    check(kinds[:1] == ["decision"] and kinds[-1:] == ["summary"], f"Complete: events {kinds}")
    text = "".join(event.delta.text for event in events if event.HasField("delta"))
    summary = events[-1].summary
    check(bool(text.strip()), "Complete: no text")
    check(summary.delivered_chars == len(text), "Complete: delivered_chars is not the text's")
    outcomes = [pb.AttemptOutcome.Name(a.outcome) for a in summary.attempts]
    check(outcomes[-1:] == ["ATTEMPT_OUTCOME_OK"], f"Complete: attempts {outcomes}")
    print(f"Complete: {len(text)} characters from {summary.tier} ({summary.model})")


def probe_feedback(stub: router_pb2_grpc.ModelRouterStub, request_id: str) -> None:
    """Rate the answer to a request the server has seen."""
    reply = stub.Feedback(pb.FeedbackRequest(request_id=request_id, rating=1.0), timeout=TIMEOUT_S)
    check(reply.known_request, f"Feedback: request {request_id} unknown to the server")
    print("Feedback: known request")


def probe_config(stub: router_pb2_grpc.ModelRouterStub) -> None:
    """Read the tiers the server routes to."""
    reply = stub.GetConfig(pb.GetConfigRequest(), timeout=TIMEOUT_S)
    check(len(reply.tiers) >= 2 and bool(reply.model_version), f"GetConfig: {reply}")
    print(f"GetConfig: tiers {', '.join(t.name for t in reply.tiers)}")


def main() -> int:
    """Probe the server; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="HOST:PORT of the server")
    parser.add_argument("--pid", type=int, help="fail early when this process exits")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for SERVING")
    parser.add_argument(
        "--rpcs", default=",".join(RPCS), help="comma-separated: " + ", ".join(RPCS)
    )
    args = parser.parse_args()
    rpcs = args.rpcs.split(",") if args.rpcs else []
    unknown = set(rpcs) - set(RPCS)
    if unknown:
        parser.error(f"unknown RPCs: {', '.join(sorted(unknown))}")
    with grpc.insecure_channel(args.address) as channel:
        stub = router_pb2_grpc.ModelRouterStub(channel)  # type: ignore[no-untyped-call]
        try:
            wait_serving(channel, args.pid, args.wait)
            request_id = probe_route(stub) if "route" in rpcs else ""
            if "complete" in rpcs:
                probe_complete(stub)
            if "feedback" in rpcs:
                probe_feedback(stub, request_id or probe_route(stub))
            if "config" in rpcs:
                probe_config(stub)
        except (ProbeFailed, grpc.RpcError) as exc:
            print(f"install_probe: {args.address}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

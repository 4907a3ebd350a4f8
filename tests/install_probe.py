"""Probe a running ``modelrouter serve`` over gRPC, as a client of an installed package would.

Run by ``scripts/ci_install.sh`` with the interpreter of the install under test, from outside
the source tree, so that it uses that install's generated gRPC code:

    python tests/install_probe.py HOST:PORT [--pid PID] [--wait S] [--rpcs route,complete,...]

It waits until the health service reports SERVING (failing early if process PID exits), then
makes each RPC asked for and checks its answer; it prints one line per RPC and exits 1 with
the reason on the first failure. Its requests carry a tenant of their own, so that GetStats
(``stats``, last) can check that the server's store counted exactly them, even in a store
other runs share: the embedded default configuration keeps one (SQLite, in the per-user
state directory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc

SERVICE = "modelrouter.v1.ModelRouter"
RPCS = ("route", "complete", "feedback", "config", "batch", "stats")
TIMEOUT_S = 30.0
# The store writes in batches, every store.flush_interval_s (0.5 s by default).
STATS_WAIT_S = 30.0
EASY = "What are your business hours?"
HARD = "Review this contract clause for compliance issues"


@dataclass
class Sent:
    """What the probe sent, under its own tenant: what GetStats must count."""

    tenant: str
    requests: int = 0  # requests decided (Route, each good RouteBatch item, Complete)
    completions: int = 0
    rated: int = 0


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


def probe_route(stub: router_pb2_grpc.ModelRouterStub, sent: Sent) -> str:
    """Route a simple and a hard query; return the simple one's request id."""
    easy = stub.Route(pb.RouteRequest(prompt=EASY, tenant=sent.tenant), timeout=TIMEOUT_S)
    hard = stub.Route(pb.RouteRequest(prompt=HARD, tenant=sent.tenant), timeout=TIMEOUT_S)
    sent.requests += 2
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
    request_id: str = easy.decision.request_id
    return request_id


def probe_complete(stub: router_pb2_grpc.ModelRouterStub, sent: Sent) -> None:
    """Stream a completion: the decision first, text, then the summary."""
    request = pb.CompleteRequest(route=pb.RouteRequest(prompt=EASY, tenant=sent.tenant))
    events = list(stub.Complete(request, timeout=TIMEOUT_S))
    sent.requests += 1
    sent.completions += 1
    kinds = [event.WhichOneof("event") for event in events]
    check(kinds[:1] == ["decision"] and kinds[-1:] == ["summary"], f"Complete: events {kinds}")
    text = "".join(event.delta.text for event in events if event.HasField("delta"))
    summary = events[-1].summary
    check(bool(text.strip()), "Complete: no text")
    check(summary.delivered_chars == len(text), "Complete: delivered_chars is not the text's")
    outcomes = [pb.AttemptOutcome.Name(a.outcome) for a in summary.attempts]
    check(outcomes[-1:] == ["ATTEMPT_OUTCOME_OK"], f"Complete: attempts {outcomes}")
    print(f"Complete: {len(text)} characters from {summary.tier} ({summary.model})")


def probe_feedback(stub: router_pb2_grpc.ModelRouterStub, request_id: str, sent: Sent) -> None:
    """Rate the answer to a request the server has seen."""
    feedback = pb.FeedbackRequest(request_id=request_id, rating=1.0, tenant=sent.tenant)
    reply = stub.Feedback(feedback, timeout=TIMEOUT_S)
    check(reply.known_request, f"Feedback: request {request_id} unknown to the server")
    sent.rated += 1
    print("Feedback: known request")


def probe_config(stub: router_pb2_grpc.ModelRouterStub) -> None:
    """Read the tiers the server routes to."""
    reply = stub.GetConfig(pb.GetConfigRequest(), timeout=TIMEOUT_S)
    check(len(reply.tiers) >= 2 and bool(reply.model_version), f"GetConfig: {reply}")
    print(f"GetConfig: tiers {', '.join(t.name for t in reply.tiers)}")


def probe_batch(stub: router_pb2_grpc.ModelRouterStub, sent: Sent) -> None:
    """Route a batch: a decision per good item, in order, and an error for the bad one."""
    ids = [f"{sent.tenant}-batch-{i}" for i in range(3)]
    prompts = [EASY, " ", HARD]  # the middle one is blank: INVALID_ARGUMENT, for it alone
    reply = stub.RouteBatch(
        pb.RouteBatchRequest(
            requests=[
                pb.RouteRequest(prompt=p, request_id=i, tenant=sent.tenant)
                for p, i in zip(prompts, ids, strict=True)
            ]
        ),
        timeout=TIMEOUT_S,
    )
    kinds = [result.WhichOneof("result") for result in reply.results]
    check(kinds == ["decision", "error", "decision"], f"RouteBatch: results {kinds}")
    easy, error, hard = reply.results
    check(
        [easy.decision.request_id, error.error.request_id, hard.decision.request_id] == ids,
        f"RouteBatch: out of order: {reply}",
    )
    check(
        error.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        and error.error.message.startswith("prompt: empty"),
        f"RouteBatch: the blank item's error is {error.error}",
    )
    check(
        easy.decision.tier_index < hard.decision.tier_index,
        f"RouteBatch: the hard query went to {hard.decision.tier}, the simple one to "
        f"{easy.decision.tier}",
    )
    sent.requests += 2
    print(
        f"RouteBatch: {easy.decision.tier}, error {error.error.code} "
        f"({error.error.message!r}), {hard.decision.tier}"
    )


def probe_stats(stub: router_pb2_grpc.ModelRouterStub, sent: Sent) -> None:
    """Wait until the store's tiers table counts what the probe sent, under its tenant."""
    request = pb.GetStatsRequest(tenant=sent.tenant)
    want = (sent.requests, sent.completions, sent.rated)
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        try:
            reply = stub.GetStats(request, timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # The embedded default configuration has a store: an install without one is wrong.
            raise ProbeFailed(f"GetStats: {exc.details()}") from None
        total = reply.total
        got = (total.requests, total.completions, total.rated)
        by_tier = sum(t.requests for t in reply.tiers), sum(t.rated for t in reply.tiers)
        if got == want and by_tier == (total.requests, total.rated):
            break
        check(
            time.monotonic() < deadline,
            f"GetStats: the store ({reply.store.kind} {reply.store.location}) counts "
            f"requests, completions, rated = {got} (tiers: {by_tier}) for tenant "
            f"{sent.tenant}, not the {want} sent, after {STATS_WAIT_S:g} s",
        )
        time.sleep(0.5)
    check(
        sent.rated == 0 or total.satisfaction == 1.0,
        f"GetStats: satisfaction {total.satisfaction} after ratings of 1.0",
    )
    tiers = ", ".join(f"{t.tier} {t.requests}" for t in reply.tiers)
    print(
        f"GetStats: {total.requests} requests ({tiers}), {total.completions} completed, "
        f"{total.rated} rated, in {reply.store.kind} {reply.store.location}"
    )


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
        sent = Sent(tenant=f"install-probe-{uuid.uuid4().hex[:12]}")
        try:
            wait_serving(channel, args.pid, args.wait)
            request_id = probe_route(stub, sent) if "route" in rpcs else ""
            if "complete" in rpcs:
                probe_complete(stub, sent)
            if "feedback" in rpcs:
                probe_feedback(stub, request_id or probe_route(stub, sent), sent)
            if "config" in rpcs:
                probe_config(stub)
            if "batch" in rpcs:
                probe_batch(stub, sent)
            if "stats" in rpcs:
                probe_stats(stub, sent)
        except (ProbeFailed, grpc.RpcError) as exc:
            print(f"install_probe: {args.address}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

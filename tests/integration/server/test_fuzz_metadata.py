"""Request metadata at volume: headers drawn by hypothesis on Route, RouteBatch and Complete.

``test_fuzz.py`` varies the request bodies; this test varies the gRPC metadata (headers)
of valid requests, at two live ``modelrouter serve --workers 2``: one open (auth off), one
with API keys and tracing on, so that every header the service reads is parsed
(``authorization``, ``traceparent``, ``tracestate``). The headers are those, ones callers
often send that the service ignores (``x-request-id``, ``x-api-key``, ``x-tenant``) and
random names, each with a random value (empty, padded, very long, random text, a scheme in
odd casing), repeated, or as ``-bin`` headers holding any bytes (non-ASCII text among them).

Each call must end with a status its headers allow (auth off: OK; auth on: OK,
UNAUTHENTICATED or PERMISSION_DENIED as the ``authorization`` headers decide), an error
with a message, exactly one request id (a trailer, or Complete's header) that is the
decision's, never INTERNAL, UNKNOWN or a hang; the workers stay up and SERVING.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from router._proto.modelrouter.v1 import router_pb2 as pb
from router.auth import digest
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.server.support import SERVICE, ServeProcess, router_stub, write_config

pytestmark = pytest.mark.slow

Start = Callable[..., ServeProcess]
Metadata = tuple[tuple[str, str | bytes], ...]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CHANNELS_PER_SERVER = 4
BATCH = 8
BATCHES = 220
HEALTH_EVERY = 40
CALL_TIMEOUT_S = 20.0
REQUEST_ID = "x-request-id"

# The keyed server's keys: one may call every fuzzed method, one Route alone.
KEYS = {
    "acme": ("mrk_fuzz-acme-key", ("Route", "RouteBatch", "Complete")),
    "globex": ("mrk_fuzz-globex-key", ("Route",)),
}
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Metadata over gRPC's limit (8 KiB soft, refused at random up to a hard 16 KiB) is refused
# by gRPC itself before the service sees the call, hence without the request id trailer.
TRANSPORT_LIMIT = "received metadata size exceeds"
METADATA_SOFT_LIMIT_BYTES = 8192
# gRPC's own headers (:path, te, content-type, user-agent...) and each entry's 32 bytes of
# overhead count towards the limit too: a margin so that a call below it must be served.
METADATA_MARGIN_BYTES = 1024

# -- strategies ---------------------------------------------------------------------------
#
# Only headers gRPC's own client sends are drawn (grpc core's validate_metadata): a key of
# lowercase letters, digits, "-", "_" and "."; a text value of printable ASCII; any bytes
# under a key ending in "-bin" (base64 on the wire). The client refuses anything else
# itself, before sending, with INTERNAL "Invalid metadata" (an uppercase or empty key; a
# value with a control character or non-ASCII text, which gRPC carries in -bin headers
# only): not a server case, and filtered here so that an INTERNAL always means the server.
# Keys starting with "grpc-" are gRPC's own (timeouts, encodings) and left out too.

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
SHORT_TEXT = st.text(PRINTABLE, max_size=40)
NON_ASCII = st.text(st.characters(min_codepoint=0x80, exclude_categories=("Cs", "Cc")), max_size=20)
# Beyond 8 KiB gRPC may refuse the call: those stay a minority.
LONG_SIZES = st.sampled_from([255, 512, 513, 1000, 4096, 4096, 9000, 20_000])
FILL = st.sampled_from(["a", " ", "=", "%"])
READ = ("authorization", "traceparent", "tracestate")
IGNORED = ("x-request-id", "x-api-key", "x-tenant", "tenant", "request-id", "user-agent")
RANDOM_NAMES = st.from_regex(r"[a-z0-9_.-]{1,40}", fullmatch=True).filter(
    lambda name: not name.startswith("grpc-")
)
NAMES = st.sampled_from(READ + READ + IGNORED) | RANDOM_NAMES
SCHEMES = st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"])
TENANTS = st.sampled_from(["", "", "acme", "globex", "other"])
PROMPTS = st.sampled_from(
    ["hi", "What are your business hours?", "Prove that sqrt(2) is irrational"]
)
BODY_IDS = st.sampled_from(["", "", "req-fuzz-1", "caller.id_2"])
HEX = "0123456789abcdef"


@dataclass(frozen=True)
class Header:
    """One metadata entry; ``grants`` is who an ``authorization`` value may authenticate."""

    name: str
    value: str | bytes
    # "acme"/"globex": the key's tenant, surely; "acme?": maybe (a padded key); "": nobody.
    grants: str = ""

    def __repr__(self) -> str:
        value = self.value
        shown = value if len(value) <= 60 else value[:60]
        more = f"...({len(value)})" if len(value) > 60 else ""
        return f"{self.name}={shown!r}{more}" + (f"[{self.grants}]" if self.grants else "")


def not_a_key(text: str) -> str:
    """Return random text with no key of ours in it, so that it authenticates nobody."""
    return text.replace("mrk_fuzz", "mrk-fuzz")


@st.composite
def authorization(draw: st.DrawFn) -> Header:
    """Return an authorization value: a good key, a padded one, an unknown key or junk."""
    kind = draw(
        st.sampled_from(["key", "key", "key", "padded", "unknown", "no scheme", "junk", "long"])
    )
    tenant = draw(st.sampled_from(sorted(KEYS)))
    key = KEYS[tenant][0]
    # HTTP authentication schemes are case-insensitive (RFC 9110 section 11.1).
    scheme = draw(SCHEMES)
    if kind == "key":
        return Header("authorization", f"{scheme} {key}", tenant)
    if kind == "padded":
        pad = draw(st.sampled_from([" ", "  "]))
        return Header(
            "authorization", f"{scheme}{pad}{key}{draw(st.sampled_from(['', ' ']))}", tenant + "?"
        )
    if kind == "unknown":
        return Header("authorization", f"{scheme} {not_a_key(draw(SHORT_TEXT))}")
    if kind == "no scheme":
        return Header(
            "authorization", draw(st.sampled_from([key, f"{scheme}{key}", f"Basic {key}"]))
        )
    if kind == "long":
        return Header("authorization", f"{scheme} {key}" + "x" * draw(LONG_SIZES))
    return Header("authorization", not_a_key(draw(SHORT_TEXT)))


@st.composite
def traceparent(draw: st.DrawFn) -> str:
    """Return a W3C traceparent: valid, with a field broken, or junk."""
    trace_id = draw(st.text(st.sampled_from(HEX), min_size=32, max_size=32))
    parent = draw(st.text(st.sampled_from(HEX), min_size=16, max_size=16))
    flags = draw(st.sampled_from(["01", "00", "ff", "0g"]))
    kind = draw(st.sampled_from(["valid", "valid", "zeros", "upper", "version", "extra", "short"]))
    if kind == "zeros":
        trace_id = "0" * 32
    elif kind == "upper":
        trace_id = trace_id.upper()
    elif kind == "short":
        trace_id = trace_id[: draw(st.integers(0, 31))]
    version = "ff" if kind == "version" else "00"
    extra = f"-{draw(SHORT_TEXT)}" if kind == "extra" else ""
    return f"{version}-{trace_id}-{parent}-{flags}{extra}"


@st.composite
def tracestate(draw: st.DrawFn) -> str:
    """Return a W3C tracestate: a list of members, some malformed, or many of them."""
    if draw(st.integers(0, 9)) == 5:
        return ",".join(f"k{i}=v{i}" for i in range(draw(st.sampled_from([32, 33, 500]))))
    members = draw(
        st.lists(
            st.sampled_from(["vendor=value", "a@b=c", "=x", "k=", "K=v", "k=v=w", " k = v "])
            | SHORT_TEXT,
            max_size=5,
        )
    )
    return ",".join(members)


@st.composite
def text_value(draw: st.DrawFn, name: str) -> Header:
    """Return a text header: for a header the service reads, often a value shaped for it."""
    if name == "authorization" and draw(st.booleans()):
        return draw(authorization())
    if name == "traceparent" and draw(st.booleans()):
        return Header(name, draw(traceparent()))
    if name == "tracestate" and draw(st.booleans()):
        return Header(name, draw(tracestate()))
    kind = draw(st.sampled_from(["empty", "text", "text", "text", "padded", "long"]))
    if kind == "empty":
        value = ""
    elif kind == "padded":
        value = f" {draw(SHORT_TEXT)} "
    elif kind == "long":
        value = draw(FILL) * draw(LONG_SIZES)
    else:
        value = draw(SHORT_TEXT)
    return Header(name, not_a_key(value) if name == "authorization" else value)


@st.composite
def binary_value(draw: st.DrawFn, name: str) -> Header:
    """Return a -bin header: random bytes, UTF-8 text beyond ASCII, a key, or many bytes."""
    kind = draw(st.sampled_from(["bytes", "non-ascii", "key", "long"]))
    if kind == "bytes":
        value = draw(st.binary(max_size=64))
    elif kind == "non-ascii":
        value = draw(NON_ASCII).encode()
    elif kind == "key":
        value = f"Bearer {KEYS['acme'][0]}".encode()  # not the authorization header
    else:
        value = bytes([draw(st.integers(0, 255))]) * draw(LONG_SIZES)
    return Header(f"{name}-bin", value)


@st.composite
def header(draw: st.DrawFn) -> Header:
    name = draw(NAMES)
    if draw(st.integers(0, 4)) == 2:
        return draw(binary_value(name))
    return draw(text_value(name))


@st.composite
def headers(draw: st.DrawFn) -> tuple[Header, ...]:
    """Return a call's metadata: a few entries, sometimes one of them repeated."""
    entries: list[Header] = draw(st.lists(header(), max_size=5))
    if not entries or not draw(st.booleans()):
        return tuple(entries)
    repeated = [draw(st.sampled_from(entries))] * draw(st.integers(1, 3))
    return tuple(draw(st.permutations(entries + repeated)))


@st.composite
def route_request(draw: st.DrawFn) -> pb.RouteRequest:
    return pb.RouteRequest(prompt=draw(PROMPTS), tenant=draw(TENANTS), request_id=draw(BODY_IDS))


@dataclass
class Call:
    """One call: where it goes, its request and its metadata (its repr stays short)."""

    server: str  # "open" or "keyed"
    method: str
    request: Any = field(repr=False)
    metadata: tuple[Header, ...]

    def tenants(self) -> list[str]:
        if self.method == "RouteBatch":
            return [r.tenant for r in self.request.requests]
        route = self.request.route if self.method == "Complete" else self.request
        return [route.tenant]


@st.composite
def call(draw: st.DrawFn) -> Call:
    server = draw(st.sampled_from(["open", "keyed", "keyed"]))
    method = draw(st.sampled_from(["Route", "RouteBatch", "Complete"]))
    request: Any
    if method == "Route":
        request = draw(route_request())
    elif method == "RouteBatch":
        request = pb.RouteBatchRequest(requests=draw(st.lists(route_request(), max_size=3)))
    else:
        request = pb.CompleteRequest(route=draw(route_request()))
        request.generation.max_tokens = 8
    metadata = draw(headers())
    if server == "keyed" and draw(st.booleans()):
        # Half the keyed server's calls carry a key, or something like one, among the rest.
        metadata = tuple(draw(st.permutations((draw(authorization()), *metadata))))
    return Call(server, method, request, metadata)


# -- what the service must answer ---------------------------------------------------------


def _granted(tenant: str, method: str, tenants: list[str]) -> grpc.StatusCode:
    """Return the status of a call whose key belongs to ``tenant``."""
    if method not in KEYS[tenant][1]:
        return PERMISSION_DENIED
    # RouteBatch checks each request's tenant in its own result slot.
    if method != "RouteBatch" and tenants[0] not in ("", tenant):
        return PERMISSION_DENIED
    return OK


def metadata_bytes(call: Call) -> int:
    """Return the size of a call's metadata as gRPC counts it (-bin values in base64)."""
    size = 0
    for entry in call.metadata:
        value = len(entry.value)
        size += len(entry.name) + (4 * -(-value // 3) if isinstance(entry.value, bytes) else value)
    return size


def allowed(call: Call) -> set[grpc.StatusCode]:
    """Return the statuses a call may end with, given its server and its headers."""
    if call.server == "open":
        codes = {OK}
    else:
        # Several authorization headers: which one counts is the server's choice.
        grants = [h.grants for h in call.metadata if h.name == "authorization"]
        codes = set() if grants else {UNAUTHENTICATED}
        for grant in grants:
            if grant.endswith("?") or not grant:
                codes.add(UNAUTHENTICATED)
            if grant:
                codes.add(_granted(grant.rstrip("?"), call.method, call.tenants()))
    if metadata_bytes(call) + METADATA_MARGIN_BYTES > METADATA_SOFT_LIMIT_BYTES:
        codes.add(RESOURCE_EXHAUSTED)
    return codes


@dataclass
class Answer:
    call: Call
    code: grpc.StatusCode
    details: str
    initial: Metadata
    trailing: Metadata
    response: Any  # Route's or RouteBatch's response, Complete's first event
    took_s: float


def _ask(channel: grpc.Channel, call: Call) -> Answer:
    """Make one call with its metadata and return how it ended."""
    stub = router_stub(channel)
    metadata = tuple((h.name, h.value) for h in call.metadata)
    started = time.monotonic()
    response: Any = None
    if call.method == "Complete":
        stream = stub.Complete(call.request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        try:
            for event in stream:
                response = event if response is None else response
        except grpc.RpcError:
            pass
        code, details = stream.code(), stream.details() or ""
        initial, trailing = stream.initial_metadata(), stream.trailing_metadata()
    else:
        method = stub.Route if call.method == "Route" else stub.RouteBatch
        try:
            response, done = method.with_call(
                call.request, metadata=metadata, timeout=CALL_TIMEOUT_S
            )
            code, details = done.code(), done.details() or ""
            initial, trailing = done.initial_metadata(), done.trailing_metadata()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            initial = exc.initial_metadata()  # type: ignore[attr-defined]
            trailing = exc.trailing_metadata()
    took = time.monotonic() - started
    return Answer(call, code, details, tuple(initial or ()), tuple(trailing or ()), response, took)


def _ids(metadata: Metadata) -> list[str]:
    return [str(value) for key, value in metadata if key == REQUEST_ID]


def check(answer: Answer) -> None:
    """Fail unless an answer is allowed by its headers and carries its request id."""
    call, code = answer.call, answer.code
    where = f"{call.server} {call.method} {call.metadata!r}"
    expected = allowed(call)
    assert code in expected, f"{where}: {code.name} ({answer.details!r}), expected {expected}"
    if code is RESOURCE_EXHAUSTED and TRANSPORT_LIMIT in answer.details:
        return  # gRPC's own refusal: the service never saw the call
    assert code is OK or answer.details.strip(), f"{where}: {code.name} without a message"
    # Exactly one request id, where the README promises it: never the caller's header echoed.
    header_ids, trailer_ids = _ids(answer.initial), _ids(answer.trailing)
    in_header = call.method == "Complete" and code is OK
    ids = header_ids if in_header else trailer_ids
    assert len(header_ids) + len(trailer_ids) == 1 and ids and ids[0], (
        f"{where}: {code.name}: request id headers {header_ids}, trailers {trailer_ids}"
    )
    if code is not OK:
        return
    if call.method == "RouteBatch":
        results = answer.response.results
        assert len(results) == len(call.request.requests), where
        for result, tenant in zip(results, call.tenants(), strict=True):
            if result.HasField("error"):
                # Only a key's tenant can refuse a request of a batch whose headers pass.
                assert call.server == "keyed" and tenant, f"{where}: {result.error}"
                assert result.error.code == PERMISSION_DENIED.value[0], f"{where}: {result.error}"
                assert result.error.message and result.error.request_id, where
        return
    decision = answer.response.decision
    assert decision.request_id == ids[0], f"{where}: decision {decision.request_id}, id {ids}"
    body_id = (
        call.request.route.request_id if call.method == "Complete" else call.request.request_id
    )
    assert not body_id or decision.request_id == body_id, where


# -- running it ---------------------------------------------------------------------------


class Caller:
    """Channels to each server (one connection each, spread over its workers) and a pool."""

    def __init__(self, ports: dict[str, int]) -> None:
        self._stack = ExitStack()
        self.channels = {
            server: [
                self._stack.enter_context(
                    grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
                )
                for _ in range(CHANNELS_PER_SERVER)
            ]
            for server, port in ports.items()
        }
        self._pool = self._stack.enter_context(ThreadPoolExecutor(BATCH))
        self.answers: list[Answer] = []
        self._lock = threading.Lock()

    def send(self, batch: list[Call]) -> list[Answer]:
        futures = [
            self._pool.submit(_ask, self.channels[c.server][i % CHANNELS_PER_SERVER], c)
            for i, c in enumerate(batch)
        ]
        answers = [future.result() for future in futures]
        with self._lock:
            self.answers.extend(answers)
        return answers

    def health(self) -> set[int]:
        """Return the statuses health reports on every channel of every server."""
        return {
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
            .status
            for channels in self.channels.values()
            for channel in channels
        }

    def close(self) -> None:
        self._stack.close()


def _run(caller: Caller) -> None:
    sent = [0]

    @settings(
        max_examples=BATCHES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(call(), min_size=BATCH, max_size=BATCH))
    def send(batch: list[Call]) -> None:
        for answer in caller.send(batch):
            check(answer)
        sent[0] += 1
        if sent[0] % HEALTH_EVERY == 0:
            assert caller.health() == {health_pb2.HealthCheckResponse.SERVING}

    send()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


def _serve(serve_process: Start, config: Path) -> tuple[ServeProcess, int, list[int]]:
    server = serve_process(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    listening = server.wait_for("listening", count=2)
    return server, int(listening[0]["port"]), sorted(line["pid"] for line in listening)


def test_fuzzed_metadata_gets_documented_answers_and_leaves_the_servers_intact(
    serve_process: Start, tmp_path: Path, model_path: Path, otlp: OtlpReceiver
) -> None:
    common: dict[str, Any] = {
        "backends": {"demo": {"kind": "demo", "tokens_per_second": 1e6}},
        "store": None,
        "logging": {"rpc_sample": 0.0},
    }
    open_config = write_config(tmp_path / "open.yaml", model_path, **common)
    keyed_config = write_config(
        tmp_path / "keyed.yaml",
        model_path,
        **common,
        auth={
            "enabled": True,
            "keys": [
                {"sha256": digest(key), "tenant": tenant, "methods": list(methods)}
                for tenant, (key, methods) in KEYS.items()
            ],
        },
        tracing={"otlp_endpoint": otlp.endpoint, "sample_ratio": 0.0},
    )
    servers = {
        "open": _serve(serve_process, open_config),
        "keyed": _serve(serve_process, keyed_config),
    }
    caller = Caller({name: port for name, (_, port, _) in servers.items()})
    started = time.monotonic()
    try:
        _run(caller)
        assert caller.health() == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        caller.close()
    took = time.monotonic() - started

    answers = caller.answers
    codes = Counter((a.call.server, a.code.name) for a in answers)
    # Both servers served and refused; the keyed one refused for each reason.
    assert codes["open", "OK"] and codes["keyed", "OK"]
    assert codes["keyed", "UNAUTHENTICATED"] and codes["keyed", "PERMISSION_DENIED"]
    for name, (server, _, workers) in servers.items():
        assert server.proc.poll() is None, name
        assert not server.events("worker died; restarting"), name
        assert sorted(line["pid"] for line in server.events("listening")) == workers, name
        rpc_lines = server.events("rpc")
        assert not [line for line in rpc_lines if line["status"] in ("INTERNAL", "UNKNOWN")]
        assert not [line for line in server.raw if "Traceback" in line], name
    # The keyed server read the callers' traceparents: their sampled traces were exported.
    assert otlp.receiver.wait_for(1)
    slowest = max(a.took_s for a in answers)
    print(
        f"metadata fuzz: {len(answers)} calls in {took:.1f} s (slowest {slowest:.2f} s); "
        f"statuses {dict(codes)}"
    )

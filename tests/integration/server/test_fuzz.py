"""Bad input at volume: over 10,000 generated and mutated requests at a live two-worker server.

Hypothesis draws batches of requests, each sent as raw bytes through a generic channel
call (identity serializers), so that a request may be anything: a well-formed message with
random field values (oversized strings, chats of thousands of turns, huge metadata, NaN
and infinite floats, tier names that do not exist), protobuf encoded by hand (strings that
are not UTF-8, unknown fields with any wire type and enum-like varints, known fields with
the wrong wire type, overlong varints, deeply nested groups), a valid message truncated or
with bytes flipped or inserted, or plain garbage. The requests carry no enum field, so
"unknown enum values" are the unknown varint fields and out-of-range integers.

The server must answer each with a documented status and a message (and the request id
trailer on an error it produced), never crash or restart a worker, stay SERVING, and keep
its memory flat.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from router._proto.modelrouter.v1 import router_pb2 as pb
from tests.integration.server.support import SERVICE, ServeProcess, write_config

pytestmark = pytest.mark.slow

Start = Callable[..., ServeProcess]
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CHANNELS = 8
BATCH = 25
WARMUP_BATCHES = 80
BATCHES = 400  # 10,000 requests after the warm-up
# Documented statuses for bad input: the request is wrong, or too large for the server.
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
# gRPC's own check of the message size runs before the service sees the request.
TRANSPORT_LIMIT = "Received message larger than max"
# Growth of a worker's resident memory allowed between the warm-up and the end: allocator
# noise (large messages come and go) but not a leak of a few hundred bytes per request.
RSS_TOLERANCE_BYTES = 16 * 1024 * 1024
# The server's limits in this test, lower than the defaults so that requests beyond them
# stay cheap to generate and to send.
MAX_PROMPT_BYTES = 64 * 1024
MAX_MESSAGE_BYTES = 1024 * 1024
STREAMING = {"Complete"}

# -- protobuf by hand ---------------------------------------------------------------------


def varint(value: int) -> bytes:
    """Encode an unsigned varint (negative values as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


# -- strategies ---------------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
NAMES = st.sampled_from(["", "cheap", "strong", "expert", "Cheap", "nope", "cheap ", "\x00"])
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), -0.0, 1e308, -1e-308, 2.0, -1.0]
)
NOT_UTF8 = st.sampled_from(
    [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80abc", b"ok\xfe", b"\xc0\xaf"]
)


# Strategies are built once: hypothesis validates each new strategy object on first use.
_ONE_IN = {n: st.integers(0, n - 1) for n in (10, 20, 40)}
_LARGE_SIZES = st.sampled_from([129, 2049, 4096, MAX_PROMPT_BYTES, MAX_PROMPT_BYTES + 1])
_FILL = st.sampled_from(["x", "é", "漢", " ", "\u200b"])
_ROLES = st.sampled_from(["user", "assistant", "system", "", "tool", "USER"]) | TEXT
_FEW_TURNS = st.lists(st.builds(pb.Message, role=TEXT, content=TEXT), max_size=3)
_LONG_CHATS = st.sampled_from([1000, 1001, 3000])
_FEW_ENTRIES = st.dictionaries(TEXT, TEXT, max_size=4)
_MANY_ENTRIES = st.sampled_from([33, 1000])
_ENTRY_VALUES = st.sampled_from(["", "v", "v" * 257])
_SHAPES = st.sampled_from(["prompt", "messages", "both", "neither"])
_UINT32 = st.integers(0, 2**32 - 1)
_STRING_FIELDS = st.sampled_from([1, 3, 4])
_FIELD_NUMBERS = st.integers(1, (1 << 29) - 1)
_WIRE_TYPES = st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7])
_INT64S = st.integers(-(1 << 63), (1 << 64) - 1)
_SHORT_BINARY = st.binary(max_size=32)
_DEPTHS = st.sampled_from([64, 101, 10_000])
_MUTATIONS = st.sampled_from(["truncate", "flip", "insert", "double"])
_BYTE_FLIPS = st.integers(1, 255)
_INSERTS = st.binary(min_size=1, max_size=8)
_GARBAGE = st.binary(max_size=200)
_GARBAGE_SIZES = st.sampled_from([4096, 1 << 16])
_SEEDS = st.integers(0, 2**32)
_METHODS = st.sampled_from(["Route", "Route", "Complete", "Complete", "Feedback", "GetConfig"])
_KINDS = st.sampled_from(["fields", "fields", "hand", "mutated", "garbage"])


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """Return True about once in ``one_in`` draws (the expensive shapes stay a minority).

    A value in the middle of the range: hypothesis favours the ends of a range.
    """
    return draw(_ONE_IN[one_in]) == one_in // 2


@st.composite
def sized_text(draw: st.DrawFn) -> str:
    """Return usually short text, rarely text of a size around or beyond the limits."""
    if not rarely(draw, 40):
        return draw(TEXT)
    size = draw(_LARGE_SIZES)
    if rarely(draw, 10):
        size = MAX_MESSAGE_BYTES + 1  # beyond what gRPC itself accepts
    char = draw(_FILL)
    return char * (size // len(char.encode()) + 1)


SIZED_TEXT = sized_text()


@st.composite
def chat(draw: st.DrawFn) -> list[pb.Message]:
    """Return a chat: a few random turns, or (rarely) a long run of one short turn."""
    if rarely(draw, 10):
        # A short turn: thousands of copies of a long one would be gigabytes.
        return [pb.Message(role=draw(_ROLES), content=draw(TEXT))] * draw(_LONG_CHATS)
    return [pb.Message(role=draw(_ROLES), content=draw(SIZED_TEXT)), *draw(_FEW_TURNS)]


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, str]:
    """Return request metadata: a few random entries, or (rarely) a huge map."""
    if not rarely(draw, 10):
        return draw(_FEW_ENTRIES)
    value = draw(_ENTRY_VALUES)
    return {f"key-{i}": value for i in range(draw(_MANY_ENTRIES))}


CHAT, METADATA = chat(), metadata()


@st.composite
def route_request(draw: st.DrawFn) -> pb.RouteRequest:
    shape = draw(_SHAPES)
    request = pb.RouteRequest(
        request_id=draw(SIZED_TEXT),
        tenant=draw(SIZED_TEXT),
        metadata=draw(METADATA) if draw(st.booleans()) else {},
    )
    if shape in ("prompt", "both"):
        request.prompt = draw(SIZED_TEXT)
    if shape in ("messages", "both"):
        request.messages.extend(draw(CHAT))
    if draw(st.booleans()):
        request.hints.CopyFrom(
            pb.TierHints(tier=draw(NAMES), min_tier=draw(NAMES), max_tier=draw(NAMES))
        )
    return request


ROUTE_REQUEST = route_request()
_STOPS = st.lists(SIZED_TEXT, max_size=6)


@st.composite
def complete_request(draw: st.DrawFn) -> pb.CompleteRequest:
    request = pb.CompleteRequest(route=draw(ROUTE_REQUEST))
    if draw(st.booleans()):
        generation = request.generation
        generation.max_tokens = draw(_UINT32)
        if draw(st.booleans()):
            generation.temperature = draw(FLOATS)
        generation.stop.extend(draw(_STOPS))
    return request


@st.composite
def feedback_request(draw: st.DrawFn) -> pb.FeedbackRequest:
    return pb.FeedbackRequest(
        request_id=draw(SIZED_TEXT),
        rating=draw(FLOATS),
        comment=draw(SIZED_TEXT),
        tenant=draw(SIZED_TEXT),
    )


MESSAGES: dict[str, st.SearchStrategy[Any]] = {
    "Route": ROUTE_REQUEST,
    "Complete": complete_request(),
    "Feedback": feedback_request(),
    "GetConfig": st.just(pb.GetConfigRequest()),
}


def _bad_strings(method: str, bad: bytes, pick: int) -> list[bytes]:
    """Return fields of ``method`` carrying ``bad`` where UTF-8 is required."""
    if method == "Route":
        nested = (
            delimited(2, delimited(2, bad)),  # a chat turn's content
            delimited(5, delimited(1, bad) + delimited(2, b"v")),  # a metadata key
            delimited(5, delimited(1, b"k") + delimited(2, bad)),  # a metadata value
        )
        return [delimited((1, 3, 4)[pick], bad), nested[pick]]
    if method == "Complete":
        # The route's prompt, a stop sequence.
        return [delimited(1, delimited(1, bad)), delimited(2, delimited(3, bad))]
    if method == "Feedback":
        return [delimited((1, 3, 4)[pick], bad)]
    return []


@st.composite
def hand_encoded(draw: st.DrawFn, method: str) -> bytes:
    """Return protobuf written by hand: bad strings, unknown and mistyped fields."""
    parts = _bad_strings(method, draw(NOT_UTF8), draw(_ONE_IN[10]) % 3)
    for _ in range(draw(st.integers(0, 3))):
        number, wire, value = draw(_FIELD_NUMBERS), draw(_WIRE_TYPES), draw(_INT64S)
        if wire == 0:
            payload = varint(value)  # an enum-like varint, in range or far out of it
        elif wire == 1:
            payload = (value & ((1 << 64) - 1)).to_bytes(8, "little")
        elif wire == 2:
            raw = draw(_SHORT_BINARY)
            payload = varint(len(raw)) + raw
        elif wire == 5:
            payload = (value & 0xFFFFFFFF).to_bytes(4, "little")
        else:
            payload = b""  # groups and the reserved wire types 6 and 7
        parts.append(tag(number, wire) + payload)
    if draw(st.booleans()):
        parts.append(tag(1, 0) + b"\xff" * 11)  # an overlong varint
    if rarely(draw, 10):
        depth = draw(_DEPTHS)
        parts.append(tag(99, 3) * depth + tag(99, 4) * depth)  # nested groups
    return b"".join(draw(st.permutations(parts)))


@st.composite
def mutated(draw: st.DrawFn, method: str) -> bytes:
    """Return a valid request truncated, with bytes flipped or inserted, or doubled."""
    data = bytearray(draw(MESSAGES[method]).SerializeToString())
    if not data:
        return bytes(draw(_INSERTS))
    how = draw(_MUTATIONS)
    at = draw(st.integers(0, len(data) - 1))
    if how == "truncate":
        return bytes(data[:at])
    if how == "flip":
        data[at] ^= draw(_BYTE_FLIPS)
        return bytes(data)
    if how == "insert":
        return bytes(data[:at] + draw(_INSERTS) + data[at:])
    return bytes(data + data)  # concatenated messages merge: valid protobuf


@st.composite
def garbage(draw: st.DrawFn) -> bytes:
    """Return random bytes: short ones drawn, rarely long ones from a drawn seed."""
    if not rarely(draw, 20):
        return draw(_GARBAGE)
    return random.Random(draw(_SEEDS)).randbytes(draw(_GARBAGE_SIZES))


HAND_ENCODED = {method: hand_encoded(method) for method in MESSAGES}
MUTATED = {method: mutated(method) for method in MESSAGES}
GARBAGE = garbage()


class Fuzzed:
    """One fuzzed request; its repr stays short, whatever its size (hypothesis prints it)."""

    __slots__ = ("data", "kind", "method")

    def __init__(self, method: str, kind: str, data: bytes) -> None:
        self.method, self.kind, self.data = method, kind, data

    def __repr__(self) -> str:
        head = self.data[:48]
        more = f"...({len(self.data)} bytes)" if len(self.data) > len(head) else ""
        return f"Fuzzed({self.method!r}, {self.kind!r}, {head!r}{more})"


@st.composite
def request(draw: st.DrawFn) -> Fuzzed:
    """Return one fuzzed request."""
    method, kind = draw(_METHODS), draw(_KINDS)
    if kind == "fields":
        data = draw(MESSAGES[method]).SerializeToString()
    elif kind == "hand":
        data = draw(HAND_ENCODED[method])
    elif kind == "mutated":
        data = draw(MUTATED[method])
    else:
        data = draw(GARBAGE)
    return Fuzzed(method, kind, data)


# -- the client side ----------------------------------------------------------------------


@dataclass
class Answer:
    method: str
    kind: str
    size: int
    code: grpc.StatusCode
    details: str
    request_id: str


def _ask(channel: grpc.Channel, method: str, kind: str, data: bytes) -> Answer:
    """Send one request as raw bytes and return how it ended."""
    path = f"/{SERVICE}/{method}"
    trailers: Any = ()
    try:
        # No serializers: the bytes go on the wire as they are.
        if method in STREAMING:
            stream = channel.unary_stream(path, None, None)(data, timeout=30)
            for _ in stream:
                pass
            code, details = stream.code(), stream.details() or ""
            trailers = stream.trailing_metadata()
        else:
            _, call = channel.unary_unary(path, None, None).with_call(data, timeout=30)
            code, details, trailers = call.code(), call.details() or "", call.trailing_metadata()
    except grpc.RpcError as exc:
        code, details, trailers = exc.code(), exc.details() or "", exc.trailing_metadata()
    request_id = dict(trailers or ()).get("x-request-id", "")
    return Answer(method, kind, len(data), code, details, str(request_id))


class Fuzzer:
    """Channels (one connection each, spread over the workers) and a pool to send batches."""

    def __init__(self, port: int) -> None:
        self._stack = ExitStack()
        self.channels = [
            self._stack.enter_context(
                grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)
            )
            for _ in range(CHANNELS)
        ]
        self._pool = self._stack.enter_context(ThreadPoolExecutor(CHANNELS))
        self.answers: list[Answer] = []
        self._lock = threading.Lock()

    def send(self, batch: list[Fuzzed]) -> list[Answer]:
        """Send a batch over every channel at once; return the answers."""
        futures = [
            self._pool.submit(_ask, self.channels[i % CHANNELS], r.method, r.kind, r.data)
            for i, r in enumerate(batch)
        ]
        answers = [future.result() for future in futures]
        with self._lock:
            self.answers.extend(answers)
        return answers

    def health(self) -> set[int]:
        """Return the statuses health reports on every channel."""
        return {
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
            .status
            for channel in self.channels
        }

    def close(self) -> None:
        self._stack.close()


def _check(answer: Answer) -> None:
    """Fail unless an answer is a documented status with a message (and the request id)."""
    where = f"{answer.method} ({answer.kind}, {answer.size} bytes)"
    assert answer.code in ALLOWED, f"{where}: {answer.code.name}: {answer.details}"
    if answer.code is grpc.StatusCode.OK:
        return
    assert answer.details, f"{where}: {answer.code.name} without a message"
    if TRANSPORT_LIMIT not in answer.details:
        assert answer.request_id, f"{where}: {answer.code.name} without x-request-id"


def _rss(pid: int) -> int:
    """Return a process's resident memory in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _run(fuzzer: Fuzzer, batches: int) -> None:
    """Send ``batches`` batches drawn by hypothesis, checking every answer."""
    sent = [0]

    @settings(
        max_examples=batches,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(request(), min_size=BATCH, max_size=BATCH))
    def send(batch: list[Fuzzed]) -> None:
        for answer in fuzzer.send(batch):
            _check(answer)
        sent[0] += 1
        if sent[0] % 50 == 0:
            assert fuzzer.health() == {health_pb2.HealthCheckResponse.SERVING}

    send()


@pytest.fixture
def fuzz_config(tmp_path: Path, model_path: Path) -> Path:
    return write_config(
        tmp_path / "fuzz.yaml",
        model_path,
        # Fast answers, and bounded memories that fill up during the warm-up.
        backends={"demo": {"kind": "demo", "tokens_per_second": 1e6}},
        server={
            "feedback_capacity": 100,
            "max_prompt_bytes": MAX_PROMPT_BYTES,
            "max_message_bytes": MAX_MESSAGE_BYTES,
        },
        logging={"rpc_sample": 0.0},
    )


def test_fuzzed_requests_get_documented_answers_and_leave_the_server_intact(
    serve_process: Start, fuzz_config: Path
) -> None:
    server = serve_process(
        "--config", str(fuzz_config), "--host", "127.0.0.1", "--port", "0", "--workers", "2"
    )
    listening = server.wait_for("listening", count=2)
    port = int(listening[0]["port"])
    workers = sorted(line["pid"] for line in listening)
    fuzzer = Fuzzer(port)
    started = time.monotonic()
    try:
        _run(fuzzer, WARMUP_BATCHES)
        warm = {pid: _rss(pid) for pid in workers}
        warm_count = len(fuzzer.answers)
        _run(fuzzer, BATCHES)
        end = {pid: _rss(pid) for pid in workers}
        assert fuzzer.health() == {health_pb2.HealthCheckResponse.SERVING}
    finally:
        fuzzer.close()
    took = time.monotonic() - started

    fuzzed = len(fuzzer.answers) - warm_count
    assert fuzzed >= 10_000
    codes = Counter(a.code.name for a in fuzzer.answers)
    kinds = Counter((a.method, a.kind, a.code.name) for a in fuzzer.answers)
    # Every kind of request reached every method, and some of them were served.
    assert {(m, k) for m, k, _ in kinds} == {
        (m, k) for m in MESSAGES for k in ("fields", "hand", "mutated", "garbage")
    }
    assert codes["OK"] > 0 and codes["INVALID_ARGUMENT"] > 0
    # No worker died or was restarted, nothing was logged as a crash.
    assert server.proc.poll() is None
    assert not server.events("worker died; restarting")
    assert sorted(line["pid"] for line in server.events("listening")) == workers
    assert {line["pid"] for line in server.events("rpc")} == set(workers)  # both were fuzzed
    assert not [line for line in server.events("rpc") if line["status"] in ("INTERNAL", "UNKNOWN")]
    assert not [line for line in server.raw if "Traceback" in line]
    for pid in workers:
        assert end[pid] - warm[pid] <= RSS_TOLERANCE_BYTES, (
            f"worker {pid}: RSS {warm[pid] / 2**20:.1f} MiB after the warm-up, "
            f"{end[pid] / 2**20:.1f} MiB after {fuzzed} more requests"
        )
    print(
        f"fuzz: {len(fuzzer.answers)} requests in {took:.1f} s; statuses {dict(codes)}; "
        f"RSS MiB {[round(warm[p] / 2**20, 1) for p in workers]} -> "
        f"{[round(end[p] / 2**20, 1) for p in workers]}"
    )

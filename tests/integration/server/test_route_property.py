"""Random protobuf field values thrown at Route: only OK or INVALID_ARGUMENT, never a crash."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router._proto.modelrouter.v1 import router_pb2 as pb
from router._proto.modelrouter.v1 import router_pb2_grpc
from tests.integration.server.support import (
    TIERS,
    ServeProcess,
    make_model,
    router_stub,
    write_config,
)

# Any Unicode scalar value (protobuf strings are UTF-8, so no lone surrogates).
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=80)
names = st.one_of(st.sampled_from([*TIERS, ""]), text)
roles = st.one_of(st.sampled_from(["system", "user", "assistant"]), text)

requests = st.builds(
    pb.RouteRequest,
    prompt=st.one_of(st.just(""), text, st.text(min_size=900, max_size=1200)),
    messages=st.one_of(
        st.just([]), st.lists(st.builds(pb.Message, role=roles, content=text), max_size=5)
    ),
    request_id=st.one_of(
        st.just(""), st.from_regex(r"[!-~]{1,128}", fullmatch=True), st.text(max_size=140)
    ),
    tenant=st.text(max_size=140),
    metadata=st.one_of(
        st.just({}),
        st.dictionaries(st.text(max_size=70), st.text(max_size=270), max_size=36),
    ),
    hints=st.one_of(st.none(), st.builds(pb.TierHints, min_tier=names, max_tier=names, tier=names)),
)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[router_pb2_grpc.ModelRouterStub]:
    folder = tmp_path_factory.mktemp("property")
    make_model(folder / "m.npz")
    config = write_config(folder / "c.yaml", folder / "m.npz", server={"max_prompt_bytes": 1024})
    server = ServeProcess(
        "--config", str(config), "--host", "127.0.0.1", "--port", "0", "--workers", "1"
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            yield router_stub(channel)
        assert server.proc.poll() is None, "the server died"
        assert not [line for line in server.events("rpc") if line["status"] == "INTERNAL"]
    finally:
        server.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_route_never_crashes(
    stub: router_pb2_grpc.ModelRouterStub, request: pb.RouteRequest
) -> None:
    try:
        decision = stub.Route(request, timeout=10).decision
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        assert error.details()
        event(f"INVALID_ARGUMENT {(error.details() or '').split(':')[0]}")
        return
    event("OK")
    assert decision.tier in TIERS and decision.tier == TIERS[decision.tier_index]
    assert 0.0 <= decision.score <= 1.0
    assert decision.request_id

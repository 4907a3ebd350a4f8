"""The standard health service and server reflection, as grpcurl and ghz use them."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from router._proto.modelrouter.v1 import router_pb2
from router.server import RunningServer
from tests.integration.server.support import SERVICE

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize("service", ["", SERVICE])
async def test_health_check_serving_per_service(channel: grpc.aio.Channel, service: str) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service)
    )
    assert reply.status == SERVING


async def test_health_unknown_service_is_not_found(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="nope.Service")
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_unknown_huge_service_name_is_not_found(channel: grpc.aio.Channel) -> None:
    # Quoted whole, the name would outgrow the metadata limit: RESOURCE_EXHAUSTED instead.
    name = "x" * 20_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert "x" * 64 in details and len(details) < 100


async def test_health_watch_reports_not_serving_and_ends_at_shutdown(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE)
    )
    assert (await watch.read()).status == SERVING
    # A grace period far longer than the test: the watch must not hold the stop.
    await server.stop(60)
    assert (await watch.read()).status == NOT_SERVING
    assert await watch.code() == grpc.StatusCode.OK


async def _reflect(
    channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest
) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    reply = await _reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_reflection_describes_the_api(channel: grpc.aio.Channel) -> None:
    reply = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    [api] = [f for f in files if f.package == "modelrouter.v1"]
    [service] = api.service
    methods = {m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method}
    assert methods == {
        "Route": (".modelrouter.v1.RouteRequest", ".modelrouter.v1.RouteResponse", False),
        "RouteBatch": (
            ".modelrouter.v1.RouteBatchRequest",
            ".modelrouter.v1.RouteBatchResponse",
            False,
        ),
        "Complete": (".modelrouter.v1.CompleteRequest", ".modelrouter.v1.CompleteEvent", True),
        "Feedback": (".modelrouter.v1.FeedbackRequest", ".modelrouter.v1.FeedbackResponse", False),
        "GetConfig": (
            ".modelrouter.v1.GetConfigRequest",
            ".modelrouter.v1.GetConfigResponse",
            False,
        ),
        "GetStats": (".modelrouter.v1.GetStatsRequest", ".modelrouter.v1.GetStatsResponse", False),
    }


@pytest.mark.parametrize("symbol", [f"{SERVICE}.Route", f"{SERVICE}.Complete"])
async def test_reflection_resolves_a_method_symbol_to_the_api_file(
    channel: grpc.aio.Channel, symbol: str
) -> None:
    # ghz asks for the file of "package.Service.Method"; the stock pool cannot answer it.
    reply = await _reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    assert reply.WhichOneof("message_response") == "file_descriptor_response"
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    # The first file is the one declaring the symbol; its imports follow.
    assert files[0].name == router_pb2.DESCRIPTOR.name
    [service] = files[0].service
    assert f"{files[0].package}.{service.name}" == SERVICE
    assert symbol.rsplit(".", 1)[1] in {m.name for m in service.method}


async def test_reflection_reports_an_unknown_method_symbol_as_not_found(
    channel: grpc.aio.Channel,
) -> None:
    reply = await _reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{SERVICE}.Nope"),
    )
    assert reply.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

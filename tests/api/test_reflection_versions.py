"""Reflection answers under grpc.reflection.v1 (what current grpcurl and Postman ask first) and
under v1alpha, with the same services and descriptors."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

AUTH_SERVICE = "authsvc.v1.AuthService"
VERSIONS = ["grpc.reflection.v1", "grpc.reflection.v1alpha"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_reflection_answers_under_both_names(channel: grpc.aio.Channel, version: str) -> None:
    # v1 kept v1alpha's messages and field numbers; only the package (the path) differs.
    info = channel.stream_stream(
        f"/{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    call = info(
        iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=AUTH_SERVICE),
            ]
        ),
        timeout=5,
    )
    responses = [response async for response in call]
    listed = {service.name for service in responses[0].list_services_response.service}
    assert {AUTH_SERVICE, *(f"{v}.ServerReflection" for v in VERSIONS)} <= listed
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    assert any(
        f"{file.package}.{service.name}" == AUTH_SERVICE
        for file in files
        for service in file.service
    )

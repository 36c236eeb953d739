"""Every ReadinessService RPC fuzzed with random messages over real gRPC: each answer is OK or a
documented failure (the reasons its proto comment lists after "Errors:", plus PERMISSION_DENIED
for callers), with the status code that common.proto gives that reason; never INTERNAL/UNKNOWN.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import TEST_API_KEYS, sync_channel

from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.db.migrate import upgrade
from authsvc.server import Server, create_server
from authsvc.v1 import readiness_service_pb2, readiness_service_pb2_grpc

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "authsvc" / "v1"
SERVICE = readiness_service_pb2.DESCRIPTOR.services_by_name["ReadinessService"]


def _comment_before(source: str, pattern: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    lines = source.splitlines()
    for index, line in enumerate(lines):
        match = re.search(pattern, line)
        if not match:
            continue
        comment: list[str] = []
        for previous in reversed(lines[:index]):
            if not previous.strip().startswith("//"):
                break
            comment.insert(0, previous.strip()[2:])
        blocks[match.group(1)] = " ".join(comment)
    return blocks


ERRORS = {
    name: frozenset(re.findall(r"[A-Z][A-Z_]+[A-Z]", comment.partition("Errors:")[2]))
    | {"PERMISSION_DENIED"}
    for name, comment in _comment_before(
        (PROTO_DIR / "readiness_service.proto").read_text(), r"rpc (\w+)\("
    ).items()
}
STATUS = {
    name: re.match(r"\s*([A-Z_]+)[.,]", comment).group(1)  # type: ignore[union-attr]
    for name, comment in _comment_before(
        (PROTO_DIR / "common.proto").read_text(), r"ERROR_REASON_(\w+) = \d+;"
    ).items()
    if name != "UNSPECIFIED"
}


def test_every_rpc_documents_its_errors_with_known_reasons() -> None:
    assert set(ERRORS) == {method.name for method in SERVICE.methods}
    for rpc, reasons in ERRORS.items():
        assert reasons <= set(STATUS), (rpc, reasons - set(STATUS))


TEXT = st.text(max_size=60) | st.sampled_from(
    ["", "21180001500011", "x" * 43, "+33612345678", "203.0.113.7", "\x00", "é" * 300]
)


def messages(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            assert field.message_type is not None
            value: st.SearchStrategy[Any] = (
                messages(field.message_type, depth + 1) if depth < 2 else st.just({})
            )
        elif field.type == FieldDescriptor.TYPE_STRING:
            value = TEXT
        elif field.type == FieldDescriptor.TYPE_BOOL:
            value = st.booleans()
        else:
            value = st.integers(-(2**31), 2**31 - 1)
        if field.is_repeated:
            value = st.lists(value, max_size=4)
        fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("readiness-fuzz")
    url = f"sqlite+aiosqlite:///{tmp / 'authsvc.db'}"
    upgrade(url)
    config = Settings(
        database_url=url,
        secret_key_file=tmp / "secret.key",
        sms_provider="file",
        voice_provider="file",
        email_provider="file",
        outbox_file=tmp / "outbox.jsonl",
        grace_period_s=0,
        api_keys=TEST_API_KEYS,
    )
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> Server:
        server = await create_server(config, clock=FrozenClock(), listen="127.0.0.1:0")
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    channel = sync_channel(f"127.0.0.1:{server.port}")
    yield readiness_service_pb2_grpc.ReadinessServiceStub(channel)
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(grace=0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _message_class(name: str) -> Any:
    return getattr(readiness_service_pb2, name)


@pytest.mark.parametrize("rpc", [method.name for method in SERVICE.methods])
def test_random_requests_get_documented_answers(stub: Any, rpc: str) -> None:
    method = SERVICE.methods_by_name[rpc]
    request_class = _message_class(method.input_type.name)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=messages(method.input_type))
    def run(fields: dict[str, Any]) -> None:
        from google.protobuf import json_format

        request = request_class()
        try:
            json_format.ParseDict(_camel(fields), request)
        except json_format.ParseError:
            return  # not representable (an int out of an enum's range...)
        try:
            getattr(stub, rpc)(request, timeout=10)
        except grpc.RpcError as error:
            assert isinstance(error, grpc.Call)
            status = rpc_status.from_call(error)
            assert status is not None, f"{rpc}: {error.code()} without ErrorInfo"
            infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
            info = error_details_pb2.ErrorInfo()
            infos[0].Unpack(info)
            assert info.reason in ERRORS[rpc], f"{rpc} does not document {info.reason}"
            assert error.code().name == STATUS[info.reason], (info.reason, error.code())

    run()


def _camel(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key): _camel(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_camel(item) for item in value]
    return value

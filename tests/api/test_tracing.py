"""OpenTelemetry traces over real gRPC: one server span per RPC continuing the caller's W3C
trace, child spans for the database, argon2, rate limits and the provider, the trace id in the
RPC's log line, and no secret in any span (names, attributes, events, resource), like the logs
in test_no_secrets.py. Then the real OTLP/HTTP exporter against a receiver on the loopback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import grpc
import pytest
import structlog
from leaks import code_forms, find_leaks, phone_forms
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import LogCapture
from support import CLIENT, MOBILE, PASSWORD, Inbox, aio_channel, seed_account

from authsvc import tracing
from authsvc.clock import FrozenClock
from authsvc.config import Settings
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

LOGIN = "jeanne.martin-7f3"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.install(SimpleSpanProcessor(exporter))
    yield exporter
    tracing.shutdown()


@pytest.fixture
async def traced(
    spans: InMemorySpanExporter, settings: Settings, clock: FrozenClock
) -> AsyncIterator[Server]:
    server = await create_server(settings, clock=clock, listen="127.0.0.1:0")
    await server.start()
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def traced_stub(traced: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{traced.port}") as channel:
        yield pb_grpc.AuthServiceStub(channel)


@pytest.fixture
def events() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog events with the context variables merged, as the JSON renderer gets them."""
    capture = LogCapture()
    processors = structlog.get_config()["processors"]
    saved = list(processors)
    processors[:] = [structlog.contextvars.merge_contextvars, capture]
    try:
        yield capture.entries
    finally:
        processors[:] = saved


def text_of(span: ReadableSpan) -> str:
    """Everything a span carries to the collector, as text."""
    parts = [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
    parts += [f"{event.name} {dict(event.attributes or {})!r}" for event in span.events]
    parts += [repr(dict(span.resource.attributes))]
    return "\n".join(parts)


async def wait_for_span(exporter: InMemorySpanExporter, name: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10.0
    while not any(span.name == name for span in exporter.get_finished_spans()):
        assert asyncio.get_running_loop().time() < deadline, f"no {name} span"
        await asyncio.sleep(0.02)


async def test_full_login_is_traced_without_secrets(
    traced_stub: Stub,
    traced: Server,
    spans: InMemorySpanExporter,
    inbox: Inbox,
    events: list[MutableMapping[str, Any]],
) -> None:
    alice = await seed_account(traced, login=LOGIN)
    spans.clear()  # the seeding's own spans (argon2.hash, a session) are not the calls'
    pending = (
        await traced_stub.Login(
            pb.LoginRequest(
                organization_siret=alice.organization_siret,
                login=LOGIN,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            ),
            metadata=(("traceparent", TRACEPARENT),),
        )
    ).pending_flow
    await traced_stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.latest_code(1)
    verified = await traced_stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    session_token = verified.login.session.token
    await traced_stub.ValidateSession(
        pb.ValidateSessionRequest(session_token=session_token, client=CLIENT)
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await traced_stub.Verify(
            pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
        )
    await traced_stub.Logout(pb.LogoutRequest(session_token=session_token, client=CLIENT))
    await wait_for_span(spans, "provider.send")

    finished = spans.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    rpc_names = [s.name for s in finished if s.name.startswith("authsvc.v1.")]
    assert sorted(rpc_names) == sorted(
        f"authsvc.v1.AuthService/{name}"
        for name in ("Login", "Challenge", "Verify", "ValidateSession", "Verify", "Logout")
    )
    for name in ("argon2.verify", "ratelimit.decide", "db.read", "provider.send"):
        assert name in by_name, f"no {name} span in {sorted(by_name)}"
    assert any(name in by_name for name in ("db.write", "db.statement"))

    # Login continues the caller's trace; the others start their own (no traceparent sent).
    [login] = by_name["authsvc.v1.AuthService/Login"]
    assert login.context is not None and login.parent is not None
    assert format(login.context.trace_id, "032x") == CALLER_TRACE
    assert format(login.parent.span_id, "016x") == CALLER_SPAN
    assert dict(login.attributes or {})["rpc.grpc.status"] == "OK"
    # The work of the call is inside its span: argon2 and the rate limit are Login's children.
    [argon2] = [s for s in by_name["argon2.verify"] if s.context.trace_id == login.context.trace_id]
    assert argon2.parent is not None and argon2.parent.span_id == login.context.span_id
    login_children = [
        s for s in finished if s.parent is not None and s.parent.span_id == login.context.span_id
    ]
    assert {"argon2.verify", "ratelimit.decide"} <= {s.name for s in login_children}
    assert any(s.name.startswith("db.") for s in login_children)

    # The refused second Verify: its status and reason on the span.
    replayed = [
        s
        for s in by_name["authsvc.v1.AuthService/Verify"]
        if dict(s.attributes or {})["rpc.grpc.status"] != "OK"
    ]
    assert len(replayed) == 1 and refused.value.code() != grpc.StatusCode.OK
    assert dict(replayed[0].attributes or {}).get("authsvc.reason")

    # The RPC's log line carries its span's trace id.
    rpc_lines = {event["method"]: event for event in events if event.get("event") == "rpc"}
    assert rpc_lines["Login"]["trace_id"] == CALLER_TRACE
    [validate] = by_name["authsvc.v1.AuthService/ValidateSession"]
    assert rpc_lines["ValidateSession"]["trace_id"] == format(validate.context.trace_id, "032x")

    secrets = {
        **code_forms(code),
        **phone_forms(),
        "password": PASSWORD,
        "login": LOGIN,
        "email": f"{LOGIN}@example.fr",
        "session token": session_token,
        "device token": verified.login.device_token,
        "flow id": pending.flow_id,
    }
    assert MOBILE in secrets.values()
    leaks = [leak for span in finished for leak in find_leaks(span.name, text_of(span), secrets)]
    assert leaks == []


async def test_refused_caller_is_traced_in_a_trace_of_its_own(
    traced: Server, spans: InMemorySpanExporter, events: list[MutableMapping[str, Any]]
) -> None:
    """Attack review: a caller without a key chose the trace id of our log lines (and forced
    sampling) with its traceparent. Its call is traced, but never in the trace it named."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{traced.port}") as channel:
        stub = pb_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ValidateSession(
                pb.ValidateSessionRequest(session_token="x" * 43, client=CLIENT),
                metadata=(("traceparent", TRACEPARENT),),
            )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The server ends its span after the refusal went out: wait for it (bounded).
    await wait_for_span(spans, "authsvc.v1.AuthService/ValidateSession")
    [span] = [s for s in spans.get_finished_spans() if s.name.endswith("/ValidateSession")]
    assert dict(span.attributes or {})["rpc.grpc.status"] == "PERMISSION_DENIED"
    assert span.parent is None
    own = format(span.context.trace_id, "032x")
    assert own != CALLER_TRACE
    [line] = [event for event in events if event.get("event") == "rpc"]
    assert line["trace_id"] == own


async def test_malformed_traceparent_starts_a_new_trace(
    traced: Server, traced_stub: Stub, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await traced_stub.ValidateSession(
            pb.ValidateSessionRequest(session_token="x" * 43, client=CLIENT),
            metadata=(("traceparent", "00-zz-not-a-trace-01"),),
        )
    await wait_for_span(spans, "authsvc.v1.AuthService/ValidateSession")
    [span] = [s for s in spans.get_finished_spans() if s.name.endswith("/ValidateSession")]
    assert span.parent is None and span.context.is_valid


# ---- the real exporter, to a real OTLP/HTTP receiver -------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", received
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_otlp_exporter_sends_to_a_real_receiver(
    receiver: tuple[str, list[tuple[str, str, bytes]]],
    settings: Settings,
    clock: FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, received = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "authsvc-test")
    tracing.configure(settings.model_copy(update={"tracing": True}).tracing)
    try:
        server = await create_server(settings, clock=clock, listen="127.0.0.1:0")
        await server.start()
        try:
            async with aio_channel(f"127.0.0.1:{server.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError):
                    await pb_grpc.AuthServiceStub(channel).ValidateSession(
                        pb.ValidateSessionRequest(session_token="x" * 43, client=CLIENT),
                        metadata=(("traceparent", TRACEPARENT),),
                    )
        finally:
            await server.stop(grace=0)
    finally:
        await asyncio.to_thread(tracing.shutdown)  # flushes the batch to the receiver
    assert received, "the exporter sent nothing"
    names: list[str] = []
    for path, content_type, body in received:
        assert path == "/v1/traces" and content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attributes["service.name"] == "authsvc-test"
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    names.append(span.name)
                    if span.name.endswith("/ValidateSession"):
                        assert span.trace_id.hex() == CALLER_TRACE
                        assert span.parent_span_id.hex() == CALLER_SPAN
    assert "authsvc.v1.AuthService/ValidateSession" in names
    assert "db.read" in names


async def test_an_exception_leaving_a_span_is_recorded_by_its_type_only(
    spans: InMemorySpanExporter,
) -> None:
    """Attack review: OpenTelemetry records an exception's message and stack by default; a
    provider's error quoting the number and the code reached the collector verbatim."""
    number, code = "+33612340000", "123456"
    with pytest.raises(RuntimeError), tracing.span("provider.send", **{"authsvc.channel": "sms"}):
        raise RuntimeError(f"gateway library choked on {number!r} / 'code {code}'")
    with pytest.raises(RuntimeError), tracing.db_span("db.write", "sqlite", text_of):
        raise RuntimeError(f"duplicate key (login)=(alice.{code})")
    finished = [s for s in spans.get_finished_spans() if s.name in ("provider.send", "db.write")]
    assert len(finished) == 2
    for span in finished:
        carried = text_of(span)
        assert number not in carried and code not in carried, carried
        assert dict(span.attributes or {})["error.type"] == "RuntimeError"
        assert not span.events

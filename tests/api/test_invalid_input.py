"""Bad input: a clear INVALID_ARGUMENT with a stable reason and field, and nothing written."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from leaks import captured_events
from pydantic import SecretStr
from sqlalchemy import func, select
from support import (
    CLIENT,
    PASSWORD,
    SIRET,
    Inbox,
    Seeded,
    aio_channel,
    failure_of,
    seed_account,
    sign_in,
)

from authsvc.clock import FrozenClock
from authsvc.config import ApiKey, Rate, Settings
from authsvc.db import Flow, OutboxMessage, Role, Session, TrustedDevice
from authsvc.server import Server, create_server
from authsvc.v1 import (
    account_service_pb2,
    account_service_pb2_grpc,
    auth_service_pb2_grpc,
    common_pb2,
)
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub
FLOW = "00000000-0000-4000-8000-000000000000"


def login(**overrides: object) -> pb.LoginRequest:
    fields: dict[str, object] = {
        "organization_siret": SIRET,
        "login": "alice",
        "password": pb.PasswordCredential(password=PASSWORD),
        "client": CLIENT,
    }
    fields.update(overrides)
    return pb.LoginRequest(**fields)  # type: ignore[arg-type]


BAD_LOGINS = [
    (login(organization_siret=""), "organization_siret"),
    (login(organization_siret="2118000150001"), "organization_siret"),
    (login(organization_siret="21180001500012"), "organization_siret"),  # Luhn
    (login(organization_siret="\uff12" * 14), "organization_siret"),  # full-width
    (login(login=""), "login"),
    (login(login="a" * 65), "login"),
    (login(login="alice\x00"), "login"),
    (login(login="al ice"), "login"),
    (pb.LoginRequest(organization_siret=SIRET, login="alice", client=CLIENT), "password"),
    (login(password=pb.PasswordCredential(password="")), "password.password"),
    (login(password=pb.PasswordCredential(password="x" * 129)), "password.password"),
    (login(device_token="short"), "device_token"),
    (login(device_token="!" * 43), "device_token"),
    (login(client=common_pb2.ClientContext()), "client.ip_address"),
    (login(client=common_pb2.ClientContext(ip_address="999.1.1.1")), "client.ip_address"),
    (
        login(client=common_pb2.ClientContext(ip_address="::1", user_agent="u" * 513)),
        "client.user_agent",
    ),
]


@pytest.mark.parametrize(("request_", "field"), BAD_LOGINS)
async def test_login_rejects_bad_fields(
    stub: Stub, alice: Seeded, server: Server, request_: pb.LoginRequest, field: str
) -> None:
    failure = await failure_of(stub.Login(request_))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert failure.metadata == {"field": field}
    assert await _rows(server) == (0, 0, 0, 0)


BAD_OTHERS = [
    ("Challenge", pb.ChallengeRequest(flow_id="not-a-uuid"), "flow_id"),
    ("Challenge", pb.ChallengeRequest(flow_id=FLOW, channel=99), "channel"),  # type: ignore[arg-type]
    ("Challenge", pb.ChallengeRequest(flow_id=FLOW, idempotency_key="k" * 129), "idempotency_key"),
    ("Challenge", pb.ChallengeRequest(flow_id=FLOW, idempotency_key="é"), "idempotency_key"),
    ("Verify", pb.VerifyRequest(flow_id=FLOW, code="12345"), "code"),
    ("Verify", pb.VerifyRequest(flow_id=FLOW, code="1234567"), "code"),
    ("Verify", pb.VerifyRequest(flow_id=FLOW, code="12345a"), "code"),
    ("Verify", pb.VerifyRequest(flow_id=FLOW, code="١٢٣٤٥٦"), "code"),  # Arabic-Indic digits
    ("Verify", pb.VerifyRequest(flow_id="", code="123456"), "flow_id"),
    ("ValidateSession", pb.ValidateSessionRequest(session_token=""), "session_token"),
    ("ValidateSession", pb.ValidateSessionRequest(session_token="x" * 44), "session_token"),
    ("Logout", pb.LogoutRequest(session_token="x"), "session_token"),
    ("AuthorizeSensitiveAction", pb.AuthorizeSensitiveActionRequest(), "session_token"),
]


@pytest.mark.parametrize(("method", "request_", "field"), BAD_OTHERS)
async def test_other_rpcs_reject_bad_fields(
    stub: Stub, server: Server, method: str, request_: object, field: str
) -> None:
    failure = await failure_of(getattr(stub, method)(request_))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert failure.metadata == {"field": field}
    assert await _rows(server) == (0, 0, 0, 0)


async def test_oversized_message_is_refused_before_parsing(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Login(login(login="a" * 100_000))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def _rows(server: Server) -> tuple[int, ...]:
    async with server.app.read() as db:
        return tuple(
            [
                await db.scalar(select(func.count()).select_from(model)) or 0
                for model in (Flow, Session, TrustedDevice, OutboxMessage)
            ]
        )


# ---- every RPC, every string field: no control character reaches a handler --------------------

AUTH_SERVICE = pb.DESCRIPTOR.services_by_name["AuthService"]
ACCOUNT_SERVICE = account_service_pb2.DESCRIPTOR.services_by_name["AccountService"]
ALL_METHODS = [*AUTH_SERVICE.methods, *ACCOUNT_SERVICE.methods]


def _string_paths(descriptor: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Every string field of a request message, nested ones by their dotted path."""
    paths: list[str] = []
    for field_ in descriptor.fields:
        if field_.type == FieldDescriptor.TYPE_STRING:
            paths.append(prefix + field_.name)
        elif field_.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            paths += _string_paths(field_.message_type, f"{prefix}{field_.name}.", depth + 1)
    return paths


def _with_text(method: Any, path: str, text: str) -> Any:
    request = message_factory.GetMessageClass(method.input_type)()
    *parents, last = path.split(".")
    target = request
    for parent in parents:
        target = getattr(target, parent)
    field_ = target.DESCRIPTOR.fields_by_name[last]
    if getattr(field_, "is_repeated", False):
        getattr(target, last).append(text)
    else:
        setattr(target, last, text)
    return request


STRING_FIELDS = [
    pytest.param(method, path, id=f"{method.name}.{path}")
    for method in ALL_METHODS
    for path in _string_paths(method.input_type)
]
CONTROL_TEXTS = ["a\x00b", "\x00", "x\x1by", "line\nbreak", "del\x7f", "c1\x85"]


def _path(method: Any) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


@pytest.mark.parametrize(("method", "field"), STRING_FIELDS)
async def test_control_characters_are_refused_in_every_string_field(
    channel: grpc.aio.Channel, server: Server, method: Any, field: str
) -> None:
    """Before the fix, a NUL reached the handlers: refused by some validators, passed to the
    database by others (PostgreSQL: INTERNAL), or refused naming another field."""
    call = channel.unary_unary(
        _path(method),
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=lambda body: body,
    )
    for text in CONTROL_TEXTS:
        failure = await failure_of(call(_with_text(method, field, text)))
        assert (failure.code, failure.reason, failure.metadata) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            {"field": field},
        ), (text, failure)
    assert await _rows(server) == (0, 0, 0, 0)


def test_every_rpc_is_covered() -> None:
    assert len(ALL_METHODS) == 19
    assert len(STRING_FIELDS) > 60


@pytest.fixture
async def admin_session(stub: Stub, server: Server, inbox: Inbox) -> str:
    admin = await seed_account(server, login="root", role=Role.ADMIN)
    return (await sign_in(stub, inbox, admin)).session.token


async def test_nul_in_unlink_issuer_is_invalid_field(
    channel: grpc.aio.Channel, admin_session: str
) -> None:
    """The attack: a signed-in user's NUL in the issuer reached PostgreSQL (INTERNAL)."""
    account = account_service_pb2_grpc.AccountServiceStub(channel)
    failure = await failure_of(
        account.UnlinkFederatedIdentity(
            account_service_pb2.UnlinkFederatedIdentityRequest(
                session_token=admin_session, issuer="https://idp.example\x00", client=CLIENT
            )
        )
    )
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        {"field": "issuer"},
    )


@pytest.mark.parametrize(
    "page_token",
    ["9999999999999999999", str(2**63), str(2**64), "1" + "0" * 30, "-1", "abc", "\uff11", "1.5"],
)
async def test_page_token_out_of_range_is_invalid_field(
    channel: grpc.aio.Channel, admin_session: str, page_token: str
) -> None:
    """The attack: a page token at or past 2^63 overflowed the BIGINT query (INTERNAL)."""
    account = account_service_pb2_grpc.AccountServiceStub(channel)
    failure = await failure_of(
        account.ListAuditEvents(
            account_service_pb2.ListAuditEventsRequest(
                session_token=admin_session, page_token=page_token, client=CLIENT
            )
        )
    )
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        {"field": "page_token"},
    )


async def test_the_largest_page_token_is_accepted(
    channel: grpc.aio.Channel, admin_session: str
) -> None:
    account = account_service_pb2_grpc.AccountServiceStub(channel)
    page = await account.ListAuditEvents(
        account_service_pb2.ListAuditEventsRequest(
            session_token=admin_session, page_token=str(2**63 - 1), client=CLIENT
        )
    )
    assert page.events  # the admin's own login is in the trail, below any sequence


# ---- undecodable bodies ------------------------------------------------------------------------

UNDECODABLE_BODIES = [
    pytest.param(b"\xff", id="0xff"),
    pytest.param(b"\x0a\xff", id="truncated-length"),
    pytest.param(b"\x08", id="truncated-varint"),
    pytest.param(b"\x0a\x02\xc3\x28", id="bad-utf8"),
    pytest.param(b"\x0f", id="end-group-tag"),
]


def _raw(channel: grpc.aio.Channel, method: Any) -> Any:
    # Identity serializers: the body goes on the wire exactly as given.
    return channel.unary_unary(_path(method), None, None)


@pytest.mark.parametrize("body", UNDECODABLE_BODIES)
@pytest.mark.parametrize("method", ALL_METHODS, ids=[m.name for m in ALL_METHODS])
async def test_undecodable_body_is_invalid_field_and_logged(
    channel: grpc.aio.Channel, server: Server, method: Any, body: bytes
) -> None:
    """Before the fix: UNKNOWN "Unexpected <class '...DecodeError'>", no ErrorInfo, no log."""
    with captured_events() as logs:
        call = _raw(channel, method)(body, metadata=(("x-request-id", "raw-1"),))
        failure = await failure_of(call)
        # The server writes its line once the answer is sent: wait for it (with a deadline).
        for _ in range(500):
            if any(line.get("event") == "rpc" for line in logs):
                break
            await asyncio.sleep(0.01)
    assert (failure.code, failure.reason, failure.metadata) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        {"field": "request"},
    )
    assert await call.details() == "the request body is not a valid message of this RPC"
    assert ("x-request-id", "raw-1") in tuple(await call.trailing_metadata() or ())
    lines = [line for line in logs if line.get("event") == "rpc"]
    assert len(lines) == 1, logs
    assert (lines[0]["method"], lines[0]["outcome"], lines[0]["reason"]) == (
        method.name,
        "INVALID_ARGUMENT",
        "INVALID_FIELD",
    )
    assert await _rows(server) == (0, 0, 0, 0)


async def test_undecodable_body_without_credentials_is_refused(server: Server) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare:
        failure = await failure_of(_raw(bare, AUTH_SERVICE.methods_by_name["Login"])(b"\xff"))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )


@pytest.fixture
def tight_settings(settings: Settings) -> Settings:
    limits = settings.rate_limits.model_copy(
        update={"login_ip": Rate(count=3, period_s=60), "verify_ip": Rate(count=3, period_s=60)}
    )
    return settings.model_copy(update={"rate_limits": limits})


@pytest.mark.parametrize("rpc", ["Login", "Verify"])
async def test_undecodable_bodies_are_rate_limited(
    tight_settings: Settings, clock: FrozenClock, rpc: str
) -> None:
    """Garbage is no way around the RPC's throttle: counted like a call that names no IP."""
    server = await create_server(tight_settings, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            call = _raw(channel, AUTH_SERVICE.methods_by_name[rpc])
            reasons = [(await failure_of(call(b"\xff"))).reason for _ in range(5)]
    finally:
        await server.stop(grace=0)
    assert reasons == ["INVALID_FIELD"] * 3 + ["RATE_LIMITED"] * 2


async def test_one_backends_garbage_never_spends_another_backends_budget(
    tight_settings: Settings, clock: FrozenClock
) -> None:
    """Garbage is charged to its own backend: a restricted backend flooding Verify with
    undecodable bodies must not make the other backends' address-less Verify calls
    RATE_LIMITED (a shared "unknown" bucket would)."""
    other_key = "other-backend-key-" + "x" * 32
    settings = tight_settings.model_copy(
        update={
            "api_keys": (
                *tight_settings.api_keys,
                ApiKey(name="flooder", key=SecretStr(other_key), rpcs=("Verify",)),
            )
        }
    )
    server = await create_server(settings, clock=clock, listen="127.0.0.1:0")
    await server.start()
    try:
        async with aio_channel(f"127.0.0.1:{server.port}") as channel:
            flood = _raw(channel, AUTH_SERVICE.methods_by_name["Verify"])
            metadata = (("authorization", f"Bearer {other_key}"),)
            flooded = [
                (await failure_of(flood(b"\xff", metadata=metadata))).reason for _ in range(5)
            ]
            stub = auth_service_pb2_grpc.AuthServiceStub(channel)
            mine = [
                (
                    await failure_of(
                        stub.Verify(pb.VerifyRequest(flow_id=str(uuid.uuid4()), code="123456"))
                    )
                ).reason
                for _ in range(3)
            ]
    finally:
        await server.stop(grace=0)
    assert flooded == ["INVALID_FIELD"] * 3 + ["RATE_LIMITED"] * 2
    assert mine == ["FLOW_NOT_FOUND"] * 3


async def test_an_undecodable_health_check_is_invalid_field_not_unknown(server: Server) -> None:
    """Health checking is open (no credentials), and garbage sent to it answered UNKNOWN
    naming the server's DecodeError; now INVALID_FIELD like every RPC of the API."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare:
        check = bare.unary_unary("/grpc.health.v1.Health/Check", None, None)
        failure = await failure_of(check(b"\xff"))
    assert (failure.code, failure.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD")
    assert failure.metadata == {"field": "request"}

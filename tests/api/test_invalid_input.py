"""Bad input: a clear INVALID_ARGUMENT with a stable reason and field, and nothing written."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import func, select
from support import CLIENT, PASSWORD, SIRET, Seeded, failure_of

from authsvc.db import Flow, OutboxMessage, Session, TrustedDevice
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

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

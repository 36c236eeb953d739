"""What the login's two statements write (statements.passwords, statements.logins), on SQLite
and PostgreSQL alike (PostgreSQL writes them from one data-modifying CTE, SQLite statement by
statement): the audit rows of refused logins, the trusted-device session and its trail."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from support import CLIENT, PASSWORD, Inbox, Seeded, failure_of, sign_in

from authsvc.db import AuditEvent, Session, TrustedDevice
from authsvc.otp import token_digest
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub


def login_request(
    who: Seeded, password: str, *, login: str = "", device: str = ""
) -> pb.LoginRequest:
    return pb.LoginRequest(
        organization_siret=who.organization_siret,
        login=login or who.login,
        password=pb.PasswordCredential(password=password),
        device_token=device,
        client=CLIENT,
    )


async def test_each_wrong_password_is_audited_with_the_answer_it_got(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded
) -> None:
    """Four INVALID_CREDENTIALS, then the failure that locks says ACCOUNT_LOCKED; a known login
    in its organisation's trail, an unknown one in nobody's."""
    threshold = server.app.settings.password_lock_threshold
    for name in (alice.login, "nobody-here"):
        answers = [
            (await failure_of(stub.Login(login_request(alice, f"wrong {i}", login=name)))).reason
            for i in range(threshold)
        ]
        assert answers == ["INVALID_CREDENTIALS"] * (threshold - 1) + ["ACCOUNT_LOCKED"]
    async with server.app.read() as db:
        rows = (
            await db.execute(
                select(AuditEvent.outcome, AuditEvent.target_account_id, AuditEvent.organization_id)
                .where(AuditEvent.event_type == "login.password")
                .order_by(AuditEvent.sequence)
            )
        ).all()
    outcomes = ["INVALID_CREDENTIALS"] * (threshold - 1) + ["ACCOUNT_LOCKED"]
    assert [row[0] for row in rows] == outcomes * 2
    assert {(row[1], row[2] is None) for row in rows[:threshold]} == {(alice.account_id, False)}
    assert {(row[1], row[2]) for row in rows[threshold:]} == {(None, None)}


async def test_a_trusted_device_session_carries_the_devices_last_code(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    device = (await sign_in(stub, inbox, alice)).device_token
    answer = await stub.Login(login_request(alice, PASSWORD, device=device))
    token = answer.session.token
    async with server.app.read() as db:
        verified_at = await db.scalar(
            select(TrustedDevice.verified_at).where(
                TrustedDevice.token_digest == token_digest(device)
            )
        )
        session = (
            await db.execute(
                select(Session.last_code_time, Session.account_id).where(
                    Session.token_digest == token_digest(token)
                )
            )
        ).one()
        trail = (
            await db.execute(
                select(AuditEvent.actor_account_id, AuditEvent.details).where(
                    AuditEvent.event_type == "login.trusted_device"
                )
            )
        ).all()
    assert session == (verified_at, alice.account_id)
    assert trail == [(alice.account_id, '{"method": "password"}')]

"""Sessions: validation, idle and absolute expiry, logout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from sqlalchemy import func, select
from support import CLIENT, PASSWORD, Inbox, Seeded, failure_of

from authsvc.clock import FrozenClock
from authsvc.db import AuditEvent
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


async def signed_in(stub: Stub, inbox: Inbox, who: Seeded) -> str:
    pending = (
        await stub.Login(
            pb.LoginRequest(
                organization_siret=who.organization_siret,
                login=who.login,
                password=pb.PasswordCredential(password=PASSWORD),
                client=CLIENT,
            )
        )
    ).pending_flow
    delivered = len(inbox.messages())  # before: Challenge may return once the SMS is out
    await stub.Challenge(pb.ChallengeRequest(flow_id=pending.flow_id, client=CLIENT))
    code = await inbox.latest_code(delivered + 1)
    verified = await stub.Verify(
        pb.VerifyRequest(flow_id=pending.flow_id, code=code, client=CLIENT)
    )
    return verified.login.session.token


def validate(
    stub: Stub, token: str
) -> grpc.aio.UnaryUnaryCall[pb.ValidateSessionRequest, pb.ValidateSessionResponse]:
    return stub.ValidateSession(pb.ValidateSessionRequest(session_token=token, client=CLIENT))


async def test_idle_timeout_after_thirty_minutes(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    token = await signed_in(stub, inbox, alice)
    clock.advance(29 * 60)
    await validate(stub, token)  # activity: the idle deadline moves
    clock.advance(29 * 60)
    await validate(stub, token)
    clock.advance(30 * 60)
    expired = await failure_of(validate(stub, token))
    assert (expired.code, expired.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_EXPIRED")


async def test_absolute_timeout_after_twelve_hours_despite_activity(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    token = await signed_in(stub, inbox, alice)
    for _ in range(12 * 3):  # every 20 minutes for 12 hours
        clock.advance(20 * 60 - 1)
        await validate(stub, token)
    clock.advance(36)  # exactly 12 h after sign-in
    assert (await failure_of(validate(stub, token))).reason == "SESSION_EXPIRED"


async def test_idle_deadline_never_passes_the_absolute_one(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    token = await signed_in(stub, inbox, alice)
    for _ in range(35):  # active every 20 minutes, up to 11 h 40
        clock.advance(20 * 60)
        info = await validate(stub, token)
    assert info.idle_expire_time == info.expire_time  # 30 min idle would pass 12 h: capped


async def test_logout_revokes_and_is_idempotent(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    token = await signed_in(stub, inbox, alice)
    other = await signed_in(stub, inbox, alice)
    await stub.Logout(pb.LogoutRequest(session_token=token, client=CLIENT))
    await stub.Logout(pb.LogoutRequest(session_token=token, client=CLIENT))
    assert (await failure_of(validate(stub, token))).reason == "SESSION_INVALID"
    assert (await validate(stub, other)).login == alice.login  # only that session ends
    async with server.app.read() as db:
        logouts = await db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.event_type == "session.logout",
                AuditEvent.actor_account_id == alice.account_id,
            )
        )
    assert logouts == 1  # audited once: the repeated Logout ended nothing


async def test_unknown_token(stub: Stub, alice: Seeded) -> None:
    unknown = await failure_of(validate(stub, "A" * 43))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")

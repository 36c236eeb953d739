"""Code rules: wrong codes, resends, expiry, single use, concurrency, idempotency."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import func, select
from support import CLIENT, MOBILE, PASSWORD, Inbox, Seeded, failure_of

from authsvc.clock import FrozenClock
from authsvc.db import Flow, OutboxMessage
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


async def open_flow(stub: Stub, who: Seeded) -> str:
    response = await stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    return response.pending_flow.flow_id


async def send(stub: Stub, flow_id: str, key: str = "") -> pb.ChallengeResponse:
    return await stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, idempotency_key=key, client=CLIENT)
    )


def verify(
    stub: Stub, flow_id: str, code: str
) -> grpc.aio.UnaryUnaryCall[pb.VerifyRequest, pb.VerifyResponse]:
    return stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_five_wrong_codes_kill_the_flow(stub: Stub, inbox: Inbox, alice: Seeded) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    code = await inbox.latest_code(1)
    for remaining in (4, 3, 2, 1, 0):
        failure = await failure_of(verify(stub, flow_id, wrong(code)))
        assert (failure.code, failure.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CODE_MISMATCH")
        assert failure.metadata == {"attempts_remaining": str(remaining)}
    dead = await failure_of(verify(stub, flow_id, code))  # even the right code is refused now
    assert (dead.code, dead.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FLOW_FAILED")
    again = await failure_of(send(stub, flow_id))
    assert again.reason == "FLOW_FAILED"


async def test_resend_cooldown_cap_and_failures_carry_over(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    too_soon = await failure_of(send(stub, flow_id))
    assert (too_soon.code, too_soon.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RESEND_TOO_SOON",
    )
    assert too_soon.retry_after == pytest.approx(30)
    clock.advance(29)
    assert (await failure_of(send(stub, flow_id))).retry_after == pytest.approx(1)

    first_code = await inbox.code_to(MOBILE)
    for _ in range(3):
        await failure_of(verify(stub, flow_id, wrong(first_code)))
    clock.advance(1)
    resent = await send(stub, flow_id)
    assert resent.sends_remaining == 3
    # (The holder's email about wrong codes after the password is queued in between.)
    second_code = await inbox.code_to(MOBILE)
    # A resend replaces the code and keeps the failure count: 2 wrong codes left, not 5.
    stale = await failure_of(verify(stub, flow_id, wrong(second_code)))
    assert stale.metadata == {"attempts_remaining": "1"}
    last = await failure_of(verify(stub, flow_id, wrong(second_code)))
    assert last.metadata == {"attempts_remaining": "0"}
    assert (await failure_of(verify(stub, flow_id, second_code))).reason == "FLOW_FAILED"


async def test_at_most_five_sends_per_flow(stub: Stub, alice: Seeded, clock: FrozenClock) -> None:
    flow_id = await open_flow(stub, alice)
    for expected_remaining in (4, 3, 2, 1, 0):
        assert (await send(stub, flow_id)).sends_remaining == expected_remaining
        clock.advance(30)
    capped = await failure_of(send(stub, flow_id))
    assert (capped.code, capped.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEND_LIMIT_REACHED",
    )


async def test_old_code_stops_working_after_a_resend(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    old = await inbox.latest_code(1)
    clock.advance(30)
    await send(stub, flow_id)
    new = await inbox.latest_code(2)
    if old != new:
        assert (await failure_of(verify(stub, flow_id, old))).reason == "CODE_MISMATCH"
    assert (await verify(stub, flow_id, new)).login.session.token


async def test_code_expires_after_five_minutes(
    stub: Stub, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    code = await inbox.latest_code(1)
    clock.advance(300)
    expired = await failure_of(verify(stub, flow_id, code))
    assert (expired.code, expired.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CODE_EXPIRED")
    await send(stub, flow_id)  # a new code may be asked within the flow's lifetime
    assert (await verify(stub, flow_id, await inbox.latest_code(2))).login.session.token


async def test_flow_expires(stub: Stub, alice: Seeded, clock: FrozenClock) -> None:
    flow_id = await open_flow(stub, alice)
    clock.advance(900)
    assert (await failure_of(send(stub, flow_id))).reason == "FLOW_EXPIRED"


async def test_verify_before_any_code_and_unknown_flow(stub: Stub, alice: Seeded) -> None:
    flow_id = await open_flow(stub, alice)
    assert (await failure_of(verify(stub, flow_id, "123456"))).reason == "NO_ACTIVE_CHALLENGE"
    unknown = await failure_of(verify(stub, "00000000-0000-4000-8000-000000000000", "123456"))
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "FLOW_NOT_FOUND")


async def test_a_used_code_cannot_be_replayed(stub: Stub, inbox: Inbox, alice: Seeded) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    code = await inbox.latest_code(1)
    await verify(stub, flow_id, code)
    replay = await failure_of(verify(stub, flow_id, code))
    assert (replay.code, replay.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FLOW_COMPLETED")


async def test_concurrent_right_codes_exactly_one_wins(
    stub: Stub, inbox: Inbox, alice: Seeded
) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    code = await inbox.latest_code(1)
    results = await asyncio.gather(
        *(verify(stub, flow_id, code) for _ in range(50)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, pb.VerifyResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 49
    # Losers see the closed flow, or (past 30 a minute) the per-account Verify limit.
    assert {loser.code() for loser in losers} <= {
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }


async def test_concurrent_wrong_codes_never_exceed_the_cap(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    code = await inbox.latest_code(1)
    guesses = [f"{(int(code) + i) % 1_000_000:06d}" for i in range(1, 51)]
    results = await asyncio.gather(*(failure_of(verify(stub, flow_id, guess)) for guess in guesses))
    mismatches = [r for r in results if r.reason == "CODE_MISMATCH"]
    assert len(mismatches) == 5
    # The rest find the flow dead, or hit the per-account Verify limit (30 a minute) first.
    assert {r.reason for r in results} - {"CODE_MISMATCH"} <= {"FLOW_FAILED", "RATE_LIMITED"}
    async with server.app.read() as db:
        flow = await db.scalar(select(Flow).where(Flow.failed_attempts >= 0))
    assert flow is not None and flow.failed_attempts == 5 and flow.status == "failed"


async def test_idempotency_key_returns_the_same_challenge_and_sends_once(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    flow_id = await open_flow(stub, alice)
    first = await send(stub, flow_id, key="retry-42")
    results = await asyncio.gather(*(send(stub, flow_id, key="retry-42") for _ in range(5)))
    assert {r.challenge_id for r in results} == {first.challenge_id}
    await inbox.wait_for(1)
    await asyncio.sleep(0.2)
    assert len(inbox.messages()) == 1
    async with server.app.read() as db:
        assert await db.scalar(select(func.count()).select_from(OutboxMessage)) == 1

"""Attacks that must fail, end to end over gRPC, on SQLite and PostgreSQL: password spraying
and lockouts (known and unknown logins alike), code guessing across flows and resends, rate
limits with their RetryInfo and QuotaFailure, SMS pumping (blocked country, one prefix)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import func, select
from support import CLIENT, MOBILE, PASSWORD, Inbox, Seeded, aio_channel, failure_of, seed_account

from authsvc.clock import FrozenClock
from authsvc.config import Rate, Settings
from authsvc.db import Account, OutboxMessage
from authsvc.policies import pumping
from authsvc.server import Server, create_server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import auth_service_pb2_grpc

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub


def login(stub: Any, who: Seeded, password: str = PASSWORD, *, login_name: str | None = None):  # type: ignore[no-untyped-def]
    return stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=login_name or who.login,
            password=pb.PasswordCredential(password=password),
            client=CLIENT,
        )
    )


async def open_flow(stub: Stub, who: Seeded) -> str:
    flow_id: str = (await login(stub, who)).pending_flow.flow_id
    return flow_id


async def send(stub: Stub, flow_id: str) -> pb.ChallengeResponse:
    return await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))


def verify(stub: Stub, flow_id: str, code: str):  # type: ignore[no-untyped-def]
    return stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))


def wrong(code: str, by: int = 1) -> str:
    return f"{(int(code) + by) % 1_000_000:06d}"


async def quota_of(call: Awaitable[object]) -> tuple[str, str, float | None]:
    """(reason, QuotaFailure subject, retry delay) of a refused call."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        reason, subject, retry = "", "", None
        for detail in status.details:
            info, quota = error_details_pb2.ErrorInfo(), error_details_pb2.QuotaFailure()
            delay = error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(quota):
                assert len(quota.violations) == 1
                subject = quota.violations[0].subject
            elif detail.Unpack(delay):
                retry = delay.retry_delay.ToTimedelta().total_seconds()
        return reason, subject, retry
    raise AssertionError("the call succeeded")


async def account_row(server: Server, who: Seeded) -> Account:
    async with server.app.read() as db:
        account = await db.scalar(select(Account).where(Account.id == who.account_id))
    assert account is not None
    return account


# ---- passwords ---------------------------------------------------------------------------------


async def test_twenty_concurrent_wrong_passwords_lock_at_exactly_five(
    stub: Stub, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    results = await asyncio.gather(
        *(failure_of(login(stub, alice, f"wrong password {i}")) for i in range(20))
    )
    reasons = [r.reason for r in results]
    # Failures 1-4 are wrong passwords; the 5th locks; every later one finds the lock.
    assert reasons.count("INVALID_CREDENTIALS") == 4
    assert reasons.count("ACCOUNT_LOCKED") == 16
    locked = [r for r in results if r.reason == "ACCOUNT_LOCKED"]
    assert {r.code for r in locked} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert all(r.retry_after == pytest.approx(900) for r in locked)
    account = await account_row(server, alice)
    assert (account.password_lock_count, account.failed_password_count) == (1, 0)
    # Locked: even the right password is refused, and says nothing about it.
    right = await failure_of(login(stub, alice))
    assert right.reason == "ACCOUNT_LOCKED" and right.retry_after == pytest.approx(900)
    clock.advance(900)
    assert (await login(stub, alice)).WhichOneof("result") == "pending_flow"


async def test_locks_double_and_unknown_logins_answer_the_same(
    stub: Stub, alice: Seeded, clock: FrozenClock
) -> None:
    """A known and an unknown login walked through the same attempts get the same answers."""

    async def walk(name: str) -> list[tuple[str, float | None]]:
        answers = []
        for _ in range(3):  # three locks: 15 min, 30 min, 60 min
            for attempt in range(6):
                failure = await failure_of(login(stub, alice, f"guess {attempt}", login_name=name))
                answers.append((failure.reason, failure.retry_after))
            assert failure.retry_after is not None
            clock.advance(failure.retry_after)
        return answers

    known, unknown = await walk(alice.login), await walk("nobody-here")
    assert known == unknown
    locks = [retry or 0.0 for reason, retry in known if reason == "ACCOUNT_LOCKED"]
    assert locks[0] == pytest.approx(900)
    assert max(locks) == pytest.approx(3600)


async def test_a_full_success_resets_the_password_counter(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    for _ in range(4):
        await failure_of(login(stub, alice, "wrong password"))
    flow_id = await open_flow(stub, alice)  # a right password alone resets nothing
    assert (await account_row(server, alice)).failed_password_count == 4
    await send(stub, flow_id)
    await verify(stub, flow_id, await inbox.code_to(MOBILE))
    assert (await account_row(server, alice)).failed_password_count == 0
    assert (await failure_of(login(stub, alice, "wrong again"))).reason == "INVALID_CREDENTIALS"


# ---- codes -------------------------------------------------------------------------------------


async def test_ten_wrong_codes_across_flows_and_resends_lock_the_second_factor(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    answers: list[str] = []
    for _ in range(2):
        flow_id = await open_flow(stub, alice)
        await send(stub, flow_id)
        code = await inbox.code_to(MOBILE)
        for _ in range(2):
            answers.append((await failure_of(verify(stub, flow_id, wrong(code)))).reason)
        clock.advance(30)
        await send(stub, flow_id)  # a resend resets nothing
        code = await inbox.code_to(MOBILE)
        for _ in range(3):
            answers.append((await failure_of(verify(stub, flow_id, wrong(code)))).reason)
    assert answers == ["CODE_MISMATCH"] * 9 + ["ACCOUNT_LOCKED"]
    # Locked for 15 minutes: no send, no check, not even of a right code.
    flow_id = await open_flow(stub, alice)
    refused = await failure_of(send(stub, flow_id))
    assert refused.reason == "ACCOUNT_LOCKED" and refused.retry_after == pytest.approx(900)
    async with server.app.read() as db:
        notices = await db.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.template == "code_failures")
        )
    assert notices == 1  # the holder is told
    clock.advance(900)
    flow_id = await open_flow(stub, alice)
    await send(stub, flow_id)
    await verify(stub, flow_id, await inbox.code_to(MOBILE))
    assert (await account_row(server, alice)).failed_code_count == 0


async def test_concurrent_wrong_codes_on_three_flows_count_exactly_ten(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    flows = [await open_flow(stub, alice) for _ in range(3)]
    codes = []
    for flow_id in flows:
        await send(stub, flow_id)
        codes.append(await inbox.code_to(MOBILE))
    results = await asyncio.gather(
        *(
            failure_of(verify(stub, flow_id, wrong(code, by)))
            for flow_id, code in zip(flows, codes, strict=True)
            for by in range(1, 11)
        )
    )
    reasons = [r.reason for r in results]
    assert reasons.count("CODE_MISMATCH") <= 9
    assert set(reasons) <= {"CODE_MISMATCH", "ACCOUNT_LOCKED", "FLOW_FAILED"}
    assert (await account_row(server, alice)).failed_code_count == 10


async def test_guessing_stays_bounded_by_the_hard_limit(
    stub: Stub, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """New flows and waiting out each lock: never more than 100 wrong codes are checked."""
    checked = 0
    for _ in range(12):
        for _ in range(2):
            flow_id = await open_flow(stub, alice)
            try:
                await send(stub, flow_id)
            except grpc.aio.AioRpcError as error:
                assert (await failure_of(_raise(error))).reason == "ACCOUNT_LOCKED"
                break
            code = await inbox.code_to(MOBILE)
            for _ in range(5):
                failure = await failure_of(verify(stub, flow_id, wrong(code)))
                if failure.reason in ("CODE_MISMATCH", "ACCOUNT_LOCKED"):
                    checked += failure.reason == "CODE_MISMATCH" or (
                        failure.reason == "ACCOUNT_LOCKED" and failure.retry_after is not None
                    )
                if failure.reason == "ACCOUNT_LOCKED":
                    break
        clock.advance(86400)  # every lock would have lifted; the per-number caps refilled
    account = await account_row(server, alice)
    assert account.failed_code_count == 100
    assert checked <= 100
    locked = await failure_of(send(stub, await open_flow(stub, alice)))
    assert locked.reason == "ACCOUNT_LOCKED"  # until an operator unlocks it


async def _raise(error: Exception) -> None:
    raise error


# ---- rate limits -------------------------------------------------------------------------------


async def _tight_server(settings: Settings, clock: FrozenClock, **limits: object) -> Server:
    """A server with some small limits (the defaults never get in the way of normal use)."""
    tightened = settings.rate_limits.model_copy(update=limits)
    server = await create_server(
        settings.model_copy(update={"rate_limits": tightened}), clock=clock, listen="127.0.0.1:0"
    )
    await server.start()
    return server


@pytest.fixture
async def tight(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    server = await _tight_server(settings, clock, login_ip=Rate(count=3, period_s=60))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def tight_prefix(settings: Settings, clock: FrozenClock) -> AsyncIterator[Server]:
    server = await _tight_server(settings, clock, send_prefix=Rate(count=3, period_s=3600))
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def tight_stub(tight: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{tight.port}") as channel:
        yield auth_service_pb2_grpc.AuthServiceStub(channel)


@pytest.fixture
async def prefix_stub(tight_prefix: Server) -> AsyncIterator[Stub]:
    async with aio_channel(f"127.0.0.1:{tight_prefix.port}") as channel:
        yield auth_service_pb2_grpc.AuthServiceStub(channel)


async def test_login_rate_limit_answers_retry_info_and_quota_failure(
    tight: Server, tight_stub: Stub, clock: FrozenClock
) -> None:
    who = await seed_account(tight)
    for _ in range(3):
        await failure_of(login(tight_stub, who, "wrong password"))
    reason, subject, retry = await quota_of(login(tight_stub, who))
    assert (reason, subject) == ("RATE_LIMITED", "ip")
    assert retry == pytest.approx(20)  # 3 per minute: one more every 20 s
    clock.advance(20)
    assert (await login(tight_stub, who)).WhichOneof("result") == "pending_flow"


async def test_at_most_ten_sends_an_hour_per_number(
    stub: Stub, alice: Seeded, clock: FrozenClock
) -> None:
    """Bursts of 5, then one every 12 minutes: never more than 10 in any hour."""
    for _ in range(5):
        await send(stub, await open_flow(stub, alice))
    reason, subject, retry = await quota_of(send(stub, await open_flow(stub, alice)))
    assert (reason, subject) == ("RATE_LIMITED", "phone_number")
    assert retry == pytest.approx(720)
    for _ in range(5):
        clock.advance(720)
        await send(stub, await open_flow(stub, alice))
    assert (await quota_of(send(stub, await open_flow(stub, alice))))[1] == "phone_number"


async def test_pumping_to_a_blocked_country_sends_nothing(stub: Stub, server: Server) -> None:
    abroad = await seed_account(server, login="abroad", phone="+447911123456")
    flow_id = await open_flow(stub, abroad)
    refused = await failure_of(send(stub, flow_id))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHANNEL_NOT_AVAILABLE",
    )
    async with server.app.read() as db:
        assert await db.scalar(select(func.count()).select_from(OutboxMessage)) == 0


async def test_pumping_one_prefix_trips_a_breaker_that_an_operator_resets(
    tight_prefix: Server, prefix_stub: Stub
) -> None:
    tight, tight_stub = tight_prefix, prefix_stub
    numbers = [f"+3367012340{i}" for i in range(5)]
    people = [
        await seed_account(tight, login=f"user{i}", phone=number)
        for i, number in enumerate(numbers)
    ]
    flows = [await open_flow(tight_stub, who) for who in people]
    for flow_id in flows[:3]:
        await send(tight_stub, flow_id)
    reason, subject, retry = await quota_of(send(tight_stub, flows[3]))
    assert (reason, subject) == ("RATE_LIMITED", "phone_prefix")
    assert retry == pytest.approx(3600)
    # Open: another number of the prefix is refused at once.
    assert (await quota_of(send(tight_stub, flows[4])))[1] == "phone_prefix"
    breakers = await pumping.list_breakers(tight.app)
    assert [b.prefix for b in breakers] == ["+3367012"]
    assert await pumping.reset_breaker(tight.app, "+3367012") == 1
    assert await pumping.list_breakers(tight.app) == []
    await send(tight_stub, flows[4])  # a fresh bucket after the reset

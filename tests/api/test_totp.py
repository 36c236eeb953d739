"""Authenticator apps (TOTP) as a second factor, over real gRPC on SQLite and PostgreSQL.

The codes are computed by pyotp from the otpauth:// URI the service returns (a differential
check of the URI, the secret and the Rust core), at the server's frozen clock.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pyotp
import pytest
from sqlalchemy import select
from support import (
    CLIENT,
    MOBILE,
    PASSWORD,
    TEST_API_KEY,
    Inbox,
    Seeded,
    failure_of,
    seed_account,
    sign_in,
    waiting_on_locks,
)
from support import step_up as grant_for

from authsvc import cli
from authsvc.clock import FrozenClock
from authsvc.config import Rate, RateLimits, Settings
from authsvc.db import Account, AuditEvent, Role, SecondFactor
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2, factor_service_pb2_grpc
from authsvc.v1 import factor_service_pb2 as fpb

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub
    from authsvc.v1.factor_service_pb2_grpc import FactorServiceAsyncStub as Factors

ENROLL = common_pb2.SENSITIVE_ACTION_ENROLL_FACTOR
REMOVE = common_pb2.SENSITIVE_ACTION_REMOVE_FACTOR
ADMIN_PHONE = "+33698765432"
OTHER_ADMIN_PHONE = "+33687654321"
OTHER_SIRET = "73282932000074"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Room for many flows and answers of one account within a minute (the concurrency test);
    # every other rule stays the default.
    roomy = Rate(count=1000, period_s=60)
    return settings.model_copy(
        update={
            "rate_limits": RateLimits(
                verify_account=roomy, step_up_account=roomy, login_account=roomy
            )
        }
    )


@pytest.fixture
async def factors(channel: grpc.aio.Channel) -> AsyncIterator[Factors]:
    yield factor_service_pb2_grpc.FactorServiceStub(channel)


def code_at(uri: str, at: datetime, *, offset_s: int = 0) -> str:
    parsed = pyotp.parse_uri(uri)
    assert isinstance(parsed, pyotp.TOTP)
    return str(parsed.at(at.timestamp() + offset_s))


def of(factor_id: str) -> pb.ActionValues:
    """The values of a REMOVE_FACTOR grant: the factor it removes."""
    return pb.ActionValues(factor_id=factor_id)


def phone_messages(inbox: Inbox) -> int:
    return sum(message["channel"] in ("sms", "voice") for message in inbox.messages())


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def enrol(
    stub: Stub, factors: Factors, inbox: Inbox, session: str, clock: FrozenClock
) -> tuple[str, str]:
    """Enrol and confirm an app; returns (factor id, otpauth URI). The clock then moves to the
    next step (the confirming code's step is used)."""
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await factors.BeginTotpEnrollment(
        fpb.BeginTotpEnrollmentRequest(
            session_token=session, grant_token=grant.grant_token, name="Work phone"
        )
    )
    await factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=session,
            factor_id=begun.factor_id,
            code=code_at(begun.otpauth_uri, clock.now()),
            client=CLIENT,
        )
    )
    clock.advance(30)
    return begun.factor_id, begun.otpauth_uri


async def login_flow(stub: Stub, who: Seeded) -> common_pb2.PendingFlow:
    answer = await stub.Login(
        pb.LoginRequest(
            organization_siret=who.organization_siret,
            login=who.login,
            password=pb.PasswordCredential(password=PASSWORD),
            client=CLIENT,
        )
    )
    return answer.pending_flow


async def totp_challenge(stub: Stub, flow_id: str) -> pb.ChallengeResponse:
    return await stub.Challenge(
        pb.ChallengeRequest(flow_id=flow_id, channel=common_pb2.CHANNEL_TOTP, client=CLIENT)
    )


def verify(
    stub: Stub, flow_id: str, code: str
) -> grpc.aio.UnaryUnaryCall[pb.VerifyRequest, pb.VerifyResponse]:
    return stub.Verify(pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT))


async def audit_rows(server: Server, event_type: str) -> list[tuple[str, dict[str, str]]]:
    async with server.app.read() as db:
        rows = (
            await db.execute(
                select(AuditEvent.outcome, AuditEvent.details)
                .where(AuditEvent.event_type == event_type)
                .order_by(AuditEvent.sequence)
            )
        ).all()
    return [(outcome, json.loads(details)) for outcome, details in rows]


# ---- enrolment ------------------------------------------------------------------------------


async def test_enrolment_needs_a_grant_of_its_own_action(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    request = fpb.BeginTotpEnrollmentRequest(session_token=session, name="Work phone")
    missing = await failure_of(factors.BeginTotpEnrollment(request))
    assert (missing.code, missing.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "GRANT_REQUIRED")
    other = await grant_for(stub, inbox, session, common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    request.grant_token = other.grant_token
    mismatch = await failure_of(factors.BeginTotpEnrollment(request))
    assert (mismatch.code, mismatch.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "GRANT_ACTION_MISMATCH",
    )
    async with server.app.read() as db:
        assert (await db.scalars(select(SecondFactor))).all() == []
    # Without a confirmed app, CHANNEL_TOTP is not available and no flow lists it.
    flow = await login_flow(stub, alice)
    assert common_pb2.CHANNEL_TOTP not in flow.channels
    refused = await failure_of(totp_challenge(stub, flow.flow_id))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "CHANNEL_NOT_AVAILABLE",
    )


async def test_enrol_confirm_and_log_in_with_the_app(
    stub: Stub,
    factors: Factors,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    clock: FrozenClock,
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    grant = await grant_for(stub, inbox, session, ENROLL)
    begun = await factors.BeginTotpEnrollment(
        fpb.BeginTotpEnrollmentRequest(
            session_token=session, grant_token=grant.grant_token, name="Work phone"
        )
    )
    parsed = pyotp.parse_uri(begun.otpauth_uri)
    assert isinstance(parsed, pyotp.TOTP)
    assert (parsed.secret, parsed.issuer, parsed.name) == (
        begun.secret_base32,
        server.app.settings.service_name,
        alice.login,
    )
    assert (parsed.digits, parsed.interval) == (6, 30)
    assert begun.qr_code_svg.startswith("<svg") and begun.qr_code_svg.endswith("</svg>")
    # Sealed at rest: the row holds no trace of the secret.
    async with server.app.read() as db:
        row = await db.scalar(select(SecondFactor))
    assert row is not None and row.confirmed_at is None
    assert begun.secret_base32.encode() not in row.secret_sealed
    assert parsed.byte_secret() not in row.secret_sealed
    # Not active before its confirmation.
    assert common_pb2.CHANNEL_TOTP not in (await login_flow(stub, alice)).channels
    confirm = fpb.ConfirmTotpEnrollmentRequest(
        session_token=session, factor_id=begun.factor_id, client=CLIENT
    )
    confirm.code = wrong(parsed.at(clock.now()))
    mismatch = await failure_of(factors.ConfirmTotpEnrollment(confirm))
    assert (mismatch.code, mismatch.reason) == (grpc.StatusCode.UNAUTHENTICATED, "CODE_MISMATCH")
    first_code = parsed.at(clock.now())
    confirm.code = first_code
    confirmed = await factors.ConfirmTotpEnrollment(confirm)
    assert (confirmed.factor.name, confirmed.factor.kind) == ("Work phone", fpb.FACTOR_KIND_TOTP)
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert [f.factor_id for f in listed.factors] == [begun.factor_id]
    assert not listed.factors[0].HasField("last_use_time")

    # The confirming code cannot then open a session: its step is used.
    flow = await login_flow(stub, alice)
    assert list(flow.channels)[-1] == common_pb2.CHANNEL_TOTP
    assert flow.default_channel == common_pb2.CHANNEL_SMS  # the phone stays the default
    sent_before = phone_messages(inbox)
    window = await totp_challenge(stub, flow.flow_id)
    assert window.channel == common_pb2.CHANNEL_TOTP
    assert window.delivery_status == common_pb2.DELIVERY_STATUS_UNSPECIFIED
    assert window.masked_destination == ""
    replayed = await failure_of(verify(stub, flow.flow_id, first_code))
    assert (replayed.reason, replayed.metadata) == ("CODE_MISMATCH", {"attempts_remaining": "4"})
    clock.advance(30)
    verified = await verify(stub, flow.flow_id, parsed.at(clock.now()))
    assert verified.login.session.token and verified.login.device_token
    check = await stub.ValidateSession(
        pb.ValidateSessionRequest(session_token=verified.login.session.token)
    )
    assert check.account_id == str(alice.account_id)
    await asyncio.sleep(0.2)
    assert phone_messages(inbox) == sent_before  # nothing was sent for the app's code

    # The same code again, on a new flow: refused and counted.
    again = await login_flow(stub, alice)
    await totp_challenge(stub, again.flow_id)
    reuse = await failure_of(verify(stub, again.flow_id, parsed.at(clock.now())))
    assert reuse.reason == "CODE_MISMATCH"
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=session))
    assert listed.factors[0].last_use_time.ToDatetime(tzinfo=UTC) == clock.now()

    assert [o for o, _ in await audit_rows(server, "factor.enrolment_started")] == ["OK"]
    assert [o for o, _ in await audit_rows(server, "factor.confirmation_failed")] == [
        "CODE_MISMATCH"
    ]
    assert [o for o, _ in await audit_rows(server, "factor.confirmed")] == ["OK"]
    used = [d for _, d in await audit_rows(server, "code.verified") if d.get("channel") == "totp"]
    assert [d["factor_id"] for d in used] == [begun.factor_id]
    failed = [
        (o, d["attempts"])
        for o, d in await audit_rows(server, "code.failed")
        if d.get("channel") == "totp"
    ]
    # Both were refused by the core (a step at or before the last accepted one never matches);
    # the step's claim decides only between concurrent answers (the test below).
    assert failed == [("CODE_MISMATCH", "1"), ("CODE_MISMATCH", "1")]


async def test_the_window_is_one_step_either_side(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    _, uri = await enrol(stub, factors, inbox, session, clock)
    clock.advance(120)  # well past the confirming code's step
    flow = (
        await stub.AuthorizeSensitiveAction(
            pb.AuthorizeSensitiveActionRequest(
                session_token=session,
                action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
                new_values=pb.ActionValues(),
                client=CLIENT,
            )
        )
    ).pending_flow
    assert common_pb2.CHANNEL_TOTP in flow.channels
    await totp_challenge(stub, flow.flow_id)
    for offset in (-60, 60):  # two steps away: refused
        failure = await failure_of(
            verify(stub, flow.flow_id, code_at(uri, clock.now(), offset_s=offset))
        )
        assert failure.reason == "CODE_MISMATCH"
    # One step back (a code typed as it changed) is taken, and the grant is the usual one.
    verified = await verify(stub, flow.flow_id, code_at(uri, clock.now(), offset_s=-30))
    assert verified.action_grant.action == common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD


async def test_wrong_app_codes_lock_the_factor_like_sms_codes(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    _, uri = await enrol(stub, factors, inbox, session, clock)
    settings = server.app.settings
    reasons: list[str] = []
    while len(reasons) < settings.code_lock_threshold:
        flow = await login_flow(stub, alice)
        await totp_challenge(stub, flow.flow_id)
        for _ in range(settings.max_code_attempts):
            failure = await failure_of(verify(stub, flow.flow_id, wrong(code_at(uri, clock.now()))))
            reasons.append(failure.reason)
            if len(reasons) == settings.code_lock_threshold:
                break
        else:
            dead = await failure_of(verify(stub, flow.flow_id, code_at(uri, clock.now())))
            assert dead.reason == "FLOW_FAILED"  # even the right code, once the flow is dead
    assert reasons[:-1] == ["CODE_MISMATCH"] * (settings.code_lock_threshold - 1)
    assert reasons[-1] == "ACCOUNT_LOCKED"
    # Locked: no window opens, no code is taken, by the app or by SMS.
    flow = await login_flow(stub, alice)
    locked = await failure_of(totp_challenge(stub, flow.flow_id))
    assert locked.reason == "ACCOUNT_LOCKED" and locked.retry_after
    await inbox.next_to(f"{alice.login}@example.fr")  # the holder is told, as for SMS codes


async def test_one_code_on_fifty_flows_at_once_exactly_one_wins(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """The step's claim decides across flows: 50 step-up flows answered with one code at once
    give one grant; the others are refused (a replay is a wrong code; the wrong codes then lock
    the factor)."""
    session = (await sign_in(stub, inbox, alice)).session.token
    factor_id, uri = await enrol(stub, factors, inbox, session, clock)
    flows = []
    for _ in range(50):
        opened = await stub.AuthorizeSensitiveAction(
            pb.AuthorizeSensitiveActionRequest(
                session_token=session,
                action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
                new_values=pb.ActionValues(),
                client=CLIENT,
            )
        )
        await totp_challenge(stub, opened.pending_flow.flow_id)
        flows.append(opened.pending_flow.flow_id)
    code = code_at(uri, clock.now())
    results = await asyncio.gather(
        *(verify(stub, flow_id, code) for flow_id in flows), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, pb.VerifyResponse)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert (len(winners), len(losers)) == (1, 49)
    assert {loser.code() for loser in losers} <= {
        grpc.StatusCode.UNAUTHENTICATED,  # CODE_MISMATCH: the step was taken
        grpc.StatusCode.FAILED_PRECONDITION,  # ACCOUNT_LOCKED once the replays add up
    }
    async with server.app.read() as db:
        row = await db.get(SecondFactor, uuid.UUID(factor_id))
    assert row is not None and row.last_used_step == int(clock.now().timestamp()) // 30


# ---- administration -------------------------------------------------------------------------


async def test_an_administrator_lists_and_removes_a_members_app(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    alice_session = (await sign_in(stub, inbox, alice)).session.token
    factor_id, _ = await enrol(stub, factors, inbox, alice_session, clock)
    outsider = await seed_account(
        server, login="olga", phone=OTHER_ADMIN_PHONE, siret=OTHER_SIRET, role=Role.ADMIN
    )
    outsider_session = (await sign_in(stub, inbox, outsider, phone=OTHER_ADMIN_PHONE)).session.token
    target = str(alice.account_id)
    # Another organisation's administrator sees nothing and removes nothing.
    hidden = await failure_of(
        factors.ListFactors(
            fpb.ListFactorsRequest(session_token=outsider_session, account_id=target)
        )
    )
    assert (hidden.code, hidden.reason) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    refused = await failure_of(
        stub.AuthorizeSensitiveAction(
            pb.AuthorizeSensitiveActionRequest(
                session_token=outsider_session,
                action=REMOVE,
                target_account_id=target,
                new_values=pb.ActionValues(factor_id=factor_id),
                client=CLIENT,
            )
        )
    )
    assert refused.reason == "PERMISSION_DENIED"
    own_grant = await grant_for(
        stub, inbox, outsider_session, REMOVE, values=of(factor_id), phone=OTHER_ADMIN_PHONE
    )
    foreign = await failure_of(
        factors.RemoveFactor(
            fpb.RemoveFactorRequest(
                session_token=outsider_session,
                grant_token=own_grant.grant_token,
                factor_id=factor_id,
                account_id=target,
            )
        )
    )
    assert foreign.reason == "PERMISSION_DENIED"
    # A member cannot list another member's factors.
    bob = await seed_account(server, login="bob", phone=ADMIN_PHONE)
    bob_session = (await sign_in(stub, inbox, bob, phone=ADMIN_PHONE)).session.token
    peer = await failure_of(
        factors.ListFactors(fpb.ListFactorsRequest(session_token=bob_session, account_id=target))
    )
    assert peer.reason == "PERMISSION_DENIED"

    # The organisation's administrator: lists, then removes with their own grant.
    admin = await seed_account(server, login="ada", phone="+33611223344", role=Role.ADMIN)
    admin_session = (await sign_in(stub, inbox, admin, phone="+33611223344")).session.token
    listed = await factors.ListFactors(
        fpb.ListFactorsRequest(session_token=admin_session, account_id=target)
    )
    assert [(f.factor_id, f.name) for f in listed.factors] == [(factor_id, "Work phone")]
    assert "secret" not in str(listed).lower()
    grant = await grant_for(
        stub,
        inbox,
        admin_session,
        REMOVE,
        target=target,
        values=of(factor_id),
        phone="+33611223344",
    )
    removed = await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=admin_session,
            grant_token=grant.grant_token,
            factor_id=factor_id,
            account_id=target,
        )
    )
    assert removed.revoked_sessions >= 1
    gone = await failure_of(
        stub.ValidateSession(pb.ValidateSessionRequest(session_token=alice_session))
    )
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    notice = await inbox.next_to(f"{alice.login}@example.fr")
    assert "Work phone" in notice["text"]
    assert [d["by"] for _, d in await audit_rows(server, "factor.removed")] == ["admin"]
    # Gone: no flow lists it, no window opens.
    flow = await login_flow(stub, alice)
    assert common_pb2.CHANNEL_TOTP not in flow.channels
    assert (await failure_of(totp_challenge(stub, flow.flow_id))).reason == "CHANNEL_NOT_AVAILABLE"


async def test_the_holder_removes_their_own_app_and_keeps_their_session(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, clock: FrozenClock
) -> None:
    first = await sign_in(stub, inbox, alice)
    second = (await sign_in(stub, inbox, alice)).session.token
    factor_id, _ = await enrol(stub, factors, inbox, first.session.token, clock)
    grant = await grant_for(stub, inbox, first.session.token, REMOVE, values=of(factor_id))
    removed = await factors.RemoveFactor(
        fpb.RemoveFactorRequest(
            session_token=first.session.token, grant_token=grant.grant_token, factor_id=factor_id
        )
    )
    assert removed.revoked_sessions == 1
    await stub.ValidateSession(pb.ValidateSessionRequest(session_token=first.session.token))
    gone = await failure_of(stub.ValidateSession(pb.ValidateSessionRequest(session_token=second)))
    assert gone.code == grpc.StatusCode.UNAUTHENTICATED
    listed = await factors.ListFactors(fpb.ListFactorsRequest(session_token=first.session.token))
    assert list(listed.factors) == []


async def test_bad_input_is_invalid_argument_and_changes_nothing(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    cases: list[tuple[Awaitable[object], str]] = [
        (
            factors.BeginTotpEnrollment(
                fpb.BeginTotpEnrollmentRequest(
                    session_token=session, grant_token="x" * 43, name=" "
                )
            ),
            "name",
        ),
        (
            factors.BeginTotpEnrollment(
                fpb.BeginTotpEnrollmentRequest(
                    session_token=session, grant_token="x" * 43, name="n" * 65
                )
            ),
            "name",
        ),
        (
            factors.ConfirmTotpEnrollment(
                fpb.ConfirmTotpEnrollmentRequest(
                    session_token=session, factor_id="not-a-uuid", code="123456", client=CLIENT
                )
            ),
            "factor_id",
        ),
        (
            factors.ConfirmTotpEnrollment(
                fpb.ConfirmTotpEnrollmentRequest(
                    session_token=session,
                    factor_id=str(alice.account_id),
                    code="12345a",
                    client=CLIENT,
                )
            ),
            "code",
        ),
        (
            factors.ListFactors(fpb.ListFactorsRequest(session_token=session, account_id="x")),
            "account_id",
        ),
        (
            factors.RemoveFactor(
                fpb.RemoveFactorRequest(
                    session_token=session, grant_token="x" * 43, factor_id="zzz"
                )
            ),
            "factor_id",
        ),
    ]
    for call, field in cases:
        failure = await failure_of(call)
        assert (failure.code, failure.reason, failure.metadata.get("field")) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_FIELD",
            field,
        )
    unknown = await failure_of(
        factors.ConfirmTotpEnrollment(
            fpb.ConfirmTotpEnrollmentRequest(
                session_token=session, factor_id=str(alice.account_id), code="123456", client=CLIENT
            )
        )
    )
    assert (unknown.code, unknown.reason) == (grpc.StatusCode.NOT_FOUND, "FACTOR_NOT_FOUND")
    async with server.app.read() as db:
        assert (await db.scalars(select(SecondFactor))).all() == []


# ---- authsvc client -------------------------------------------------------------------------


async def test_the_client_enrols_an_app_with_a_qr_code_in_the_terminal(
    stub: Stub,
    inbox: Inbox,
    alice: Seeded,
    server: Server,
    clock: FrozenClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README's walk-through: step-up, challenge, verify, totp-enrol, totp-confirm; then
    step-up remove-factor --factor, challenge, verify, remove-factor."""
    monkeypatch.chdir(tmp_path)  # the client keeps its state in var/client.json
    monkeypatch.setenv("AUTHSVC_CLIENT_API_KEY", TEST_API_KEY)
    session = (await sign_in(stub, inbox, alice)).session.token
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "client.json").write_text(json.dumps({"session_token": session}))

    async def client(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            await asyncio.to_thread(
                cli.main, ["client", "--server", f"127.0.0.1:{server.port}", *argv]
            )
        printed = capsys.readouterr()
        assert exited.value.code == 0, printed.err
        return printed.out

    await client("step-up", "enrol-factor")
    await client("challenge")
    await client("verify", await inbox.code_to(MOBILE))
    printed = await client("totp-enrol", "--name", "Work phone")
    uri = next(line for line in printed.splitlines() if line.startswith("otpauth://totp/"))
    assert "█" in printed or "▀" in printed or "▄" in printed  # the QR code's blocks
    await client("totp-confirm", code_at(uri, clock.now()))
    async with server.app.read() as db:
        row = await db.scalar(select(SecondFactor))
    assert row is not None and row.confirmed_at is not None and row.name == "Work phone"
    # And removes it: the step-up names the factor, its grant removes that one.
    await client("step-up", "remove-factor", "--factor", str(row.id))
    await client("challenge")
    await client("verify", await inbox.code_to(MOBILE))
    await client("remove-factor", str(row.id))
    async with server.app.read() as db:
        assert await db.scalar(select(SecondFactor)) is None


async def test_concurrent_enrolments_leave_one_pending_app(
    stub: Stub, factors: Factors, inbox: Inbox, alice: Seeded, server: Server, clock: FrozenClock
) -> None:
    """Three enrolments of one account at once (three grants): each replaces the one before it,
    queued on the account's row, so one pending app stays, never three, and none fails. On
    PostgreSQL the test holds the account's row until all of them wait, the worst case."""
    session = (await sign_in(stub, inbox, alice)).session.token
    tokens = [(await grant_for(stub, inbox, session, ENROLL)).grant_token for _ in range(3)]
    calls = [
        factors.BeginTotpEnrollment(
            fpb.BeginTotpEnrollmentRequest(session_token=session, grant_token=token, name="App")
        )
        for token in tokens
    ]
    if server.app.db.dialect == "sqlite":
        begun = await asyncio.gather(*calls)
    else:
        async with server.app.write() as holder:
            await holder.execute(
                select(Account.id).where(Account.id == alice.account_id).with_for_update()
            )
            racing = asyncio.gather(*calls)
            await waiting_on_locks(server, len(calls))
        begun = await racing
    async with server.app.read() as db:
        pending = (
            await db.scalars(
                select(SecondFactor.id).where(
                    SecondFactor.account_id == alice.account_id,
                    SecondFactor.confirmed_at.is_(None),
                )
            )
        ).all()
    assert len(pending) == 1
    (kept,) = [started for started in begun if started.factor_id == str(pending[0])]
    for started in begun:
        if started is kept:
            continue
        replaced = await failure_of(
            factors.ConfirmTotpEnrollment(
                fpb.ConfirmTotpEnrollmentRequest(
                    session_token=session,
                    factor_id=started.factor_id,
                    code=code_at(started.otpauth_uri, clock.now()),
                    client=CLIENT,
                )
            )
        )
        assert replaced.reason == "FACTOR_NOT_FOUND"
    confirmed = await factors.ConfirmTotpEnrollment(
        fpb.ConfirmTotpEnrollmentRequest(
            session_token=session,
            factor_id=kept.factor_id,
            code=code_at(kept.otpauth_uri, clock.now()),
            client=CLIENT,
        )
    )
    assert confirmed.factor.factor_id == kept.factor_id

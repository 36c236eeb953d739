"""What each hot RPC costs the database, counted (db/access.py RoundTrips), not timed.

A round trip is a statement, a transaction's BEGIN / COMMIT / ROLLBACK on PostgreSQL, or one
hop to SQLite's database thread. The targets of docs/performance.md are asserted here, so that
a change that adds a statement to a hot path fails instead of slowing the peak quietly."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import Engine, event, select
from support import (
    CLIENT,
    MOBILE,
    OTHER_SIRET,
    PASSWORD,
    Inbox,
    Seeded,
    failure_of,
    sign_in,
    step_up,
)

from authsvc.clock import FrozenClock
from authsvc.db import AuditEvent, OutboxMessage
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub


T = TypeVar("T")


def trips(server: Server, method: str) -> int:
    return server.app.db.round_trips.last[method]


async def test_validate_session_is_one_round_trip(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox, clock: FrozenClock
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    request = pb.ValidateSessionRequest(session_token=session)
    await stub.ValidateSession(request)
    assert trips(server, "ValidateSession") == 1
    # Past the touch interval, the throttled write is one statement (PostgreSQL) or hop more.
    clock.advance(server.app.settings.session_touch_interval_s + 1)
    await stub.ValidateSession(request)
    assert trips(server, "ValidateSession") == 2
    await stub.ValidateSession(request)
    assert trips(server, "ValidateSession") == 1
    # An unknown token costs the same read, and nothing else.
    unknown = pb.ValidateSessionRequest(session_token=secrets.token_urlsafe(32))
    assert (await failure_of(stub.ValidateSession(unknown))).reason == "SESSION_INVALID"
    assert trips(server, "ValidateSession") == 1


async def test_logout_is_one_round_trip_known_or_not(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    await stub.Logout(pb.LogoutRequest(session_token=session, client=CLIENT))
    assert trips(server, "Logout") == 1
    await stub.Logout(pb.LogoutRequest(session_token=session, client=CLIENT))
    assert trips(server, "Logout") == 1


async def test_redeeming_a_grant_is_two_round_trips_with_the_session_check(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    session = (await sign_in(stub, inbox, alice)).session.token
    action = common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD
    grant = (await step_up(stub, inbox, session, action)).grant_token
    request = pb.RedeemActionGrantRequest(
        session_token=session, grant_token=grant, action=action, client=CLIENT
    )
    await stub.RedeemActionGrant(request)
    assert trips(server, "RedeemActionGrant") == 2  # the session's read, the grant spent
    # A refusal reads the grant's state to say why: one statement more on PostgreSQL, in the
    # same hop on SQLite.
    assert (await failure_of(stub.RedeemActionGrant(request))).reason == "GRANT_ALREADY_USED"
    assert trips(server, "RedeemActionGrant") == (3 if server.app.db.dialect == "postgresql" else 2)


async def counted(server: Server, method: str, call: Awaitable[T]) -> tuple[T, int]:
    """The outcome of one call of `method` and its round trips. The server records the count
    when its handler ends, which for a failure may be just after the client heard the answer:
    forget the previous count, then wait for this one."""
    server.app.db.round_trips.last.pop(method, None)
    outcome = await call
    for _ in range(500):
        if method in server.app.db.round_trips.last:
            return outcome, server.app.db.round_trips.last[method]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{method} never recorded its round trips")


async def _pending_login(stub: AuthServiceAsyncStub, who: Seeded) -> str:
    request = pb.LoginRequest(
        organization_siret=who.organization_siret,
        login=who.login,
        password=pb.PasswordCredential(password=PASSWORD),
        client=CLIENT,
    )
    return (await stub.Login(request)).pending_flow.flow_id


async def test_challenge_reads_the_flow_and_the_breaker_and_sends_in_one_decision(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    flow_id = await _pending_login(stub, alice)
    request = pb.ChallengeRequest(flow_id=flow_id, client=CLIENT)
    _, challenge_trips = await counted(server, "Challenge", stub.Challenge(request))
    # The flow, the prefix's breaker, the send (challenge + message + audit row), and at most
    # two looks at the message while the in-process dispatcher delivers it (was 22 / 17).
    assert challenge_trips <= 5
    assert await inbox.code_to(MOBILE)


async def test_verify_is_two_round_trips_right_or_wrong(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    flow_id = await _pending_login(stub, alice)
    await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
    code = await inbox.code_to(MOBILE)
    wrong = pb.VerifyRequest(flow_id=flow_id, code=_another(code), client=CLIENT)
    # The flow's read, then one decision: the attempt and the account's failure counted, the
    # audit row, and (the first wrong code of the day after a first factor) the holder's notice.
    for _ in range(2):
        failure, verify_trips = await counted(server, "Verify", failure_of(stub.Verify(wrong)))
        assert (failure.reason, verify_trips) == ("CODE_MISMATCH", 2)
    notice = await inbox.next_to(f"{alice.login}@example.fr")
    assert notice["text"]
    # What the one statement recorded is what the counts were, as the audit trail says them.
    assert await _audited(server, "code.failed") == [
        ("CODE_MISMATCH", {"attempts": str(n), "consecutive": str(n), "flow_id": flow_id})
        for n in (1, 2)
    ]
    # The right code: the read, then one decision (flow completed, counters reset, phone
    # verified, session, trusted device, audit row).
    right = pb.VerifyRequest(flow_id=flow_id, code=code, client=CLIENT)
    verified, verify_trips = await counted(server, "Verify", stub.Verify(right))
    assert verify_trips == 2
    request = pb.ValidateSessionRequest(session_token=verified.login.session.token)
    assert (await stub.ValidateSession(request)).account_id == str(alice.account_id)
    # Used: the read says so, nothing else is asked of the database.
    failure, verify_trips = await counted(server, "Verify", failure_of(stub.Verify(right)))
    assert (failure.reason, verify_trips) == ("FLOW_COMPLETED", 1)


async def test_a_wrong_code_that_locks_the_factor_is_still_one_decision(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    """The lock and its notice are part of the failure's decision; only the answer's
    retry time is read again (a rare path)."""
    threshold = server.app.settings.code_lock_threshold
    attempts = server.app.settings.max_code_attempts
    reasons = []
    for _ in range(threshold // attempts + 1):
        flow_id = await _pending_login(stub, alice)
        await stub.Challenge(pb.ChallengeRequest(flow_id=flow_id, client=CLIENT))
        code = await inbox.code_to(MOBILE)
        wrong = pb.VerifyRequest(flow_id=flow_id, code=_another(code), client=CLIENT)
        for _ in range(attempts):
            failure, verify_trips = await counted(server, "Verify", failure_of(stub.Verify(wrong)))
            reasons.append(failure.reason)
            if failure.reason == "ACCOUNT_LOCKED":
                assert verify_trips == 3
                assert len(reasons) == threshold
                outcome, details = (await _audited(server, "code.failed"))[-1]
                assert (outcome, details["consecutive"]) == ("ACCOUNT_LOCKED", str(threshold))
                assert sorted(await _emails(server)) == ["code_failures", "wrong_codes"]
                return
            assert verify_trips == 2
    raise AssertionError(f"never locked: {reasons}")


async def _audited(server: Server, event_type: str) -> list[tuple[str, dict[str, str]]]:
    async with server.app.read() as db:
        rows = (
            await db.execute(
                select(AuditEvent.outcome, AuditEvent.details)
                .where(AuditEvent.event_type == event_type)
                .order_by(AuditEvent.sequence)
            )
        ).all()
    return [
        (outcome, {k: v for k, v in json.loads(details).items() if k != "purpose"})
        for outcome, details in rows
    ]


async def _emails(server: Server) -> list[str]:
    async with server.app.read() as db:
        return list(
            await db.scalars(select(OutboxMessage.template).where(OutboxMessage.channel == "email"))
        )


def _another(code: str) -> str:
    return "".join(str((int(digit) + 1) % 10) for digit in code)


# ---- Login ------------------------------------------------------------------------------------


def login_request(
    who: Seeded, password: str, *, device: str = "", login: str = "", siret: str = ""
) -> pb.LoginRequest:
    return pb.LoginRequest(
        organization_siret=siret or who.organization_siret,
        login=login or who.login,
        password=pb.PasswordCredential(password=password),
        device_token=device,
        client=CLIENT,
    )


async def test_a_trusted_device_login_is_two_round_trips(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    """One before argon2 (the account found, the check reserved), one after (the verdict: the
    reservation released, the device's trust read, the session and its audit row written)."""
    device = (await sign_in(stub, inbox, alice)).device_token
    answer = await stub.Login(login_request(alice, PASSWORD, device=device))
    assert answer.WhichOneof("result") == "session"
    assert trips(server, "Login") == 2


async def test_a_login_that_needs_a_code_is_two_round_trips(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    """Without a device, or with a device that is not trusted: the verdict opens the flow."""
    answer = await stub.Login(login_request(alice, PASSWORD))
    assert answer.WhichOneof("result") == "pending_flow"
    assert trips(server, "Login") == 2
    untrusted = await stub.Login(login_request(alice, PASSWORD, device=secrets.token_urlsafe(32)))
    assert untrusted.WhichOneof("result") == "pending_flow"
    assert trips(server, "Login") == 2


class Statements:
    """The text of every statement sent to the database while it listens (any engine, any
    thread): what a refused login runs, compared between kinds of refusal."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __enter__(self) -> Statements:
        event.listen(Engine, "before_cursor_execute", self._heard)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._heard)

    def _heard(self, _connection: object, _cursor: object, statement: str, *_rest: object) -> None:
        # Not the background dispatcher's polls nor anyone's BEGIN: the login's statements
        # (the round trips, BEGIN included, are counted apart).
        if "outbox_messages" not in statement and not statement.startswith("BEGIN"):
            self.texts.append(statement)


async def test_wrong_password_unknown_login_and_unknown_organisation_cost_the_same(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded
) -> None:
    """The three refusals that must not tell each other apart: one argon2 verification each,
    two round trips each, and the very same statements (only their parameters differ)."""
    passwords = server.app.passwords
    kinds = {
        "wrong password": login_request(alice, "not the password"),
        "unknown login": login_request(alice, "not the password", login="nobody-here"),
        "unknown organisation": login_request(alice, "not the password", siret=OTHER_SIRET),
    }
    seen: dict[str, tuple[str, int, int, list[str]]] = {}
    for kind, request in kinds.items():
        before = passwords.verifications
        with Statements() as statements:
            reason = (await failure_of(stub.Login(request))).reason
        seen[kind] = (
            reason,
            trips(server, "Login"),
            passwords.verifications - before,
            statements.texts,
        )
    assert {kind: seen[kind][:3] for kind in kinds} == {
        kind: ("INVALID_CREDENTIALS", 2, 1) for kind in kinds
    }
    shapes = {kind: seen[kind][3] for kind in kinds}
    assert shapes["wrong password"]  # the listener heard the login's statements
    assert shapes["unknown login"] == shapes["wrong password"]
    assert shapes["unknown organisation"] == shapes["wrong password"]


async def test_a_locked_login_is_refused_in_one_round_trip_known_or_not(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded
) -> None:
    """ACCOUNT_LOCKED is answered from the reservation's own result: nothing else runs."""
    threshold = server.app.settings.password_lock_threshold
    for name in (alice.login, "nobody-here"):
        for i in range(threshold):
            await failure_of(stub.Login(login_request(alice, f"wrong {i}", login=name)))
        locked = await failure_of(stub.Login(login_request(alice, PASSWORD, login=name)))
        assert locked.reason == "ACCOUNT_LOCKED"
        assert trips(server, "Login") == 1


async def test_a_step_up_opens_its_flow_in_two_round_trips_after_the_session(
    server: Server, stub: AuthServiceAsyncStub, alice: Seeded, inbox: Inbox
) -> None:
    """The session's read, the caller's read, the flow with its audit row (one statement on
    PostgreSQL, one hop on SQLite)."""
    session = (await sign_in(stub, inbox, alice)).session.token
    await stub.AuthorizeSensitiveAction(
        pb.AuthorizeSensitiveActionRequest(
            session_token=session,
            action=common_pb2.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD,
            client=CLIENT,
        )
    )
    assert trips(server, "AuthorizeSensitiveAction") == 3

"""What each hot RPC costs the database, counted (db/access.py RoundTrips), not timed.

A round trip is a statement, a transaction's BEGIN / COMMIT / ROLLBACK on PostgreSQL, or one
hop to SQLite's database thread. The targets of docs/performance.md are asserted here, so that
a change that adds a statement to a hot path fails instead of slowing the peak quietly."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from sqlalchemy import Engine, event
from support import CLIENT, OTHER_SIRET, PASSWORD, Inbox, Seeded, failure_of, sign_in, step_up

from authsvc.clock import FrozenClock
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub


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

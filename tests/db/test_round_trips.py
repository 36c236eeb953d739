"""What each hot RPC costs the database, counted (db/access.py RoundTrips), not timed.

A round trip is a statement, a transaction's BEGIN / COMMIT / ROLLBACK on PostgreSQL, or one
hop to SQLite's database thread. The targets of docs/performance.md are asserted here, so that
a change that adds a statement to a hot path fails instead of slowing the peak quietly."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from support import CLIENT, Inbox, Seeded, failure_of, sign_in, step_up

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

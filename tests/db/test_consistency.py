"""The consistency scan (authsvc/db/consistency.py) on real rows, SQLite and PostgreSQL.

Real flows over gRPC write a clean state (a completed login, a completed step-up and its grant,
a pending flow with its challenge and message, a flow without a challenge): every invariant
counts 0. Then each invariant gets the one half-written row it exists for, written in a
transaction that is rolled back, and the scan in that transaction counts exactly that row under
exactly that invariant. Foreign keys are off for the seeds that they would refuse (the scan
exists for databases that did not go through them: restores, manual repairs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Executable, delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from support import CLIENT, PASSWORD, Inbox, Seeded, sign_in, step_up

from authsvc.db import ActionGrant, Flow, FlowStatus, MessageStatus, OutboxMessage, Session
from authsvc.db.consistency import INVARIANTS, Caps, scan, scan_on
from authsvc.server import Server
from authsvc.v1 import auth_service_pb2 as pb
from authsvc.v1 import common_pb2 as A

if TYPE_CHECKING:
    from authsvc.v1.auth_service_pb2_grpc import AuthServiceAsyncStub as Stub

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SEALED = b"\x01" * 40


class Rows:
    """The ids of the clean state's rows that the seeds break."""

    def __init__(self, ids: dict[str, uuid.UUID]) -> None:
        self.ids = ids

    def __getattr__(self, name: str) -> uuid.UUID:
        return self.ids[name]


Seed = Callable[[Rows, Caps], list[Executable]]


def _flow(flow_id: uuid.UUID, **values: Any) -> list[Executable]:
    return [update(Flow).where(Flow.id == flow_id).values(**values)]


def _message(message_id: uuid.UUID, **values: Any) -> list[Executable]:
    return [update(OutboxMessage).where(OutboxMessage.id == message_id).values(**values)]


# invariant name -> (foreign keys off for it, the statements that break it)
SEEDS: dict[str, tuple[bool, Seed]] = {
    # The challenge's message lost (the half of Challenge's transaction that never landed).
    "challenge_without_message": (
        False,
        lambda r, _: [delete(OutboxMessage).where(OutboxMessage.id == r.challenge)],
    ),
    "challenge_half_written": (False, lambda r, _: _flow(r.pending, code_expires_at=None)),
    "code_without_challenge": (False, lambda r, _: _flow(r.pending, challenge_id=None)),
    "flow_attempts_beyond_cap": (
        False,
        lambda r, caps: _flow(r.pending, failed_attempts=caps.max_code_attempts),
    ),
    "flow_sends_beyond_cap": (
        False,
        lambda r, caps: _flow(r.pending, send_count=caps.max_sends_per_flow + 1),
    ),
    "completed_flow_holding_code": (
        False,
        lambda r, _: _flow(r.login, code_digest=b"\x00" * 32),
    ),
    "flow_of_missing_account": (True, lambda r, _: _flow(r.bare, account_id=uuid.uuid4())),
    "message_of_missing_flow": (True, lambda r, _: _message(r.challenge, flow_id=uuid.uuid4())),
    "finished_message_holding_code": (
        False,
        lambda r, _: _message(
            r.challenge, status=MessageStatus.SENT, sent_at=NOW, payload_sealed=SEALED
        ),
    ),
    "unsent_message_without_payload": (
        False,
        lambda r, _: _message(r.challenge, status=MessageStatus.QUEUED, payload_sealed=None),
    ),
    "sending_message_without_lease": (
        False,
        lambda r, _: _message(
            r.challenge, status=MessageStatus.SENDING, lease_until=None, payload_sealed=SEALED
        ),
    ),
    "sent_message_without_time": (
        False,
        lambda r, _: _message(
            r.challenge, status=MessageStatus.DELIVERED, sent_at=None, payload_sealed=None
        ),
    ),
    "session_of_missing_account": (
        True,
        lambda r, _: [
            update(Session).where(Session.id == r.session).values(account_id=uuid.uuid4())
        ],
    ),
    "grant_without_completed_flow": (
        False,
        lambda r, _: _flow(r.step_up, status=FlowStatus.FAILED),
    ),
    "grant_not_of_its_flow": (
        True,
        lambda r, _: [
            update(ActionGrant).where(ActionGrant.id == r.grant).values(session_id=uuid.uuid4())
        ],
    ),
}


def _caps(server: Server) -> Caps:
    return Caps(
        max_code_attempts=server.app.settings.max_code_attempts,
        max_sends_per_flow=server.app.settings.max_sends_per_flow,
    )


async def _clean_state(stub: Stub, inbox: Inbox, alice: Seeded, server: Server) -> Rows:
    session = (await sign_in(stub, inbox, alice)).session.token
    await step_up(stub, inbox, session, A.SENSITIVE_ACTION_CHANGE_OWN_PASSWORD)
    login = pb.LoginRequest(
        organization_siret=alice.organization_siret,
        login=alice.login,
        password=pb.PasswordCredential(password=PASSWORD),
        client=CLIENT,
    )
    pending = (await stub.Login(login)).pending_flow.flow_id
    await stub.Challenge(pb.ChallengeRequest(flow_id=pending, client=CLIENT))
    bare = (await stub.Login(login)).pending_flow.flow_id
    async with server.app.engine.connect() as connection:
        flows = {
            row.purpose: row
            for row in await connection.execute(
                select(Flow.id, Flow.purpose).where(Flow.status == FlowStatus.COMPLETED)
            )
        }
        grant = (await connection.execute(select(ActionGrant.id))).scalar_one()
        session_id = (await connection.execute(select(Session.id))).scalar_one()
        challenge = (
            await connection.execute(select(Flow.challenge_id).where(Flow.id == uuid.UUID(pending)))
        ).scalar_one()
    assert challenge is not None
    return Rows(
        {
            "login": flows["login"].id,
            "step_up": flows["step_up"].id,
            "pending": uuid.UUID(pending),
            "bare": uuid.UUID(bare),
            "challenge": challenge,
            "grant": grant,
            "session": session_id,
        }
    )


async def _settled(server: Server) -> None:
    """Until the dispatcher has finished every message (polled: work, not time)."""
    import asyncio

    for _ in range(2000):
        async with server.app.engine.connect() as connection:
            unsent = (
                await connection.execute(
                    select(OutboxMessage.id).where(
                        OutboxMessage.status.in_(["queued", "sending", "failed"])
                    )
                )
            ).first()
        if unsent is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the dispatcher did not send every message")


async def _without_fks(connection: AsyncConnection, url: str) -> None:
    if url.startswith("postgresql"):
        # Foreign keys are triggers in PostgreSQL; a replica role does not fire them.
        await connection.execute(text("SET LOCAL session_replication_role = replica"))


async def test_a_clean_state_passes_and_each_violation_is_counted_alone(
    server: Server, stub: Stub, inbox: Inbox, alice: Seeded, database_url: str
) -> None:
    assert set(SEEDS) == {invariant.name for invariant in INVARIANTS}  # none untested
    rows = await _clean_state(stub, inbox, alice, server)
    await _settled(server)
    caps = _caps(server)
    clean = await scan(server.app.engine, caps)
    assert {f.invariant.name: f.count for f in clean} == dict.fromkeys(SEEDS, 0)

    # A plain engine: on SQLite it leaves foreign keys off (the service's turns them on).
    engine = create_async_engine(database_url)
    try:
        for name, (no_fks, seed) in SEEDS.items():
            async with engine.connect() as connection:
                transaction = await connection.begin()
                if no_fks:
                    await _without_fks(connection, database_url)
                for statement in seed(rows, caps):
                    changed = await connection.execute(statement)
                    assert changed.rowcount == 1, name
                found = await scan_on(connection, caps)
                await transaction.rollback()
            counts = {f.invariant.name: f.count for f in found if f.count}
            assert counts == {name: 1}, name
    finally:
        await engine.dispose()
    # Rolled back: clean again.
    assert not [f for f in await scan(server.app.engine, caps) if f.count]


def _check(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUTHSVC_DATABASE_URL": database_url}
    env["AUTHSVC_SECRET_KEY_FILE"] = str(tmp_path / "secret.key")
    return subprocess.run(
        [sys.executable, "-m", "authsvc", "check-consistency", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


async def test_the_command_exits_non_zero_on_a_violation(
    server: Server, stub: Stub, inbox: Inbox, alice: Seeded, database_url: str, tmp_path: Path
) -> None:
    rows = await _clean_state(stub, inbox, alice, server)
    await _settled(server)
    clean = _check(database_url, tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert '"violations": 0' in clean.stdout
    async with server.app.engine.begin() as connection:
        await connection.execute(_flow(rows.login, code_digest=b"\x00" * 32)[0])
    broken = _check(database_url, tmp_path)
    assert broken.returncode == 1, broken.stderr
    assert '"completed_flow_holding_code": 1' in broken.stdout

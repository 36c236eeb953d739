"""Migration 0020: a consumed ceremony's row goes with its column, an account's older pending
authenticator-app enrolments go (the latest stays, under the new one-pending index), and the
passkeys get `disabled_at`; the downgrade gives the 0018 schema back. Both backends."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from support import Seeded

from authsvc.db import PasskeyCeremony, SecondFactor
from authsvc.db.base import UTCDateTime
from authsvc.db.migrate import alembic_config
from authsvc.server import Server

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


async def _run(url: str, *statements: sa.Executable) -> list[sa.Row[Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            rows: list[sa.Row[Any]] = []
            for statement in statements:
                result = await connection.execute(statement)
                rows = list(result.all()) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


def _pending(
    account_id: uuid.UUID, factor_id: uuid.UUID, created_at: datetime
) -> dict[str, object]:
    return {
        "id": factor_id,
        "account_id": account_id,
        "kind": "totp",
        "name": "App",
        "secret_sealed": b"sealed",
        "confirmed_at": None,
        "last_used_step": None,
        "created_at": created_at,
        "last_used_at": None,
    }


def test_0020_up_and_down(database_url: str, server: Server, alice: Seeded) -> None:
    config = alembic_config(database_url)
    command.downgrade(config, "0018")
    # The tables as 0018 had them, with the models' types.
    factors = sa.table(
        "second_factors",
        *(sa.column(c.name, c.type) for c in SecondFactor.__table__.c),
    )
    ceremonies = sa.table(
        "passkey_ceremonies",
        *(sa.column(c.name, c.type) for c in PasskeyCeremony.__table__.c),
        sa.column("consumed_at", UTCDateTime()),
    )
    older, later, used, open_ = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ceremony = {
        "account_id": alice.account_id,
        "flow_id": None,
        "kind": "registration",
        "challenge": os.urandom(32),
        "created_at": NOW,
        "expires_at": NOW + timedelta(minutes=5),
    }
    asyncio.run(
        _run(
            database_url,
            sa.insert(factors).values(
                [
                    _pending(alice.account_id, older, NOW),
                    _pending(alice.account_id, later, NOW + timedelta(seconds=1)),
                ]
            ),
            sa.insert(ceremonies).values(
                [
                    {**ceremony, "id": used, "consumed_at": NOW},
                    {**ceremony, "id": open_, "consumed_at": None},
                ]
            ),
        )
    )
    command.upgrade(config, "head")
    kept = asyncio.run(_run(database_url, sa.select(factors.c.id)))
    assert [row[0] for row in kept] == [later]
    left = asyncio.run(_run(database_url, sa.select(ceremonies.c.id)))
    assert [row[0] for row in left] == [open_]
    disabled = asyncio.run(
        _run(
            database_url,
            sa.text("SELECT count(*) FROM passkey_credentials WHERE disabled_at IS NULL"),
        )
    )
    assert disabled[0][0] == 0  # the column exists (alice has no passkey)
    # The index holds: a second pending enrolment of the account is refused.
    with pytest.raises(IntegrityError):
        asyncio.run(
            _run(database_url, sa.insert(factors).values(_pending(alice.account_id, older, NOW)))
        )
    command.downgrade(config, "0018")
    asyncio.run(
        _run(database_url, sa.insert(factors).values(_pending(alice.account_id, older, NOW)))
    )
    command.upgrade(config, "head")
    command.check(config)

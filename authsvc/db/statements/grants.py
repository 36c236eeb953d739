"""Action grants: spending one (a conditional UPDATE, with its audit row) and reading the state
of one that could not be spent (to say why)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from authsvc.db import ActionGrant
from authsvc.db.statements import audit, table

GRANTS = table(ActionGrant)


@dataclass(frozen=True)
class Spent:
    account_id: uuid.UUID
    redeemed_at: datetime


@dataclass(frozen=True)
class GrantState:
    """What a refusal looks at, most fundamental first (flows/grants.py decides the reason)."""

    session_id: uuid.UUID
    redeemed_at: datetime | None
    expires_at: datetime
    action: str
    target_account_id: uuid.UUID | None


def spend(redeemable: list[Any], now: datetime) -> Any:
    """The grant that matches `redeemable` (the WHERE clause of flows/grants.py), spent now:
    of concurrent redemptions exactly one matches."""
    return (
        update(GRANTS)
        .where(*redeemable)
        .values(redeemed_at=now)
        .returning(GRANTS.c.account_id, GRANTS.c.redeemed_at)
    )


_STATE = select(
    GRANTS.c.session_id,
    GRANTS.c.redeemed_at,
    GRANTS.c.expires_at,
    GRANTS.c.action,
    GRANTS.c.target_account_id,
)


def state(token_digest: bytes) -> Any:
    return _STATE.where(GRANTS.c.token_digest == token_digest)


def redeem(
    connection: Connection,
    redeemable: list[Any],
    token_digest: bytes,
    now: datetime,
    redeemed: dict[str, Any],
) -> Spent | GrantState | None:
    """Spend the grant with its `redeemed` audit row; else the grant's state (None: unknown).
    One statement on PostgreSQL when the grant is spent."""
    spent_grant = spend(redeemable, now)
    if connection.dialect.name == "postgresql":
        spent_cte = spent_grant.cte("spent")
        logged = audit.insert_from(redeemed, spent_cte).cte("logged")
        row = connection.execute(
            select(spent_cte.c.account_id, spent_cte.c.redeemed_at).add_cte(logged)
        ).first()
    else:
        row = connection.execute(spent_grant).first()
        if row is not None:
            audit.add(connection, redeemed)
    if row is not None:
        return Spent(row[0], row[1])
    found = connection.execute(state(token_digest)).first()
    return None if found is None else GrantState(*found)

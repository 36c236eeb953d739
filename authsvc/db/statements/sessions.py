"""Sessions: the row ValidateSession reads (one indexed lookup), the throttled touch, the new
session of a login, the logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, literal, select, update

from authsvc.db import Account, Organization, Session
from authsvc.db.statements import audit, table

SESSIONS = table(Session)
ACCOUNTS = table(Account)
ORGANIZATIONS = table(Organization)


@dataclass(frozen=True)
class SessionRow:
    session_id: uuid.UUID
    account_id: uuid.UUID
    assurance_level: str
    auth_time: datetime
    last_code_time: datetime
    expires_at: datetime
    last_seen_at: datetime
    revoked: bool
    login: str
    account_status: str
    role: str
    organization_id: uuid.UUID
    organization_siret: str


_FIND = (
    select(
        SESSIONS.c.id,
        SESSIONS.c.account_id,
        SESSIONS.c.assurance_level,
        SESSIONS.c.auth_time,
        SESSIONS.c.last_code_time,
        SESSIONS.c.expires_at,
        SESSIONS.c.last_seen_at,
        SESSIONS.c.revoked_at.is_not(None),
        ACCOUNTS.c.login,
        ACCOUNTS.c.status,
        ACCOUNTS.c.role,
        ORGANIZATIONS.c.id,
        ORGANIZATIONS.c.siret,
    )
    .select_from(SESSIONS)
    .join(ACCOUNTS, SESSIONS.c.account_id == ACCOUNTS.c.id)
    .join(ORGANIZATIONS, ACCOUNTS.c.organization_id == ORGANIZATIONS.c.id)
)


def find(connection: Connection, token_digest: bytes) -> SessionRow | None:
    row = connection.execute(_FIND.where(SESSIONS.c.token_digest == token_digest)).first()
    return None if row is None else SessionRow(*row)


def touch(
    connection: Connection, session_id: uuid.UUID, touch_before: datetime, now: datetime
) -> None:
    """Conditional, so that concurrent validations write once and never move it backwards."""
    connection.execute(
        update(SESSIONS)
        .where(
            SESSIONS.c.id == session_id,
            SESSIONS.c.last_seen_at <= touch_before,
            SESSIONS.c.revoked_at.is_(None),
        )
        .values(last_seen_at=now)
    )


def add(connection: Connection, row: dict[str, Any]) -> None:
    connection.execute(insert(SESSIONS), row)


def revoke(
    connection: Connection, token_digest: bytes, now: datetime, logout: dict[str, Any]
) -> None:
    """End the session of this digest if it is live, with its `logout` audit row (its actor
    and organisation filled from the session's account). One statement on PostgreSQL."""
    ended = (
        update(SESSIONS)
        .where(SESSIONS.c.token_digest == token_digest, SESSIONS.c.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(SESSIONS.c.account_id)
    )
    if connection.dialect.name == "postgresql":
        ended_cte = ended.cte("ended")
        source = ended_cte.join(ACCOUNTS, ACCOUNTS.c.id == ended_cte.c.account_id)
        logged = audit.insert_from(
            logout,
            source,
            organization_id=ACCOUNTS.c.organization_id,
            actor_account_id=ended_cte.c.account_id,
        ).cte("logged")
        connection.execute(select(literal(1)).add_cte(logged))
        return
    account_id = connection.execute(ended).scalar()
    if account_id is None:
        return
    organization_id = connection.execute(
        select(ACCOUNTS.c.organization_id).where(ACCOUNTS.c.id == account_id)
    ).scalar()
    audit.add(
        connection, {**logout, "organization_id": organization_id, "actor_account_id": account_id}
    )

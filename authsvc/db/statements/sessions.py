"""Sessions: the row ValidateSession reads (one indexed lookup), the throttled touch, the new
session of a login, the logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, literal, select, update

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


_FIND_BY_DIGEST = _FIND.where(SESSIONS.c.token_digest == bindparam("digest"))


def find(connection: Connection, token_digest: bytes) -> SessionRow | None:
    row = connection.execute(_FIND_BY_DIGEST, {"digest": token_digest}).first()
    return None if row is None else SessionRow(*row)


# Conditional, so that concurrent validations write once and never move it backwards.
_TOUCH = (
    update(SESSIONS)
    .where(
        SESSIONS.c.id == bindparam("s_id"),
        SESSIONS.c.last_seen_at <= bindparam("touch_before", type_=SESSIONS.c.last_seen_at.type),
        SESSIONS.c.revoked_at.is_(None),
    )
    .values(last_seen_at=bindparam("now", type_=SESSIONS.c.last_seen_at.type))
)


def touch(
    connection: Connection, session_id: uuid.UUID, touch_before: datetime, now: datetime
) -> None:
    connection.execute(_TOUCH, {"s_id": session_id, "touch_before": touch_before, "now": now})


_ADD = insert(SESSIONS)


def add(connection: Connection, row: dict[str, Any]) -> None:
    connection.execute(_ADD, row)


_END = (
    update(SESSIONS)
    .where(SESSIONS.c.token_digest == bindparam("digest"), SESSIONS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now", type_=SESSIONS.c.revoked_at.type))
    .returning(SESSIONS.c.account_id)
)
_ENDED = _END.cte("ended")
# PostgreSQL: the session ended and its audit row, in one statement (the row's organisation
# and actor come from the ended session's account).
_END_AND_LOG = select(literal(1)).add_cte(
    audit.insert_from(
        audit.PARAMETERS,
        _ENDED.join(ACCOUNTS, ACCOUNTS.c.id == _ENDED.c.account_id),
        organization_id=ACCOUNTS.c.organization_id,
        actor_account_id=_ENDED.c.account_id,
    ).cte("logged")
)
_ORGANIZATION_OF = select(ACCOUNTS.c.organization_id).where(ACCOUNTS.c.id == bindparam("account"))


def revoke(
    connection: Connection, token_digest: bytes, now: datetime, logout: dict[str, Any]
) -> None:
    """End the session of this digest if it is live, with its `logout` audit row (its actor
    and organisation filled from the session's account). One statement on PostgreSQL."""
    ending = {"digest": token_digest, "now": now}
    if connection.dialect.name == "postgresql":
        connection.execute(_END_AND_LOG, {**ending, **audit.parameters(logout)})
        return
    account_id = connection.execute(_END, ending).scalar()
    if account_id is None:
        return
    organization_id = connection.execute(_ORGANIZATION_OF, {"account": account_id}).scalar()
    audit.add(
        connection, {**logout, "organization_id": organization_id, "actor_account_id": account_id}
    )

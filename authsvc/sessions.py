"""Sessions: issue, validate (cheap: one indexed read, a throttled write), revoke.

Tokens are 256-bit random strings handed out once; the database keeps their SHA-256 digest, so a
copy of the database yields no usable session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from authsvc import audit
from authsvc.app import App
from authsvc.db import AccountStatus, Role
from authsvc.db.base import new_id
from authsvc.db.statements import sessions as statements
from authsvc.flows import failures
from authsvc.flows.views import IssuedSession
from authsvc.otp import random_token, token_digest

AAL2 = "aal2"


@dataclass(frozen=True)
class SessionInfo:
    session_id: uuid.UUID
    account_id: uuid.UUID
    login: str
    organization_id: uuid.UUID
    organization_siret: str
    role: Role
    assurance_level: str
    auth_time: datetime
    last_code_time: datetime
    expires_at: datetime
    idle_expires_at: datetime


def _idle_deadline(app: App, last_seen_at: datetime, expires_at: datetime) -> datetime:
    return min(last_seen_at + timedelta(seconds=app.settings.session_idle_s), expires_at)


def new(
    app: App,
    account_id: uuid.UUID,
    *,
    last_code_time: datetime,
    ip_address: str,
    user_agent: str,
) -> tuple[IssuedSession, dict[str, Any]]:
    """A new session: what the caller gets (the token leaves only here) and the row that the
    decision's transaction inserts (statements.sessions.add, or inside a PostgreSQL CTE)."""
    now = app.clock.now()
    token = random_token(32)
    expires_at = now + timedelta(seconds=app.settings.session_absolute_s)
    row = {
        "id": new_id(),
        "token_digest": token_digest(token),
        "account_id": account_id,
        "assurance_level": AAL2,
        "auth_time": now,
        "last_code_time": last_code_time,
        "expires_at": expires_at,
        "last_seen_at": now,
        "revoked_at": None,
        "ip_address": ip_address,
        "user_agent": user_agent,
    }
    issued = IssuedSession(
        token, account_id, AAL2, expires_at, _idle_deadline(app, now, expires_at)
    )
    return issued, row


async def validate(app: App, token: str) -> SessionInfo:
    """One indexed read; a write only once per `session_touch_interval_s` per session."""
    now = app.clock.now()
    row = await app.db.read(statements.find, token_digest(token))
    if row is None or row.revoked or row.account_status != AccountStatus.ACTIVE:
        raise failures.session_invalid()
    idle_deadline = _idle_deadline(app, row.last_seen_at, row.expires_at)
    if now >= idle_deadline:
        raise failures.session_expired()
    last_seen_at = row.last_seen_at
    touch_before = now - timedelta(seconds=app.settings.session_touch_interval_s)
    if last_seen_at <= touch_before:
        await app.db.statement(statements.touch, row.session_id, touch_before, now)
        last_seen_at = now
    return SessionInfo(
        session_id=row.session_id,
        account_id=row.account_id,
        login=row.login,
        organization_id=row.organization_id,
        organization_siret=row.organization_siret,
        role=Role(row.role),
        assurance_level=row.assurance_level,
        auth_time=row.auth_time,
        last_code_time=row.last_code_time,
        expires_at=row.expires_at,
        idle_expires_at=_idle_deadline(app, last_seen_at, row.expires_at),
    )


async def revoke(app: App, token: str) -> None:
    """Logout. Idempotent: an unknown, expired or already revoked token also succeeds, so that a
    retried Logout never fails and the answer says nothing about the token."""
    logout = audit.event(app.clock, "session.logout", organization_id=None)
    await app.db.statement(statements.revoke, token_digest(token), app.clock.now(), logout)

"""Sessions: issue, validate (cheap: one indexed read, a throttled write), revoke.

Tokens are 256-bit random strings handed out once; the database keeps their SHA-256 digest, so a
copy of the database yields no usable session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.app import App
from authsvc.db import Account, AccountStatus, Organization, Role, Session
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


async def issue(
    app: App,
    db: AsyncSession,
    account_id: uuid.UUID,
    *,
    last_code_time: datetime,
    ip_address: str,
    user_agent: str,
) -> IssuedSession:
    """Add a session to the caller's transaction; the token leaves only in the return value."""
    now = app.clock.now()
    token = random_token(32)
    expires_at = now + timedelta(seconds=app.settings.session_absolute_s)
    db.add(
        Session(
            token_digest=token_digest(token),
            account_id=account_id,
            assurance_level=AAL2,
            auth_time=now,
            last_code_time=last_code_time,
            expires_at=expires_at,
            last_seen_at=now,
            revoked_at=None,
            ip_address=ip_address,
            user_agent=user_agent,
        )
    )
    return IssuedSession(token, account_id, AAL2, expires_at, _idle_deadline(app, now, expires_at))


async def validate(app: App, token: str) -> SessionInfo:
    now = app.clock.now()
    async with app.read() as db:
        row = (
            await db.execute(
                select(Session, Account, Organization)
                .join(Account, Session.account_id == Account.id)
                .join(Organization, Account.organization_id == Organization.id)
                .where(Session.token_digest == token_digest(token))
            )
        ).one_or_none()
    if row is None:
        raise failures.session_invalid()
    session, account, organization = row
    if session.revoked_at is not None or account.status != AccountStatus.ACTIVE:
        raise failures.session_invalid()
    idle_deadline = _idle_deadline(app, session.last_seen_at, session.expires_at)
    if now >= idle_deadline:
        raise failures.session_expired()
    last_seen_at = session.last_seen_at
    touch_before = now - timedelta(seconds=app.settings.session_touch_interval_s)
    if last_seen_at <= touch_before:
        # Conditional, so that concurrent validations write once and never move it backwards.
        async with app.write() as db:
            await db.execute(
                update(Session)
                .where(
                    Session.id == session.id,
                    Session.last_seen_at <= touch_before,
                    Session.revoked_at.is_(None),
                )
                .values(last_seen_at=now)
            )
        last_seen_at = now
    return SessionInfo(
        session_id=session.id,
        account_id=account.id,
        login=account.login,
        organization_id=organization.id,
        organization_siret=organization.siret,
        role=Role(account.role),
        assurance_level=session.assurance_level,
        auth_time=session.auth_time,
        last_code_time=session.last_code_time,
        expires_at=session.expires_at,
        idle_expires_at=_idle_deadline(app, last_seen_at, session.expires_at),
    )


async def revoke(app: App, token: str) -> None:
    """Logout. Idempotent: an unknown, expired or already revoked token also succeeds, so that a
    retried Logout never fails and the answer says nothing about the token."""
    async with app.write() as db:
        ended = await db.execute(
            update(Session)
            .where(Session.token_digest == token_digest(token), Session.revoked_at.is_(None))
            .values(revoked_at=app.clock.now())
            .returning(Session.account_id)
        )
        account_id = ended.scalar_one_or_none()
        if account_id is not None:
            organization_id = await db.scalar(
                select(Account.organization_id).where(Account.id == account_id)
            )
            audit.record(
                db,
                app.clock,
                "session.logout",
                organization_id=organization_id,
                actor=account_id,
            )

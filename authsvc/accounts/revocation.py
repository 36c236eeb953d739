"""What ends when an account's credentials change (a new password, a new phone, a second
factor removed, a federated identity unlinked): one function, so that every such change ends
the same things in the same order, in the caller's transaction.

1. The account row first, its security epoch raised: a login whose first factor was checked
   before this commits is refused by its verdict (db/statements/logins.py); on PostgreSQL the
   row lock orders the two.
2. Its pending flows fail (their codes purged): a flow opened with the old password, or by a
   session about to end, must not complete into a session, a grant or a contact change
   (attack review, session 5). A Verify in flight waits for the flow's row and finds it failed.
3. Its trusted devices are revoked: a device token stood for the factor being replaced.
4. Its sessions are revoked, but the one that made the change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.db import Account, Flow, FlowStatus, Session, TrustedDevice


@dataclass(frozen=True)
class Ended:
    sessions: int
    devices: int
    flows: int


async def end_trust(
    db: AsyncSession,
    account_id: uuid.UUID,
    now: datetime,
    *,
    keep_session: uuid.UUID | None = None,
    keep_flow: uuid.UUID | None = None,
    account_values: dict[str, object] | None = None,
) -> Ended:
    """End what trusted the account's old credentials (module docstring). `account_values`:
    the change itself, written in the same first statement (the new hash, the new phone)."""
    await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(**(account_values or {}), security_epoch=Account.security_epoch + 1)
    )
    flows = await db.execute(
        update(Flow)
        .where(
            Flow.account_id == account_id,
            Flow.status == FlowStatus.PENDING.value,
            *([Flow.id != keep_flow] if keep_flow is not None else []),
        )
        .values(status=FlowStatus.FAILED.value, code_digest=None)
    )
    devices = await db.execute(
        update(TrustedDevice)
        .where(TrustedDevice.account_id == account_id, TrustedDevice.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    sessions = await db.execute(
        update(Session)
        .where(
            Session.account_id == account_id,
            Session.revoked_at.is_(None),
            *([Session.id != keep_session] if keep_session is not None else []),
        )
        .values(revoked_at=now)
    )
    return Ended(
        sessions=int(sessions.rowcount),  # type: ignore[attr-defined]
        devices=int(devices.rowcount),  # type: ignore[attr-defined]
        flows=int(flows.rowcount),  # type: ignore[attr-defined]
    )

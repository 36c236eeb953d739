"""The code cadence: always at an account's first login, then every 7 days per device.

A device that passed a code holds a device-trust token; the trust runs 7 days from that
verification (not sliding) and ends early when the account's password or phone changes.
There is no other way to skip the code: no flag, no role, no configuration switch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.db import TrustedDevice
from authsvc.db.base import new_id
from authsvc.otp import random_token, token_digest


@dataclass(frozen=True)
class Trust:
    token: str
    expires_at: datetime


def presented_device(app: App, device_token: str | None) -> bytes | None:
    """The digest by which a login looks up the presented device's trust (its last code, if
    not revoked nor expired: statements.devices_trust), or None when no trust can stand: no
    device presented, or trust turned off."""
    if device_token is None or app.settings.device_trust_s == 0:
        return None
    return token_digest(device_token)


def new_trust(app: App, account_id: uuid.UUID, user_agent: str) -> tuple[Trust, dict[str, Any]]:
    """This device passed a code now: what the caller gets (the token leaves only here) and
    the `trusted_devices` row that the decision's transaction inserts
    (authsvc/db/statements/devices.py, or inside a PostgreSQL CTE)."""
    now = app.clock.now()
    token = random_token(32)
    expires_at = now + timedelta(seconds=app.settings.device_trust_s)
    row = {
        "id": new_id(),
        "account_id": account_id,
        "token_digest": token_digest(token),
        "verified_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
        "user_agent": user_agent,
    }
    return Trust(token, expires_at), row


def trust_device(app: App, db: AsyncSession, account_id: uuid.UUID, user_agent: str) -> Trust:
    """Record that this device passed a code now; add it to the caller's ORM transaction."""
    trust, row = new_trust(app, account_id, user_agent)
    db.add(TrustedDevice(**row))
    return trust

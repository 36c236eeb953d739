"""Device trust as a login reads it: when the presented device last passed a code, if its
trust still stands (one indexed look-up by the token's digest, inside the login's verdict)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select

from authsvc.db import TrustedDevice
from authsvc.db.statements import table

TRUSTED_DEVICES = table(TrustedDevice)

# A scalar subquery: the device's last verification, or null when it is not trusted by this
# account now (revoked, expired, someone else's) or no device was presented (a null digest:
# the same statement, matching nothing). Named parameters: t_digest, t_account, t_now.
VERIFIED_AT = (
    select(TRUSTED_DEVICES.c.verified_at)
    .where(
        TRUSTED_DEVICES.c.token_digest
        == bindparam("t_digest", type_=TRUSTED_DEVICES.c.token_digest.type),
        TRUSTED_DEVICES.c.account_id
        == bindparam("t_account", type_=TRUSTED_DEVICES.c.account_id.type),
        TRUSTED_DEVICES.c.revoked_at.is_(None),
        TRUSTED_DEVICES.c.expires_at > bindparam("t_now", type_=TRUSTED_DEVICES.c.expires_at.type),
    )
    .scalar_subquery()
)


def parameters(account_id: uuid.UUID, token_digest: bytes | None, now: datetime) -> dict[str, Any]:
    return {"t_digest": token_digest, "t_account": account_id, "t_now": now}

"""What the TOTP factor reads and writes on the hot paths (Challenge, Verify): the account's
confirmed app, and the claim of a time step.

The claim is the replay guard: ONE conditional UPDATE advances `last_used_step` only WHERE it
is still before the step being accepted, so of concurrent submissions of one code exactly one
changes the row (on PostgreSQL the others wait on its row lock, then find the step taken). It
runs in the transaction that completes the flow: a completion refused afterwards undoes the
claim, and a claim refused undoes nothing else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Connection, and_, bindparam, exists, or_, select, update

from authsvc.db import PasskeyCredential, SecondFactor
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import table

FACTORS = table(SecondFactor)
PASSKEYS = table(PasskeyCredential)
TOTP = "totp"


@dataclass(frozen=True)
class TotpFactor:
    """A confirmed authenticator app as Verify needs it."""

    id: uuid.UUID
    secret_sealed: bytes
    last_used_step: int | None


@dataclass(frozen=True)
class StepClaim:
    """The time step a right code matched, to be claimed on its factor."""

    factor_id: uuid.UUID
    step: int
    now: datetime


def has_confirmed_totp(account_id: Any) -> Any:
    """SQL: whether the account (an id column or parameter) has a confirmed app."""
    return exists(
        select(FACTORS.c.id).where(
            FACTORS.c.account_id == account_id,
            FACTORS.c.kind == TOTP,
            FACTORS.c.confirmed_at.is_not(None),
        )
    )


def has_passkey(account_id: Any) -> Any:
    """SQL: whether the account (an id column or parameter) has a passkey that answers flows
    (a removed one's row is deleted; a disabled one, a detected clone, answers none)."""
    return exists(
        select(PASSKEYS.c.id).where(
            PASSKEYS.c.account_id == account_id, PASSKEYS.c.disabled_at.is_(None)
        )
    )


def other_factors(account_id: Any) -> tuple[Any, Any]:
    """The columns `has_totp` and `has_passkey` of a lookup that reads an account: its flow
    lists CHANNEL_TOTP and CHANNEL_PASSKEY when it has them (read in the same statement)."""
    return (
        has_confirmed_totp(account_id).label("has_totp"),
        has_passkey(account_id).label("has_passkey"),
    )


_CONFIRMED_TOTP = select(FACTORS.c.id, FACTORS.c.secret_sealed, FACTORS.c.last_used_step).where(
    FACTORS.c.account_id == bindparam("t_account_id", type_=FACTORS.c.account_id.type),
    FACTORS.c.kind == TOTP,
    FACTORS.c.confirmed_at.is_not(None),
)
_HAS_CONFIRMED_TOTP = select(
    has_confirmed_totp(bindparam("t_account_id", type_=FACTORS.c.account_id.type))
)


def confirmed_totp(connection: Connection, account_id: uuid.UUID) -> TotpFactor | None:
    """The account's confirmed app (at most one: a partial unique index says so)."""
    row = connection.execute(_CONFIRMED_TOTP, {"t_account_id": account_id}).first()
    return None if row is None else TotpFactor(*row)


def totp_confirmed(connection: Connection, account_id: uuid.UUID) -> bool:
    return bool(connection.execute(_HAS_CONFIRMED_TOTP, {"t_account_id": account_id}).scalar())


_STEP = bindparam("t_step", type_=BigInteger())
# Only the id is returned: SQLite 3.40 evaluates `col IS NULL` wrongly inside RETURNING, and
# the decision is the WHERE clause's anyway (a row returned or none).
CLAIM_STEP = (
    update(FACTORS)
    .where(
        FACTORS.c.id == bindparam("t_factor_id", type_=FACTORS.c.id.type),
        FACTORS.c.confirmed_at.is_not(None),
        or_(FACTORS.c.last_used_step.is_(None), FACTORS.c.last_used_step < _STEP),
    )
    .values(last_used_step=_STEP, last_used_at=bindparam("t_now", type_=UTCDateTime()))
    .returning(FACTORS.c.id)
)


def claim_params(claim: StepClaim) -> dict[str, Any]:
    return {"t_factor_id": claim.factor_id, "t_step": claim.step, "t_now": claim.now}


def claim_step(connection: Connection, claim: StepClaim) -> bool:
    """Advance the factor's last used step to this one, only if it is still before it."""
    return connection.execute(CLAIM_STEP, claim_params(claim)).first() is not None


# An enrolment's confirmation: the pending factor becomes active, its first code's step stored
# (so that code cannot then complete a flow), only while it is pending and fresh.
CONFIRM = (
    update(FACTORS)
    .where(
        FACTORS.c.id == bindparam("t_factor_id", type_=FACTORS.c.id.type),
        FACTORS.c.account_id == bindparam("t_account_id", type_=FACTORS.c.account_id.type),
        FACTORS.c.kind == TOTP,
        and_(
            FACTORS.c.confirmed_at.is_(None),
            FACTORS.c.created_at > bindparam("t_fresh_since", type_=UTCDateTime()),
        ),
    )
    .values(confirmed_at=bindparam("t_now", type_=UTCDateTime()), last_used_step=_STEP)
    .returning(FACTORS.c.id)
)

"""What passkeys read and write on the hot paths: the account's credentials, a ceremony's
challenge taken once, and the claim of a signature counter.

Both decisions are ONE conditional UPDATE each:
- a ceremony is consumed only WHERE it is this account's (and flow's), unexpired and not yet
  consumed, returning its challenge: of two submissions of one ceremony exactly one gets it;
- a counter is stored only WHERE it moves forward (`sign_count < :new`), or both stay 0 (an
  authenticator that keeps no counter, as synced passkeys do): a counter that does not move
  forward means two copies of the private key (a cloned credential), and of concurrent
  assertions carrying one counter value exactly one wins. The claim runs in the transaction
  that completes the flow (db/statements/claims.py), like a TOTP step's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    update,
)

from authsvc.db import PasskeyCeremony, PasskeyCredential
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import flows, table

CREDENTIALS = table(PasskeyCredential)
CEREMONIES = table(PasskeyCeremony)
REGISTRATION = "registration"
ASSERTION = "assertion"


@dataclass(frozen=True)
class StoredCredential:
    """A credential as an assertion's check needs it."""

    id: uuid.UUID
    credential_id: bytes
    public_key: bytes
    sign_count: int
    transports: str


@dataclass(frozen=True)
class CounterClaim:
    """The signature counter an assertion carried, to be stored on its credential."""

    credential_row_id: uuid.UUID
    sign_count: int
    now: datetime


_ACCOUNT = bindparam("p_account_id", type_=CREDENTIALS.c.account_id.type)
_NOW = bindparam("p_now", type_=UTCDateTime())
_STORED = [CREDENTIALS.c[name] for name in StoredCredential.__dataclass_fields__]
_OF_ACCOUNT = (
    select(*_STORED)
    .where(CREDENTIALS.c.account_id == _ACCOUNT)
    .order_by(CREDENTIALS.c.created_at, CREDENTIALS.c.id)
)
_ONE = select(*_STORED).where(
    CREDENTIALS.c.account_id == _ACCOUNT,
    CREDENTIALS.c.credential_id
    == bindparam("p_credential_id", type_=CREDENTIALS.c.credential_id.type),
)


def of_account(connection: Connection, account_id: uuid.UUID) -> list[StoredCredential]:
    rows = connection.execute(_OF_ACCOUNT, {"p_account_id": account_id}).all()
    return [StoredCredential(*row) for row in rows]


def find(
    connection: Connection, account_id: uuid.UUID, credential_id: bytes
) -> StoredCredential | None:
    """The account's credential of that id (another account's is not found: a credential
    answers only for the account that registered it)."""
    row = connection.execute(
        _ONE, {"p_account_id": account_id, "p_credential_id": credential_id}
    ).first()
    return None if row is None else StoredCredential(*row)


_NEW = bindparam("p_sign_count", type_=BigInteger())
CLAIM_COUNTER = (
    update(CREDENTIALS)
    .where(
        CREDENTIALS.c.id == bindparam("p_credential_row_id", type_=CREDENTIALS.c.id.type),
        or_(CREDENTIALS.c.sign_count < _NEW, and_(_NEW == 0, CREDENTIALS.c.sign_count == 0)),
    )
    .values(sign_count=_NEW, last_used_at=_NOW)
    .returning(CREDENTIALS.c.id)
)


def counter_params(claim: CounterClaim) -> dict[str, Any]:
    return {
        "p_credential_row_id": claim.credential_row_id,
        "p_sign_count": claim.sign_count,
        "p_now": claim.now,
    }


def claim_counter(connection: Connection, claim: CounterClaim) -> bool:
    """Store the new counter, only if it moves forward (or stays 0 on a counterless one)."""
    return connection.execute(CLAIM_COUNTER, counter_params(claim)).first() is not None


@dataclass(frozen=True)
class Ceremony:
    """A challenge to keep: the row of passkey_ceremonies."""

    id: uuid.UUID
    account_id: uuid.UUID
    flow_id: uuid.UUID | None
    kind: str
    challenge: bytes
    created_at: datetime
    expires_at: datetime


def _row(ceremony: Ceremony) -> dict[str, Any]:
    return {**ceremony.__dict__, "consumed_at": None}


def start_registration(connection: Connection, ceremony: Ceremony) -> None:
    """Keep a registration's challenge; the account's earlier unfinished ones go (only the
    latest options can be answered)."""
    connection.execute(
        delete(CEREMONIES).where(
            CEREMONIES.c.account_id == ceremony.account_id,
            CEREMONIES.c.kind == REGISTRATION,
        )
    )
    connection.execute(insert(CEREMONIES).values(**_row(ceremony)))


def start_assertion(
    connection: Connection, window: flows.TotpWindow, ceremony: Ceremony
) -> flows.Window | None:
    """Make the assertion the flow's current challenge (the attempt window, as a TOTP
    challenge opens it) and keep its challenge under the window's challenge id and expiry, in
    one transaction; the flow's earlier ceremonies go. None: the flow closed meanwhile,
    nothing written."""
    opened = flows.open_totp_window(connection, window)
    if opened is None:
        return None
    connection.execute(delete(CEREMONIES).where(CEREMONIES.c.flow_id == ceremony.flow_id))
    row = {**_row(ceremony), "id": opened.challenge_id, "expires_at": opened.code_expires_at}
    connection.execute(insert(CEREMONIES).values(**row))
    return opened


_CONSUMABLE = (
    CEREMONIES.c.id == bindparam("p_ceremony_id", type_=CEREMONIES.c.id.type),
    CEREMONIES.c.account_id == _ACCOUNT,
    CEREMONIES.c.kind == bindparam("p_kind"),
    CEREMONIES.c.consumed_at.is_(None),
    CEREMONIES.c.expires_at > _NOW,
)
_CONSUME_REGISTRATION = (
    update(CEREMONIES)
    .where(*_CONSUMABLE, CEREMONIES.c.flow_id.is_(None))
    .values(consumed_at=_NOW)
    .returning(CEREMONIES.c.challenge)
)
_CONSUME_ASSERTION = (
    update(CEREMONIES)
    .where(
        *_CONSUMABLE,
        CEREMONIES.c.flow_id == bindparam("p_flow_id", type_=CEREMONIES.c.flow_id.type),
    )
    .values(consumed_at=_NOW)
    .returning(CEREMONIES.c.challenge)
)


@dataclass(frozen=True)
class Consume:
    ceremony_id: uuid.UUID
    account_id: uuid.UUID
    flow_id: uuid.UUID | None  # None: a registration
    now: datetime


def consume(connection: Connection, taken: Consume) -> bytes | None:
    """The ceremony's challenge, once: None when it is unknown, another account's or flow's,
    expired, or already consumed."""
    params: dict[str, Any] = {
        "p_ceremony_id": taken.ceremony_id,
        "p_account_id": taken.account_id,
        "p_now": taken.now,
    }
    if taken.flow_id is None:
        statement = _CONSUME_REGISTRATION
        params["p_kind"] = REGISTRATION
    else:
        statement = _CONSUME_ASSERTION
        params.update(p_kind=ASSERTION, p_flow_id=taken.flow_id)
    challenge = connection.execute(statement, params).scalar()
    return None if challenge is None else bytes(challenge)

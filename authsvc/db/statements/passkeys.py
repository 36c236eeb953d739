"""What passkeys read and write on the hot paths: the account's credentials, a ceremony's
challenge taken once, the claim of a signature counter, and the disabling of a clone.

Each decision is ONE conditional statement:
- a ceremony is taken (DELETEd, its challenge returned) only WHERE it is this account's (and
  flow's), of its kind and unexpired: of two submissions of one ceremony exactly one gets it,
  and a used ceremony leaves no row behind;
- a counter is stored only WHERE it moves forward (`sign_count < :new`), or both stay 0 (an
  authenticator that keeps no counter, as synced passkeys do), on a credential not disabled: a
  counter that does not move forward means two copies of the private key (a cloned
  credential), and of concurrent assertions carrying one counter value exactly one wins. The
  claim runs in the transaction that completes the flow (db/statements/claims.py), like a TOTP
  step's;
- a clone is disabled only WHERE it is not yet (the first detection does the rest once).

Ceremonies do not accumulate: starting one deletes the account's earlier registrations (for a
registration) or the flow's earlier ceremonies (for an assertion), and every start deletes the
account's expired ceremonies of either kind. What stays is at most one registration per
account and the unexpired assertions of its open flows.
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
    func,
    insert,
    or_,
    select,
    update,
)

from authsvc.db import Account, PasskeyCeremony, PasskeyCredential, SecondFactor
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import flows, table

CREDENTIALS = table(PasskeyCredential)
FACTORS = table(SecondFactor)
CEREMONIES = table(PasskeyCeremony)
ACCOUNTS = table(Account)
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
# A disabled credential (a detected clone) is neither offered nor accepted.
_OF_ACCOUNT = (
    select(*_STORED)
    .where(CREDENTIALS.c.account_id == _ACCOUNT, CREDENTIALS.c.disabled_at.is_(None))
    .order_by(CREDENTIALS.c.created_at, CREDENTIALS.c.id)
)
_ONE = select(*_STORED).where(
    CREDENTIALS.c.account_id == _ACCOUNT,
    CREDENTIALS.c.disabled_at.is_(None),
    CREDENTIALS.c.credential_id
    == bindparam("p_credential_id", type_=CREDENTIALS.c.credential_id.type),
)


def of_account(connection: Connection, account_id: uuid.UUID) -> list[StoredCredential]:
    rows = connection.execute(_OF_ACCOUNT, {"p_account_id": account_id}).all()
    return [StoredCredential(*row) for row in rows]


def find(
    connection: Connection, account_id: uuid.UUID, credential_id: bytes
) -> StoredCredential | None:
    """The account's enabled credential of that id (another account's is not found: a
    credential answers only for the account that registered it; a disabled one for none)."""
    row = connection.execute(
        _ONE, {"p_account_id": account_id, "p_credential_id": credential_id}
    ).first()
    return None if row is None else StoredCredential(*row)


_NEW = bindparam("p_sign_count", type_=BigInteger())
CLAIM_COUNTER = (
    update(CREDENTIALS)
    .where(
        CREDENTIALS.c.id == bindparam("p_credential_row_id", type_=CREDENTIALS.c.id.type),
        # Disabled meanwhile (a clone detected by a concurrent assertion): this one loses too.
        CREDENTIALS.c.disabled_at.is_(None),
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


_ROW_ID = bindparam("p_credential_row_id", type_=CREDENTIALS.c.id.type)
# The first detection of a clone disables the credential; a later one changes nothing (and
# gets no row: the trust was ended, the holder told, once).
DISABLE = (
    update(CREDENTIALS)
    .where(CREDENTIALS.c.id == _ROW_ID, CREDENTIALS.c.disabled_at.is_(None))
    .values(disabled_at=_NOW)
    .returning(CREDENTIALS.c.name)
)


def disable_params(credential_row_id: uuid.UUID, now: datetime) -> dict[str, Any]:
    return {"p_credential_row_id": credential_row_id, "p_now": now}


# With a clone detected, whoever held the copy may have added factors of their own (a step-up
# answered by the copy enrols a passkey or an app): every other passkey of the account is
# disabled and its apps removed, the phone staying the rule; the holder adds back theirs.
DISABLE_THE_OTHERS = (
    update(CREDENTIALS)
    .where(CREDENTIALS.c.account_id == _ACCOUNT, CREDENTIALS.c.disabled_at.is_(None))
    .values(disabled_at=_NOW)
    .returning(CREDENTIALS.c.id)
)
REMOVE_THE_APPS = delete(FACTORS).where(FACTORS.c.account_id == _ACCOUNT).returning(FACTORS.c.id)


# The registration's cap. On PostgreSQL the account's row is locked first (FOR NO KEY UPDATE,
# authsvc/db/locks.py; SQLite writers are serialised by BEGIN IMMEDIATE and the clause is left
# out): two registrations of one account at the cap queue there, and the second counts after
# the first committed (READ COMMITTED: the count is a later statement, with a later snapshot).
LOCK_ACCOUNT = (
    select(ACCOUNTS.c.id)
    .where(ACCOUNTS.c.id == _ACCOUNT)
    .with_for_update(of=ACCOUNTS.c.id, key_share=True)  # NO KEY UPDATE: db/locks.py
)
# Every credential counts, a disabled one too: it keeps its row until its holder removes it.
COUNT_OF_ACCOUNT = (
    select(func.count()).select_from(CREDENTIALS).where(CREDENTIALS.c.account_id == _ACCOUNT)
)


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


def _prune(connection: Connection, ceremony: Ceremony) -> None:
    """The account's expired ceremonies go (every kind, every flow): an unanswered one is
    otherwise only replaced by its own flow's next one, and a flow opened once and abandoned
    would leave its ceremony for ever."""
    connection.execute(
        delete(CEREMONIES).where(
            CEREMONIES.c.account_id == ceremony.account_id,
            CEREMONIES.c.expires_at <= ceremony.created_at,
        )
    )


def start_registration(connection: Connection, ceremony: Ceremony) -> None:
    """Keep a registration's challenge; the account's earlier unfinished ones go (only the
    latest options can be answered), and its expired ones."""
    _prune(connection, ceremony)
    connection.execute(
        delete(CEREMONIES).where(
            CEREMONIES.c.account_id == ceremony.account_id,
            CEREMONIES.c.kind == REGISTRATION,
        )
    )
    connection.execute(insert(CEREMONIES).values(**ceremony.__dict__))


def start_assertion(
    connection: Connection, window: flows.FactorWindow, ceremony: Ceremony
) -> flows.Window | None:
    """Make the assertion the flow's current challenge (the attempt window, as a TOTP
    challenge opens it) and keep its challenge under the window's challenge id and expiry, in
    one transaction; the flow's earlier ceremonies go, and the account's expired ones. None:
    the flow closed meanwhile, nothing written."""
    opened = flows.open_factor_window(connection, window)
    if opened is None:
        return None
    _prune(connection, ceremony)
    connection.execute(delete(CEREMONIES).where(CEREMONIES.c.flow_id == ceremony.flow_id))
    row = {**ceremony.__dict__, "id": opened.challenge_id, "expires_at": opened.code_expires_at}
    connection.execute(insert(CEREMONIES).values(**row))
    return opened


_CONSUMABLE = (
    CEREMONIES.c.id == bindparam("p_ceremony_id", type_=CEREMONIES.c.id.type),
    CEREMONIES.c.account_id == _ACCOUNT,
    CEREMONIES.c.kind == bindparam("p_kind"),
    CEREMONIES.c.expires_at > _NOW,
)
_CONSUME_REGISTRATION = (
    delete(CEREMONIES)
    .where(*_CONSUMABLE, CEREMONIES.c.flow_id.is_(None))
    .returning(CEREMONIES.c.challenge)
)
_CONSUME_ASSERTION = (
    delete(CEREMONIES)
    .where(
        *_CONSUMABLE,
        CEREMONIES.c.flow_id == bindparam("p_flow_id", type_=CEREMONIES.c.flow_id.type),
    )
    .returning(CEREMONIES.c.challenge)
)


@dataclass(frozen=True)
class Consume:
    ceremony_id: uuid.UUID
    account_id: uuid.UUID
    flow_id: uuid.UUID | None  # None: a registration
    now: datetime


def consume(connection: Connection, taken: Consume) -> bytes | None:
    """The ceremony's challenge, once (its row deleted): None when it is unknown, another
    account's or flow's, expired, or already taken."""
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

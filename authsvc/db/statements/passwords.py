"""Password checks: the login found and its check reserved (before argon2), the wrong password
counted, the reservation released, the hash upgraded.

The counters live on the account row or, for a login that does not exist, on its
`login_failures` row: the same columns, changed by the same expressions, so that both are
locked alike. The numbers (threshold, lease, lock lengths) are the lockout policy's
(`authsvc.policies.lockout`), bound as parameters (`Rules.parameters`); these statements only
apply them atomically: every change is a conditional UPDATE that PostgreSQL re-evaluates on the
latest row version after waiting for a concurrent writer, and that SQLite serialises (one
writer). Statements are built once (at import, or once per number of lock lengths).

Known and unknown logins run the very same statements (only the parameters differ): the
reservation and the failure each touch both tables, the one that does not apply by a key that
matches nothing (`= NULL`), so that nothing in the work done tells them apart.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Table,
    and_,
    bindparam,
    case,
    exists,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from authsvc.db import Account, LoginFailures, Organization
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, factors, table

ACCOUNTS = table(Account)
ORGANIZATIONS = table(Organization)
LOGIN_FAILURES = table(LoginFailures)

# Named parameters ("pw_": a bound name must not be a column's name in an UPDATE).
_NOW = bindparam("pw_now", type_=UTCDateTime())
_LEASE = bindparam("pw_lease", type_=UTCDateTime())
_THRESHOLD = bindparam("pw_threshold", type_=ACCOUNTS.c.failed_password_count.type)
_ACCOUNT = bindparam("pw_account", type_=ACCOUNTS.c.id.type)
_UNKNOWN_KEY = bindparam("pw_unknown_key", type_=LOGIN_FAILURES.c.key_digest.type)


def _lock(k: int) -> Any:
    return bindparam(f"pw_lock_{k}", type_=UTCDateTime())


@dataclass(frozen=True)
class Rules:
    """What the lockout policy decided for a check at `now`: the checks a login may run before
    it locks, the end of a reservation's lease, and the end of the next lock by the number of
    locks so far (the last one for every lock after it)."""

    now: datetime
    threshold: int
    lease_until: datetime
    lock_until: tuple[datetime, ...]

    def parameters(self) -> dict[str, Any]:
        return {
            "pw_now": self.now,
            "pw_threshold": self.threshold,
            "pw_lease": self.lease_until,
            **{f"pw_lock_{k}": moment for k, moment in enumerate(self.lock_until)},
        }


@dataclass(frozen=True)
class LoginAccount:
    """The account columns a login needs (the password, the way to its phone, the code lock)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    status: str
    password_hash: str | None
    phone_kind: str | None
    phone_masked: str | None
    failed_code_count: int
    code_window_failures: int
    code_locked_until: datetime | None
    # The account's security state when read (statements.logins compares it in the verdict).
    security_epoch: int
    # A confirmed authenticator app and a passkey (its flow lists CHANNEL_TOTP and
    # CHANNEL_PASSKEY), read in the same lookup.
    has_totp: bool
    has_passkey: bool


@dataclass(frozen=True)
class Reservation:
    """The login's account (None: no such organisation or login) and whether the check got its
    place; if not, the lock as the statement read it (null until and count when the unknown
    login has no row yet)."""

    account: LoginAccount | None
    taken: bool
    locked_until: datetime | None
    lock_count: int | None


def unlocked(counters: Table, now: Any = _NOW) -> Any:
    until = counters.c.password_locked_until
    return or_(until.is_(None), until <= now)


def _pending(counters: Table, now: Any) -> Any:
    """The password checks in flight: none once their lease passed (a process that died
    between its reservation and its verdict must not hold the login's allowance forever)."""
    lease = counters.c.password_pending_until
    expired = or_(lease.is_(None), lease <= now)
    return case((expired, 0), else_=counters.c.password_checks_pending)


def released(counters: Table, now: Any = _NOW) -> Any:
    """The checks in flight once one of them has its verdict."""
    pending = _pending(counters, now)
    return case((pending > 0, pending - 1), else_=0)


# A check may start: the login is unlocked and the failures counted plus the checks in flight
# stay below the threshold.
def _fits(counters: Table) -> Any:
    return and_(
        unlocked(counters), counters.c.failed_password_count + _pending(counters, _NOW) < _THRESHOLD
    )


def _taken(counters: Table) -> dict[str, Any]:
    values: dict[str, Any] = {
        "password_checks_pending": _pending(counters, _NOW) + 1,
        "password_pending_until": _LEASE,
    }
    if counters is LOGIN_FAILURES:
        values["updated_at"] = _NOW
    return values


def _failed(counters: Table, locks_known: int) -> dict[str, Any]:
    """The SET clause of a counted wrong password (unless a lock stands meanwhile): one more
    failure, or a lock at the threshold, its length chosen by the number of locks so far; and
    the check's reservation released."""
    failures = counters.c.failed_password_count + 1
    reached = failures >= _THRESHOLD
    locks = counters.c.password_lock_count
    until = case(
        *((locks == k, _lock(k)) for k in range(locks_known)), else_=_lock(locks_known - 1)
    )
    counted = {
        "failed_password_count": case((reached, 0), else_=failures),
        "password_lock_count": case((reached, locks + 1), else_=locks),
        "password_locked_until": case((reached, until), else_=counters.c.password_locked_until),
    }
    still_unlocked = unlocked(counters)
    values: dict[str, Any] = {
        name: case((still_unlocked, value), else_=counters.c[name])
        for name, value in counted.items()
    }
    values["password_checks_pending"] = released(counters)
    if counters is LOGIN_FAILURES:
        values["updated_at"] = _NOW
    return values


# ---- before argon2: find the login, reserve its check --------------------------------------

_ACCOUNT_COLUMNS = (
    ACCOUNTS.c.id,
    ACCOUNTS.c.organization_id,
    ACCOUNTS.c.status,
    ACCOUNTS.c.password_hash,
    ACCOUNTS.c.phone_kind,
    ACCOUNTS.c.phone_masked,
    ACCOUNTS.c.failed_code_count,
    ACCOUNTS.c.code_window_failures,
    ACCOUNTS.c.code_locked_until,
    ACCOUNTS.c.security_epoch,
    *factors.other_factors(ACCOUNTS.c.id),
    ACCOUNTS.c.password_locked_until,
    ACCOUNTS.c.password_lock_count,
)
_FOUND = (
    select(*_ACCOUNT_COLUMNS)
    .select_from(ACCOUNTS)
    .join(ORGANIZATIONS, ACCOUNTS.c.organization_id == ORGANIZATIONS.c.id)
    .where(
        ORGANIZATIONS.c.siret == bindparam("pw_siret", type_=ORGANIZATIONS.c.siret.type),
        ACCOUNTS.c.login == bindparam("pw_login", type_=ACCOUNTS.c.login.type),
    )
)
# One row always: a placeholder to hang the (possibly missing) account and login_failures
# rows on, so that a known and an unknown login read the same columns.
_ONE = select(literal(1).label("one")).subquery("one")


def _state(found: Any, *also: Any) -> Any:
    """The account's columns (nulls when unknown) and the unknown login's lock, in one row."""
    return select(
        *(found.c[column.name] for column in _ACCOUNT_COLUMNS[:-2]),
        case(
            (found.c.id.is_(None), LOGIN_FAILURES.c.password_locked_until),
            else_=found.c.password_locked_until,
        ),
        case(
            (found.c.id.is_(None), LOGIN_FAILURES.c.password_lock_count),
            else_=found.c.password_lock_count,
        ),
        *also,
    ).select_from(
        _ONE.outerjoin(found, true()).outerjoin(
            LOGIN_FAILURES, LOGIN_FAILURES.c.key_digest == _UNKNOWN_KEY
        )
    )


# The first reservation of a login that does not exist (its row created with it).
_UNKNOWN_ROW = select(
    _UNKNOWN_KEY,
    literal(0),
    literal(0),
    literal(None, type_=UTCDateTime()),
    literal(1),
    _LEASE,
    _NOW,
)
_UNKNOWN_COLUMNS = [
    "key_digest",
    "failed_password_count",
    "password_lock_count",
    "password_locked_until",
    "password_checks_pending",
    "password_pending_until",
    "updated_at",
]
_TAKE_ACCOUNT = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == _ACCOUNT, _fits(ACCOUNTS))
    .values(_taken(ACCOUNTS))
    .returning(ACCOUNTS.c.id)
)


def _take_unknown(fresh: Any) -> Any:
    return fresh.on_conflict_do_update(
        index_elements=[LOGIN_FAILURES.c.key_digest],
        set_=_taken(LOGIN_FAILURES),
        where=_fits(LOGIN_FAILURES),
    ).returning(LOGIN_FAILURES.c.key_digest)


def _reserve_in_one() -> Any:
    """PostgreSQL: found, reserved on whichever row applies, and read, in one statement."""
    found = _FOUND.cte("found")
    account_taken = (
        update(ACCOUNTS)
        .where(ACCOUNTS.c.id == select(found.c.id).scalar_subquery(), _fits(ACCOUNTS))
        .values(_taken(ACCOUNTS))
        .returning(ACCOUNTS.c.id)
        .cte("account_taken")
    )
    fresh = postgresql_insert(LOGIN_FAILURES).from_select(
        _UNKNOWN_COLUMNS, _UNKNOWN_ROW.where(~exists(select(found.c.id)))
    )
    unknown_taken = _take_unknown(fresh).cte("unknown_taken")
    taken = or_(exists(select(account_taken.c.id)), exists(select(unknown_taken.c.key_digest)))
    return _state(found, taken)


_RESERVE_IN_ONE = _reserve_in_one()
_STATE = _state(_FOUND.subquery("found"))
_TAKE_UNKNOWN = _take_unknown(
    sqlite_insert(LOGIN_FAILURES).from_select(
        _UNKNOWN_COLUMNS, _UNKNOWN_ROW.where(bindparam("pw_is_unknown", type_=Boolean()))
    )
)


def reserve(
    connection: Connection, siret: str, login: str, unknown_key: bytes, rules: Rules
) -> Reservation:
    """Find the login's account and take one of the checks it has left before it locks: on
    the account row, or on the `login_failures` row keyed `unknown_key` when there is no such
    account (created at its first check). One statement on PostgreSQL."""
    parameters = {
        **rules.parameters(),
        "pw_siret": siret,
        "pw_login": login,
        "pw_unknown_key": unknown_key,
    }
    if connection.dialect.name == "postgresql":
        row = connection.execute(_RESERVE_IN_ONE, parameters).one()
        return _reservation(row[:-1], bool(row[-1]))
    # SQLite (one writer, so the read stays true until the writes): the same three steps.
    row = connection.execute(_STATE, parameters).one()
    account_id = row[0]
    on_account = connection.execute(_TAKE_ACCOUNT, {**parameters, "pw_account": account_id}).first()
    on_unknown = connection.execute(
        _TAKE_UNKNOWN, {**parameters, "pw_is_unknown": account_id is None}
    ).first()
    taken = on_account is not None or on_unknown is not None
    return _reservation(row, taken)


def _reservation(row: Any, taken: bool) -> Reservation:
    *columns, locked_until, lock_count = row
    account = LoginAccount(*columns) if columns[0] is not None else None
    return Reservation(account, taken, locked_until, lock_count)


# ---- after argon2 ---------------------------------------------------------------------------


@cache
def _failing(locks_known: int) -> tuple[Any, Any, Any, Any]:
    """The statements of a wrong password, for this many lock lengths (one set per setting):
    on the account, on the unknown login's row, and PostgreSQL's one statement of both with
    the audit row (its outcome from the lock as written), and without one."""
    on_account = (
        update(ACCOUNTS)
        .where(ACCOUNTS.c.id == _ACCOUNT)
        .values(_failed(ACCOUNTS, locks_known))
        .returning(ACCOUNTS.c.password_locked_until)
    )
    # A known login's key is null: its `login_failures` row, if any, is a stranger's past.
    on_unknown = (
        update(LOGIN_FAILURES)
        .where(LOGIN_FAILURES.c.key_digest == _UNKNOWN_KEY)
        .values(_failed(LOGIN_FAILURES, locks_known))
        .returning(LOGIN_FAILURES.c.password_locked_until)
    )
    account_failed, unknown_failed = (
        on_account.cte("account_failed"),
        on_unknown.cte("unknown_failed"),
    )
    until = union_all(
        select(account_failed.c.password_locked_until),
        select(unknown_failed.c.password_locked_until),
    ).scalar_subquery()
    outcome = case((until > _NOW, "ACCOUNT_LOCKED"), else_="INVALID_CREDENTIALS")
    logged = insert(audit.AUDIT).from_select(
        list(audit.COLUMNS),
        select(
            *(outcome if name == "outcome" else audit.PARAMETERS[name] for name in audit.COLUMNS)
        ),
    )
    in_one = select(until)
    return on_account, on_unknown, in_one.add_cte(logged.cte("logged")), in_one


def fail(
    connection: Connection,
    account_id: uuid.UUID | None,
    unknown_key: bytes | None,
    rules: Rules,
    logged: dict[str, Any] | None,
) -> datetime | None:
    """Settle a reserved check whose password was wrong: one failure more (the lock at the
    threshold) on the account, or on the unknown login's row (`account_id` None), with the
    `logged` audit row, its outcome ACCOUNT_LOCKED when the login is locked afterwards, else
    INVALID_CREDENTIALS. Returns the login's lock as written. One statement on PostgreSQL."""
    on_account, on_unknown, logged_in_one, alone_in_one = _failing(len(rules.lock_until))
    parameters = {**rules.parameters(), "pw_account": account_id, "pw_unknown_key": unknown_key}
    if connection.dialect.name == "postgresql":
        if logged is None:
            return connection.execute(alone_in_one, parameters).scalar()
        return connection.execute(
            logged_in_one, {**parameters, **audit.parameters(logged)}
        ).scalar()
    locks = [
        connection.execute(on_account, parameters).scalar(),
        connection.execute(on_unknown, parameters).scalar(),
    ]
    locked_until: datetime | None = locks[0] if account_id is not None else locks[1]
    if logged is not None:
        locked = locked_until is not None and locked_until > rules.now
        audit.add(
            connection, {**logged, "outcome": "ACCOUNT_LOCKED" if locked else "INVALID_CREDENTIALS"}
        )
    return locked_until


_RELEASE = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == _ACCOUNT)
    .values(password_checks_pending=released(ACCOUNTS))
    .returning(ACCOUNTS.c.password_locked_until)
)


def release(connection: Connection, account_id: uuid.UUID, now: datetime) -> datetime | None:
    """Settle a reserved check whose password was right, with nothing else to do (the login
    refused for another reason, or a password change): the lock as it is when the row is
    written, which decides whether the right password counts."""
    return connection.execute(_RELEASE, {"pw_account": account_id, "pw_now": now}).scalar()


_REHASH = (
    update(ACCOUNTS)
    .where(
        ACCOUNTS.c.id == _ACCOUNT,
        ACCOUNTS.c.password_hash == bindparam("pw_stored", type_=ACCOUNTS.c.password_hash.type),
    )
    .values(password_hash=bindparam("pw_new_hash", type_=ACCOUNTS.c.password_hash.type))
)


def rehash(connection: Connection, account_id: uuid.UUID, stored: str, new_hash: str) -> None:
    """Upgrade a hash made with older parameters; only if nobody changed it meanwhile."""
    connection.execute(
        _REHASH, {"pw_account": account_id, "pw_stored": stored, "pw_new_hash": new_hash}
    )

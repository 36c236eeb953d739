"""Lockouts: consecutive wrong passwords lock a login, consecutive wrong codes lock the second
factor. Counters live on the account row and change only through conditional UPDATEs, so that
concurrent failures are all counted and a lock is set exactly once.

- Password: `password_lock_threshold` (5) consecutive failures lock the login for
  `password_lock_s` (15 min), twice as long at each new lock, at most `password_lock_max_s`
  (24 h). While locked, Login answers ACCOUNT_LOCKED whatever the password, without checking
  it. Logins that do not exist are locked alike, by the same SQL on a `login_failures` row
  (keyed by a digest of organisation + login), so the answer reveals nothing about existence,
  in content or in time, on one process or many.
- Codes: `code_lock_threshold` (10) consecutive wrong codes, across flows and resends, lock
  the second factor for `code_lock_s` (15 min) and the user is told by email; at
  `code_failure_hard_bound` (100) it stays locked until an operator unlocks it.
- Counters reset only on a full success (a session or an action grant issued).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.courier import templates
from authsvc.courier.outbox import enqueue
from authsvc.db import Account, LoginFailures
from authsvc.db.base import UTCDateTime
from authsvc.errors import Failure
from authsvc.phones import mask_email
from authsvc.policies.ratelimit import lock_durations

# What RetryInfo says when only an operator can lift a lock (the code failures' hard bound).
UNTIL_OPERATOR_S = 86400.0


def account_locked(retry_after: float) -> Failure:
    return Failure(
        "FAILED_PRECONDITION",
        "ACCOUNT_LOCKED",
        "too many failures: this login is locked for a while",
        retry_after=max(retry_after, 0.0),
    )


def _at(moment: datetime) -> object:
    return literal(moment, type_=UTCDateTime())


def unknown_login_key(app: App, siret: str, login: str) -> bytes:
    return app.keys.lookup_digest(f"password-lock\x1f{siret}\x1f{login}")


# ---- passwords ------------------------------------------------------------------------------


async def check_password_lock(
    app: App,
    db: AsyncSession,
    account: Account | None,
    siret: str,
    login: str,
    now: datetime,
) -> None:
    """Before the password is checked (in the login's read session): a locked login is
    refused, whatever the password."""
    if account is not None:
        until = account.password_locked_until
    else:
        until = await db.scalar(
            select(LoginFailures.password_locked_until).where(
                LoginFailures.key_digest == unknown_login_key(app, siret, login)
            )
        )
    if until is not None and until > now:
        raise account_locked((until - now).total_seconds())


def _failure_values(
    table: type[Account] | type[LoginFailures], app: App, now: datetime
) -> dict[str, Any]:
    """The SET clause of a counted wrong password: one more failure, or a lock at the
    threshold (its length chosen by the number of locks so far), in one statement."""
    durations = lock_durations(app.settings)
    failures = table.failed_password_count + 1
    reached = failures >= app.settings.password_lock_threshold
    until = case(
        *(
            (table.password_lock_count == k, _at(now + timedelta(seconds=d)))
            for k, d in enumerate(durations)
        ),
        else_=_at(now + timedelta(seconds=durations[-1])),
    )
    return {
        "failed_password_count": case((reached, 0), else_=failures),
        "password_lock_count": case(
            (reached, table.password_lock_count + 1), else_=table.password_lock_count
        ),
        "password_locked_until": case((reached, until), else_=table.password_locked_until),
    }


def _unlocked(table: type[Account] | type[LoginFailures], now: datetime) -> Any:
    return or_(table.password_locked_until.is_(None), table.password_locked_until <= now)


async def password_failure(
    app: App,
    db: AsyncSession,
    account_id: uuid.UUID | None,
    siret: str,
    login: str,
    now: datetime,
) -> Failure | None:
    """Count a wrong password (in the caller's transaction), on the account or, for a login
    that does not exist, on its `login_failures` row: one statement either way. Returns
    ACCOUNT_LOCKED when this failure locked the login (or a concurrent one had), else None."""
    statement: Any
    if account_id is None:
        key = unknown_login_key(app, siret, login)
        dialect = db.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        first_locks = app.settings.password_lock_threshold <= 1
        statement = (
            insert(LoginFailures)
            .values(
                key_digest=key,
                failed_password_count=0 if first_locks else 1,
                password_lock_count=1 if first_locks else 0,
                password_locked_until=(
                    now + timedelta(seconds=lock_durations(app.settings)[0])
                    if first_locks
                    else None
                ),
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=[LoginFailures.key_digest],
                set_={**_failure_values(LoginFailures, app, now), "updated_at": now},
                where=_unlocked(LoginFailures, now),
            )
            .returning(LoginFailures.password_locked_until)
        )
        current = select(LoginFailures.password_locked_until).where(LoginFailures.key_digest == key)
    else:
        statement = (
            update(Account)
            .where(Account.id == account_id, _unlocked(Account, now))
            .values(**_failure_values(Account, app, now))
            .returning(Account.password_locked_until)
        )
        current = select(Account.password_locked_until).where(Account.id == account_id)
    row = (await db.execute(statement)).one_or_none()
    locked_until = row[0] if row is not None else await db.scalar(current)
    if locked_until is not None and locked_until > now:
        return account_locked((locked_until - now).total_seconds())
    return None


# ---- codes ----------------------------------------------------------------------------------


def check_code_lock(app: App, account: Account, now: datetime) -> None:
    """Before a code is sent or checked."""
    if account.failed_code_count >= app.settings.code_failure_hard_bound:
        raise account_locked(UNTIL_OPERATOR_S)
    until = account.code_locked_until
    if until is not None and until > now:
        raise account_locked((until - now).total_seconds())


def _code_unlocked(app: App, now: datetime) -> list[object]:
    return [
        Account.failed_code_count < app.settings.code_failure_hard_bound,
        or_(Account.code_locked_until.is_(None), Account.code_locked_until <= now),
    ]


async def code_failure(
    app: App, db: AsyncSession, account_id: uuid.UUID, now: datetime
) -> tuple[int, bool] | None:
    """Count a wrong code (in the caller's transaction): (consecutive failures, this failure
    locked the factor), or None when the factor is locked already (nothing counted)."""
    settings = app.settings
    failures = Account.failed_code_count + 1
    row = (
        await db.execute(
            update(Account)
            .where(Account.id == account_id, *_code_unlocked(app, now))  # type: ignore[arg-type]
            .values(
                failed_code_count=failures,
                code_locked_until=case(
                    (
                        failures % settings.code_lock_threshold == 0,
                        _at(now + timedelta(seconds=settings.code_lock_s)),
                    ),
                    else_=Account.code_locked_until,
                ),
            )
            .returning(Account.failed_code_count)
        )
    ).one_or_none()
    if row is None:
        return None
    count = int(row[0])
    locked = count % settings.code_lock_threshold == 0 or count >= settings.code_failure_hard_bound
    return count, locked


def notify_code_lock(app: App, db: AsyncSession, account: Account) -> None:
    """Tell the holder (email, in the caller's transaction) that codes failing locked the factor."""
    message = templates.email(
        "code_failures", display_name=account.display_name, service=app.settings.service_name
    )
    enqueue(
        app,
        db,
        channel="email",
        template="code_failures",
        to=account.email,
        masked_to=mask_email(account.email),
        message=message,
        flow_id=None,
    )


async def claim_code_success(
    app: App, db: AsyncSession, account_id: uuid.UUID, now: datetime, *, full: bool
) -> bool:
    """Before a right code takes effect (in the caller's transaction): False when the factor
    was locked meanwhile. `full` (a session or a grant follows) resets every counter."""
    values: dict[str, object] = (
        {
            "failed_code_count": 0,
            "code_locked_until": None,
            "failed_password_count": 0,
            "password_lock_count": 0,
            "password_locked_until": None,
        }
        if full
        else {"failed_code_count": Account.failed_code_count}  # takes the row lock only
    )
    done = await db.execute(
        update(Account)
        .where(Account.id == account_id, *_code_unlocked(app, now))  # type: ignore[arg-type]
        .values(**values)
    )
    return done.rowcount == 1  # type: ignore[attr-defined,no-any-return]


async def clear(db: AsyncSession, account_id: uuid.UUID) -> None:
    """A full success without a code (trusted device), or an operator's unlock."""
    await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(
            failed_code_count=0,
            code_locked_until=None,
            failed_password_count=0,
            password_lock_count=0,
            password_locked_until=None,
        )
    )


async def unlock(app: App, siret: str, login: str) -> bool:
    """An operator lifts every lockout of one account (`authsvc unlock`)."""
    from authsvc.db import Organization

    async with app.write() as db:
        account_id = await db.scalar(
            select(Account.id)
            .join(Organization, Account.organization_id == Organization.id)
            .where(Organization.siret == siret, Account.login == login)
        )
        if account_id is None:
            return False
        await clear(db, account_id)
    return True

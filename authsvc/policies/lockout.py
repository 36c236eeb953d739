"""Lockouts: consecutive wrong passwords lock a login, consecutive wrong codes lock the second
factor. Counters live on the account row and change only through conditional UPDATEs, so that
concurrent failures are all counted and a lock is set exactly once.

- Password: `password_lock_threshold` (5) consecutive failures lock the login for
  `password_lock_s` (15 min), twice as long at each new lock, at most `password_lock_max_s`
  (24 h). While locked, Login answers ACCOUNT_LOCKED whatever the password, without checking
  it. Each check reserves its place before argon2 (failures counted + checks in flight stay
  below the threshold), so concurrent calls never run more checks than the threshold per
  lock window, and a right password counts only through a statement that re-reads the lock.
  Logins that do not exist are locked alike, by the same SQL on a `login_failures` row
  (keyed by a digest of organisation + login), so the answer reveals nothing about existence,
  in content or in time, on one process or many.
- Codes: `code_lock_threshold` (10) consecutive wrong codes, across flows and resends, lock
  the second factor for `code_lock_s` (15 min) and the user is told by email; at
  `code_failure_hard_bound` (100) wrong codes within `code_failure_window_s` (30 days, a
  fixed window no success resets), or as many in a row, it stays locked until an operator
  unlocks it. A wrong code after a first factor tells the holder (one email a day at most).
- Consecutive counters reset only on a full success with a code (a session or an action
  grant issued); a login that needed no code (trusted device) resets nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, case, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.app import App
from authsvc.db import Account, LoginFailures
from authsvc.db.base import UTCDateTime
from authsvc.db.statements.codes import CodeRules
from authsvc.errors import Failure
from authsvc.policies.ratelimit import lock_durations

# What RetryInfo says when only an operator can lift a lock (the code failures' hard bound).
UNTIL_OPERATOR_S = 86400.0
# A reserved password check holds its place this long at most (argon2 takes well under a
# second; this covers a saturated hashing pool). A lost reservation frees itself after it.
PASSWORD_CHECK_LEASE_S = 60.0
# At most one notice of wrong codes after a first factor per account in this period, so that
# whoever knows the password cannot flood the holder's mailbox.
CODE_NOTICE_INTERVAL_S = 86400


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


def _pending(table: type[Account] | type[LoginFailures], now: datetime) -> Any:
    """The password checks in flight: none once their lease passed (a process that died
    between its reservation and its verdict must not hold the login's allowance forever)."""
    expired = or_(table.password_pending_until.is_(None), table.password_pending_until <= now)
    return case((expired, 0), else_=table.password_checks_pending)


def _released(table: type[Account] | type[LoginFailures], now: datetime) -> Any:
    """The checks in flight once one of them has its verdict."""
    pending = _pending(table, now)
    return case((pending > 0, pending - 1), else_=0)


def _row(
    app: App, account_id: uuid.UUID | None, siret: str, login: str
) -> tuple[type[Account] | type[LoginFailures], Any]:
    """The row that holds a login's counters: its account's, or its `login_failures` row."""
    if account_id is None:
        return LoginFailures, LoginFailures.key_digest == unknown_login_key(app, siret, login)
    return Account, Account.id == account_id


_T = TypeVar("_T")


async def settled(check: Coroutine[Any, Any, _T]) -> _T:
    """Run a reserved password check to its verdict even when the caller goes away.

    A call cancelled between the reservation and the verdict (the client hung up or its
    deadline passed) would otherwise leave its failure uncounted: a free guess once the
    lease ends. The check runs in a task of its own, shielded from the handler's
    cancellation; a cancelled caller simply never hears the verdict."""
    task = asyncio.ensure_future(check)
    task.add_done_callback(_verdict_heard_by_nobody)
    return await asyncio.shield(task)


def _verdict_heard_by_nobody(task: asyncio.Future[Any]) -> None:
    # Retrieve the refusal of a check whose caller left (else asyncio logs it as unhandled).
    if not task.cancelled():
        task.exception()


async def reserve_password_check(
    app: App,
    db: AsyncSession,
    account_id: uuid.UUID | None,
    siret: str,
    login: str,
    now: datetime,
) -> None:
    """Before argon2 (its own short transaction): take one of the checks that the login has
    left before it locks, or refuse with ACCOUNT_LOCKED without checking anything.

    One conditional statement, on the account or on the unknown login's row alike: the
    reservation fits only WHERE the login is unlocked and the failures counted plus the
    checks in flight stay below the threshold. However many calls arrive together, at most
    `password_lock_threshold` argon2 verifications run per lock window (PostgreSQL re-reads
    the row under its lock; SQLite serialises the writers)."""
    table, key = _row(app, account_id, siret, login)
    threshold = app.settings.password_lock_threshold
    fits = and_(
        _unlocked(table, now), table.failed_password_count + _pending(table, now) < threshold
    )
    taken = {
        "password_checks_pending": _pending(table, now) + 1,
        "password_pending_until": _at(now + timedelta(seconds=PASSWORD_CHECK_LEASE_S)),
    }
    statement: Any
    if account_id is None:
        dialect = db.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(LoginFailures)
            .values(
                key_digest=unknown_login_key(app, siret, login),
                failed_password_count=0,
                password_lock_count=0,
                password_locked_until=None,
                password_checks_pending=1,
                password_pending_until=now + timedelta(seconds=PASSWORD_CHECK_LEASE_S),
                updated_at=now,
            )
            .on_conflict_do_update(
                index_elements=[LoginFailures.key_digest],
                set_={**taken, "updated_at": now},
                where=fits,
            )
            .returning(LoginFailures.key_digest)
        )
    else:
        statement = update(Account).where(key, fits).values(**taken).returning(Account.id)
    if (await db.execute(statement)).one_or_none() is not None:
        return
    state = (
        await db.execute(select(table.password_locked_until, table.password_lock_count).where(key))
    ).one()
    until, locks = state
    if until is not None and until > now:
        raise account_locked((until - now).total_seconds())
    # Every check left is in flight: they decide. Answer as the lock they would set, the
    # same for a known login and an unknown one.
    durations = lock_durations(app.settings)
    raise account_locked(float(durations[min(int(locks), len(durations) - 1)]))


async def password_failure(
    app: App,
    db: AsyncSession,
    account_id: uuid.UUID | None,
    siret: str,
    login: str,
    now: datetime,
) -> Failure | None:
    """Settle a reserved check whose password was wrong (in the caller's transaction): one
    failure more, and the lock at the threshold, in one statement on the account or, for a
    login that does not exist, on its `login_failures` row. Returns ACCOUNT_LOCKED when this
    failure locked the login (or a concurrent one had), else None."""
    table, key = _row(app, account_id, siret, login)
    unlocked = _unlocked(table, now)
    values: dict[str, Any] = {
        name: case((unlocked, value), else_=getattr(table, name))
        for name, value in _failure_values(table, app, now).items()
    }
    values["password_checks_pending"] = _released(table, now)
    if table is LoginFailures:
        values["updated_at"] = now
    row = (
        await db.execute(
            update(table).where(key).values(**values).returning(table.password_locked_until)
        )
    ).one_or_none()
    locked_until = row[0] if row is not None else None
    if locked_until is not None and locked_until > now:
        return account_locked((locked_until - now).total_seconds())
    return None


async def password_success(
    app: App, db: AsyncSession, account_id: uuid.UUID, now: datetime
) -> Failure | None:
    """Settle a reserved check whose password was right (in the caller's transaction). The
    password is accepted only through this statement, which reads the lock as it is when the
    row is written: ACCOUNT_LOCKED if a lock was set meanwhile, else None. A right password
    alone resets no counter (only a full success does)."""
    row = (
        await db.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(password_checks_pending=_released(Account, now))
            .returning(Account.password_locked_until)
        )
    ).one_or_none()
    until = row[0] if row is not None else None
    if until is not None and until > now:
        return account_locked((until - now).total_seconds())
    return None


# ---- codes ----------------------------------------------------------------------------------


def _hard_bound_reached(app: App, consecutive: Any, in_window: Any) -> Any:
    """Only an operator lifts it: `code_failure_hard_bound` wrong codes within the window
    (that no success resets), or as many in a row without a success, however long ago."""
    bound = app.settings.code_failure_hard_bound
    return or_(consecutive >= bound, in_window >= bound)


class CodeCounters(Protocol):
    """An account's second-factor counters (an Account, or the columns a hot path read)."""

    @property
    def failed_code_count(self) -> int: ...

    @property
    def code_window_failures(self) -> int: ...

    @property
    def code_locked_until(self) -> datetime | None: ...


def code_rules(app: App) -> CodeRules:
    """The numbers that the code statements apply (authsvc/db/statements/codes.py)."""
    settings = app.settings
    return CodeRules(
        max_attempts=settings.max_code_attempts,
        lock_threshold=settings.code_lock_threshold,
        lock_s=settings.code_lock_s,
        hard_bound=settings.code_failure_hard_bound,
        window_s=settings.code_failure_window_s,
        notice_interval_s=CODE_NOTICE_INTERVAL_S,
    )


def check_code_lock(app: App, account: CodeCounters, now: datetime) -> None:
    """Before a code is sent or checked."""
    bound = app.settings.code_failure_hard_bound
    if account.failed_code_count >= bound or account.code_window_failures >= bound:
        raise account_locked(UNTIL_OPERATOR_S)
    until = account.code_locked_until
    if until is not None and until > now:
        raise account_locked((until - now).total_seconds())


def _code_unlocked(app: App, now: datetime) -> list[object]:
    return [
        ~_hard_bound_reached(app, Account.failed_code_count, Account.code_window_failures),
        or_(Account.code_locked_until.is_(None), Account.code_locked_until <= now),
    ]


async def claim_code_success(
    app: App, db: AsyncSession, account_id: uuid.UUID, now: datetime, *, full: bool
) -> bool:
    """Before a right code takes effect (in the caller's transaction): False when the factor
    was locked meanwhile. `full` (a session or a grant follows) resets the consecutive
    counters; the window's count of wrong codes stays (the hard bound)."""
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


async def both_factors_passed_without_code(db: AsyncSession, account_id: uuid.UUID) -> None:
    """A trusted-device login (the right password on a device that passed a code): the
    password's escalation starts again, so a stranger's guesses do not keep doubling the
    holder's lock; the code counters stay (no code was typed: the hard bound holds)."""
    await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(failed_password_count=0, password_lock_count=0)
    )


async def clear(db: AsyncSession, account_id: uuid.UUID) -> None:
    """An operator's unlock: every counter of the account starts again."""
    await db.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(
            failed_code_count=0,
            code_locked_until=None,
            code_window_failures=0,
            code_window_started_at=None,
            failed_password_count=0,
            password_lock_count=0,
            password_locked_until=None,
            password_checks_pending=0,
            password_pending_until=None,
        )
    )


async def unlock(app: App, siret: str, login: str) -> bool:
    """An operator lifts every lockout of one account (`authsvc unlock`); the audit trail
    says so (the actor is the operator, not an account), found or not."""
    from authsvc.db import Organization

    async with app.write() as db:
        organization_id = await db.scalar(
            select(Organization.id).where(Organization.siret == siret)
        )
        account_id = (
            await db.scalar(
                select(Account.id).where(
                    Account.organization_id == organization_id, Account.login == login
                )
            )
            if organization_id is not None
            else None
        )
        if account_id is not None:
            await clear(db, account_id)
        audit.record(
            db,
            app.clock,
            "account.unlocked",
            outcome="OK" if account_id is not None else "ACCOUNT_NOT_FOUND",
            organization_id=organization_id,
            target=account_id,
            by="operator",
        )
    return account_id is not None

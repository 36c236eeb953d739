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
  in content or in time, on one process or many. The statements are
  `authsvc.db.statements.passwords` (and the login's verdict, `statements.logins`); this
  module chooses the numbers they apply and reads their results.
- Codes: `code_lock_threshold` (10) consecutive wrong codes, across flows and resends, lock
  the second factor for `code_lock_s` (15 min) and the user is told by email; at
  `code_failure_hard_bound` (100) wrong codes within `code_failure_window_s` (30 days, a
  fixed window no success resets), or as many in a row, it stays locked until an operator
  unlocks it. A wrong code after a first factor tells the holder (one email a day at most).
- Consecutive counters reset only on a full success with a code (a session or an action
  grant issued). A login that needed no code (trusted device: the right password on a
  device that passed a code) restarts the password's escalation and resets no code counter.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from sqlalchemy import literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from authsvc import audit
from authsvc.app import App
from authsvc.db import Account
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import passwords
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


def password_rules(app: App, now: datetime) -> passwords.Rules:
    """The numbers a password check at `now` is held to (statements.passwords applies them)."""
    durations = lock_durations(app.settings)
    return passwords.Rules(
        now=now,
        threshold=app.settings.password_lock_threshold,
        lease_until=now + timedelta(seconds=PASSWORD_CHECK_LEASE_S),
        lock_until=tuple(now + timedelta(seconds=d) for d in durations),
    )


def check_password_lock(locked_until: datetime | None, now: datetime) -> None:
    """A locked login is refused, whatever the password."""
    if locked_until is not None and locked_until > now:
        raise account_locked((locked_until - now).total_seconds())


def password_verdict(locked_until: datetime | None, now: datetime) -> Failure | None:
    """The right password counts only if no lock was set meanwhile, as read by the statement
    that settled its check: ACCOUNT_LOCKED, else None."""
    if locked_until is not None and locked_until > now:
        return account_locked((locked_until - now).total_seconds())
    return None


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
    app: App, siret: str, login: str, now: datetime
) -> passwords.LoginAccount | None:
    """Before argon2: find the login's account (None when the organisation or the login does
    not exist) and take one of the checks it has left before it locks, or refuse with
    ACCOUNT_LOCKED without checking anything.

    One conditional statement, on the account or on the unknown login's row alike: the
    reservation fits only WHERE the login is unlocked and the failures counted plus the
    checks in flight stay below the threshold. However many calls arrive together, at most
    `password_lock_threshold` argon2 verifications run per lock window (PostgreSQL re-reads
    the row under its lock; SQLite serialises the writers)."""
    reservation = await app.db.statement(
        passwords.reserve,
        siret,
        login,
        unknown_login_key(app, siret, login),
        password_rules(app, now),
    )
    if reservation.taken:
        return reservation.account
    check_password_lock(reservation.locked_until, now)
    # Every check left is in flight: they decide. Answer as the lock they would set, the
    # same for a known login and an unknown one.
    durations = lock_durations(app.settings)
    locks = int(reservation.lock_count or 0)
    raise account_locked(float(durations[min(locks, len(durations) - 1)]))


async def password_failure(
    app: App,
    account_id: uuid.UUID | None,
    siret: str,
    login: str,
    now: datetime,
    logged: dict[str, Any] | None = None,
) -> Failure | None:
    """Settle a reserved check whose password was wrong: one failure more, and the lock at the
    threshold, in one statement on the account or, for a login that does not exist
    (`account_id` None), on its `login_failures` row; with the `logged` audit row, if any
    (its outcome set by the statement). Returns ACCOUNT_LOCKED when this failure locked the
    login (or a concurrent one had), else None."""
    unknown_key = unknown_login_key(app, siret, login) if account_id is None else None
    locked_until = await app.db.statement(
        passwords.fail, account_id, unknown_key, password_rules(app, now), logged
    )
    return password_verdict(locked_until, now)


async def password_success(app: App, account_id: uuid.UUID, now: datetime) -> Failure | None:
    """Settle a reserved check whose password was right, when nothing else follows in the
    same statement (statements.logins settles a login's): ACCOUNT_LOCKED if a lock was set
    meanwhile, else None. A right password alone resets no counter."""
    return password_verdict(await app.db.statement(passwords.release, account_id, now), now)


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

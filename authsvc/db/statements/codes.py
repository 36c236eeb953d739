"""What Verify writes: a right code that completes a login, a wrong code counted.

Both decisions have the same shape, on both backends (docs/design.md, flows/verify.py):
1. the account row is taken first, only WHERE its second factor is unlocked (PostgreSQL:
   `SELECT ... FOR UPDATE` in a CTE that the flow's UPDATE references; SQLite: the writer's
   IMMEDIATE transaction already holds the database), so no answer is given once a concurrent
   failure locked the factor, and rows are always locked account first, flow second;
2. ONE conditional UPDATE of the flow decides: still pending, same challenge, attempts left,
   unexpired (a right code: exactly one concurrent winner), or fewer than the maximum
   attempts counted (a wrong code: never more checks than the maximum);
3. ONE UPDATE of the account, only if the flow's UPDATE changed a row: the counters' reset
   and the phone verified (a right code), or one failure more, the lock at the threshold and
   the once-a-day notice's timestamp (a wrong code);
4. the rows that record it (session, trusted device, audit, queued notices), fed from the
   account's UPDATE.
On PostgreSQL the four are ONE statement (a data-modifying CTE, run by `app.db.statement`):
one round trip, atomic by itself, every part conditional on the part before, so a refused
decision changes nothing. On SQLite they are plain statements in the writer's transaction,
rolled back whole by `Refused`. The SQL decides nothing the flow has not chosen: the rules'
numbers come from the lockout policy, the rows from the flow.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    case,
    cast,
    exists,
    literal,
    or_,
    select,
    true,
    update,
)

from authsvc.db import Account, Flow, FlowStatus
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, devices, outbox, sessions, table
from authsvc.db.statements.returning import insert_from

FLOWS = table(Flow)
ACCOUNTS = table(Account)

# What the flow puts in a wrong code's audit details, in place of the counts that only the
# statement knows (the flow's attempts, the account's consecutive failures).
COUNTED_ATTEMPTS = "\x00attempts"
COUNTED_CONSECUTIVE = "\x00consecutive"
_COUNTED = re.compile(r"\\u0000(attempts|consecutive)")  # as json.dumps writes them


@dataclass(frozen=True)
class CodeRules:
    """The numbers of the lockout policy (policies/lockout.py) that the statements apply."""

    max_attempts: int  # per flow
    lock_threshold: int  # consecutive wrong codes that lock the factor for `lock_s`
    lock_s: int
    hard_bound: int  # wrong codes (in a row, or in the window) that only an operator lifts
    window_s: int
    notice_interval_s: int  # at most one notice of wrong codes per account in this period

    def locks(self, consecutive: int, in_window: int) -> bool:
        """Whether a failure that brought the counts here locked the factor (`_locks` is the
        same rule in SQL)."""
        return consecutive % self.lock_threshold == 0 or max(consecutive, in_window) >= (
            self.hard_bound
        )


class Refused(Exception):
    """The decision changed nothing. `why`: "locked" (the second factor is locked) or
    "closed" (the flow takes no such answer any more: completed, failed, expired, or its
    challenge replaced)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class RightCode:
    """A right code on a login flow, and the rows it writes if it wins."""

    flow_id: uuid.UUID
    challenge_id: uuid.UUID
    account_id: uuid.UUID
    now: datetime
    rules: CodeRules
    session: dict[str, Any]
    device: dict[str, Any]
    verified: dict[str, Any]  # the audit row


@dataclass(frozen=True)
class WrongCode:
    """A wrong code, and the rows it writes if it is counted."""

    flow_id: uuid.UUID
    account_id: uuid.UUID
    now: datetime
    rules: CodeRules
    failed: dict[str, Any]  # the audit row: details hold COUNTED_ATTEMPTS/_CONSECUTIVE
    locked_outcome: str  # the audit row's outcome when this failure locks the factor
    lock_notice: dict[str, Any]  # queued if this failure locks the factor
    wrong_codes_notice: dict[str, Any] | None  # else queued if due (None: never)


@dataclass(frozen=True)
class Counted:
    attempts: int  # the flow's wrong codes, this one included
    consecutive: int  # the account's consecutive wrong codes, this one included
    locked: bool  # this failure locked the second factor
    notified: bool  # a notice was queued


def _at(moment: datetime) -> Any:
    return literal(moment, type_=UTCDateTime())


def _unlocked(rules: CodeRules, now: datetime) -> list[Any]:
    return [
        ACCOUNTS.c.failed_code_count < rules.hard_bound,
        ACCOUNTS.c.code_window_failures < rules.hard_bound,
        or_(ACCOUNTS.c.code_locked_until.is_(None), ACCOUNTS.c.code_locked_until <= _at(now)),
    ]


def _locks(rules: CodeRules, consecutive: Any, in_window: Any) -> Any:
    return or_(
        consecutive % rules.lock_threshold == 0,
        consecutive >= rules.hard_bound,
        in_window >= rules.hard_bound,
    )


def _notice_due(rules: CodeRules, now: datetime) -> Any:
    since = _at(now - timedelta(seconds=rules.notice_interval_s))
    notified_at = ACCOUNTS.c.code_failures_notified_at
    return or_(notified_at.is_(None), notified_at <= since)


def _take_account(account_id: uuid.UUID, rules: CodeRules, now: datetime) -> Any:
    """The account row, only while its second factor is unlocked (locked FOR UPDATE on
    PostgreSQL; SQLAlchemy leaves the clause out on SQLite), and whether a notice is due."""
    return (
        select(ACCOUNTS.c.id, _notice_due(rules, now).label("due"))
        .where(ACCOUNTS.c.id == account_id, *_unlocked(rules, now))
        .with_for_update()
    )


def _first(connection: Connection, statement: Any) -> Any:
    return connection.execute(statement).first()


# ---- a right code on a login flow -----------------------------------------------------------


def _win(right: RightCode, *gate: Any) -> Any:
    now = right.now
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == right.flow_id,
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.challenge_id == right.challenge_id,
            FLOWS.c.failed_attempts < right.rules.max_attempts,
            FLOWS.c.code_expires_at > _at(now),
            FLOWS.c.expires_at > _at(now),
            *gate,
        )
        # The digest goes with the success: a used code leaves nothing to test guesses on.
        .values(status=FlowStatus.COMPLETED.value, completed_at=_at(now), code_digest=None)
        .returning(FLOWS.c.id)
    )


def _reset(right: RightCode, *gate: Any) -> Any:
    """A full success: every consecutive counter starts again (the window's count stays: the
    hard bound), and the phone that received the code is verified."""
    return (
        update(ACCOUNTS)
        .where(ACCOUNTS.c.id == right.account_id, *_unlocked(right.rules, right.now), *gate)
        .values(
            failed_code_count=0,
            code_locked_until=None,
            failed_password_count=0,
            password_lock_count=0,
            password_locked_until=None,
            phone_verified_at=_at(right.now),
        )
        .returning(ACCOUNTS.c.id)
    )


def complete_login(connection: Connection, right: RightCode) -> None:
    """Complete the login flow with its session, trusted device and audit row, or raise
    Refused having changed nothing."""
    taken = _take_account(right.account_id, right.rules, right.now)
    if connection.dialect.name == "postgresql":
        locked = taken.cte("locked")
        won = _win(right, exists(select(locked.c.id))).cte("won")
        reset = _reset(right, exists(select(won.c.id))).cte("reset")
        outcome = _first(
            connection,
            select(exists(select(locked.c.id)), exists(select(won.c.id))).add_cte(
                insert_from(sessions.SESSIONS, right.session, reset).cte("session"),
                insert_from(devices.DEVICES, right.device, reset).cte("device"),
                audit.insert_from(right.verified, reset).cte("verified"),
            ),
        )
        if not outcome[0]:
            raise Refused("locked")
        if not outcome[1]:
            raise Refused("closed")
        return
    if _first(connection, taken) is None:
        raise Refused("locked")
    if _first(connection, _win(right)) is None:
        raise Refused("closed")
    connection.execute(_reset(right))
    sessions.add(connection, right.session)
    devices.add(connection, right.device)
    audit.add(connection, right.verified)


# ---- a wrong code ---------------------------------------------------------------------------


def _count_attempt(wrong: WrongCode, *gate: Any) -> Any:
    """One attempt more, only while fewer than the maximum were counted; the same statement
    fails the flow at the maximum."""
    attempts = FLOWS.c.failed_attempts + 1
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == wrong.flow_id,
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.failed_attempts < wrong.rules.max_attempts,
            *gate,
        )
        .values(
            failed_attempts=attempts,
            status=case(
                (attempts >= wrong.rules.max_attempts, FlowStatus.FAILED.value),
                else_=FLOWS.c.status,
            ),
        )
        .returning(FLOWS.c.failed_attempts)
    )


def _count_failure(wrong: WrongCode, *gate: Any) -> Any:
    """ONE UPDATE of the account: the consecutive count (the lock at each threshold), the
    fixed window's count (a new window starts at the first failure after the last one ended)
    and, when a notice of wrong codes is due and this failure does not lock, its timestamp."""
    rules, now, c = wrong.rules, wrong.now, ACCOUNTS.c
    failures = c.failed_code_count + 1
    window_open = and_(
        c.code_window_started_at.is_not(None),
        c.code_window_started_at > _at(now - timedelta(seconds=rules.window_s)),
    )
    in_window = case((window_open, c.code_window_failures + 1), else_=1)
    values: dict[str, Any] = {
        "failed_code_count": failures,
        "code_locked_until": case(
            (failures % rules.lock_threshold == 0, _at(now + timedelta(seconds=rules.lock_s))),
            else_=c.code_locked_until,
        ),
        "code_window_failures": in_window,
        "code_window_started_at": case((window_open, c.code_window_started_at), else_=_at(now)),
    }
    if wrong.wrong_codes_notice is not None:
        notify = and_(~_locks(rules, failures, in_window), _notice_due(rules, now))
        values["code_failures_notified_at"] = case(
            (notify, _at(now)), else_=c.code_failures_notified_at
        )
    return (
        update(ACCOUNTS)
        .where(c.id == wrong.account_id, *_unlocked(rules, now), *gate)
        .values(**values)
        .returning(c.failed_code_count, c.code_window_failures)
    )


def _details_sql(details: str, counts: dict[str, Any]) -> Any:
    parts = _COUNTED.split(details)
    expression: Any = literal(parts[0], String())
    for name, text in zip(parts[1::2], parts[2::2], strict=True):
        expression = expression + cast(counts[name], String()) + literal(text, String())
    return expression


def _details(details: str, counts: dict[str, int]) -> str:
    return _COUNTED.sub(lambda found: str(counts[found.group(1)]), details)


def count_wrong_code(connection: Connection, wrong: WrongCode) -> Counted:
    """Count a wrong code on the flow and on the account, with its audit row and the notice
    it calls for, or raise Refused having counted nothing."""
    if connection.dialect.name == "postgresql":
        return _count_in_one_statement(connection, wrong)
    return _count_in_steps(connection, wrong)


def _count_in_one_statement(connection: Connection, wrong: WrongCode) -> Counted:
    rules = wrong.rules
    locked = _take_account(wrong.account_id, rules, wrong.now).cte("locked")
    counted = _count_attempt(wrong, exists(select(locked.c.id))).cte("counted")
    failed = _count_failure(wrong, exists(select(counted.c.failed_attempts))).cte("failed")
    locks = _locks(rules, failed.c.failed_code_count, failed.c.code_window_failures)
    recorded = audit.insert_from(
        wrong.failed,
        failed.join(counted, true()),
        outcome=case((locks, wrong.locked_outcome), else_=wrong.failed["outcome"]),
        details=_details_sql(
            wrong.failed["details"],
            {"attempts": counted.c.failed_attempts, "consecutive": failed.c.failed_code_count},
        ),
    )
    writes = [
        recorded.cte("recorded"),
        insert_from(outbox.OUTBOX, wrong.lock_notice, failed, locks).cte("lock_notice"),
    ]
    if wrong.wrong_codes_notice is not None:
        notice = insert_from(
            outbox.OUTBOX,
            wrong.wrong_codes_notice,
            failed.join(locked, true()),
            and_(~locks, locked.c.due),
        )
        writes.append(notice.cte("wrong_codes_notice"))
    row = _first(
        connection,
        select(
            exists(select(locked.c.id)),
            select(counted.c.failed_attempts).scalar_subquery(),
            select(failed.c.failed_code_count).scalar_subquery(),
            select(failed.c.code_window_failures).scalar_subquery(),
            select(locked.c.due).scalar_subquery(),
        ).add_cte(*writes),
    )
    if not row[0]:
        raise Refused("locked")
    if row[1] is None:
        raise Refused("closed")
    return _counted(wrong, int(row[1]), int(row[2]), int(row[3]), due=bool(row[4]))


def _count_in_steps(connection: Connection, wrong: WrongCode) -> Counted:
    account = _first(connection, _take_account(wrong.account_id, wrong.rules, wrong.now))
    if account is None:
        raise Refused("locked")
    attempts = connection.execute(_count_attempt(wrong)).scalar()
    if attempts is None:
        raise Refused("closed")
    consecutive, in_window = _first(connection, _count_failure(wrong))
    counted = _counted(wrong, int(attempts), int(consecutive), int(in_window), due=account.due)
    outcome = wrong.locked_outcome if counted.locked else wrong.failed["outcome"]
    details = _details(
        wrong.failed["details"], {"attempts": counted.attempts, "consecutive": consecutive}
    )
    audit.add(connection, {**wrong.failed, "outcome": outcome, "details": details})
    if counted.locked:
        outbox.add(connection, wrong.lock_notice)
    elif counted.notified and wrong.wrong_codes_notice is not None:
        outbox.add(connection, wrong.wrong_codes_notice)
    return counted


def _counted(
    wrong: WrongCode, attempts: int, consecutive: int, in_window: int, *, due: bool
) -> Counted:
    """What the counts mean, as the statement applied it: the lock notice when this failure
    locked the factor, else the wrong codes' notice when one was due."""
    locked = wrong.rules.locks(consecutive, in_window)
    notified = locked or (wrong.wrong_codes_notice is not None and bool(due))
    return Counted(attempts, consecutive, locked, notified)

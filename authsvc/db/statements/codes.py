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

import functools
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    or_,
    select,
    true,
    update,
)

from authsvc.db import Account, Flow, FlowStatus
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, claims, devices, outbox, sessions, table
from authsvc.db.statements.returning import bound, insert_from, prefixed

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
    """The decision changed nothing. `why`: "locked" (the second factor is locked),
    "closed" (the flow takes no such answer any more: completed, failed, expired, or its
    challenge replaced) or "replayed" (an app's code whose time step was already accepted)."""

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
    # An authenticator app's code (its time step) or a passkey's assertion (its signature
    # counter), claimed in the same transaction (refused: Refused("replayed"), everything
    # undone). It proves that factor, not the phone.
    claim: claims.Claim | None = None


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


# Every value that changes between calls is a bound parameter: each statement is built once
# per set of rules (functools.cache) and its SQL compiled once (SQLAlchemy's cache, asyncpg's
# prepared statements), so that a call costs its execution, not its construction.
_NOW = bindparam("b_now", type_=UTCDateTime())
_LOCK_UNTIL = bindparam("b_lock_until", type_=UTCDateTime())
_WINDOW_START = bindparam("b_window_start", type_=UTCDateTime())
_NOTICE_SINCE = bindparam("b_notice_since", type_=UTCDateTime())
_FLOW_ID = bindparam("b_flow_id", type_=FLOWS.c.id.type)
_ACCOUNT_ID = bindparam("b_account_id", type_=ACCOUNTS.c.id.type)
_CHALLENGE_ID = bindparam("b_challenge_id", type_=FLOWS.c.challenge_id.type)
_LOCKED_OUTCOME = bindparam("b_locked_outcome", type_=String())


def _params(rules: CodeRules, now: datetime, **ids: uuid.UUID) -> dict[str, Any]:
    return {
        "b_now": now,
        "b_lock_until": now + timedelta(seconds=rules.lock_s),
        "b_window_start": now - timedelta(seconds=rules.window_s),
        "b_notice_since": now - timedelta(seconds=rules.notice_interval_s),
        **prefixed(ids, "b_"),
    }


def _unlocked(rules: CodeRules) -> list[Any]:
    return [
        ACCOUNTS.c.failed_code_count < rules.hard_bound,
        ACCOUNTS.c.code_window_failures < rules.hard_bound,
        or_(ACCOUNTS.c.code_locked_until.is_(None), ACCOUNTS.c.code_locked_until <= _NOW),
    ]


def _locks(rules: CodeRules, consecutive: Any, in_window: Any) -> Any:
    return or_(
        consecutive % rules.lock_threshold == 0,
        consecutive >= rules.hard_bound,
        in_window >= rules.hard_bound,
    )


def _notice_due() -> Any:
    notified_at = ACCOUNTS.c.code_failures_notified_at
    return or_(notified_at.is_(None), notified_at <= _NOTICE_SINCE)


@functools.cache
def _take_account(rules: CodeRules) -> Any:
    """The account row, only while its second factor is unlocked (locked FOR UPDATE on
    PostgreSQL; SQLAlchemy leaves the clause out on SQLite), and whether a notice is due."""
    return (
        select(ACCOUNTS.c.id, _notice_due().label("due"))
        .where(ACCOUNTS.c.id == _ACCOUNT_ID, *_unlocked(rules))
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE: db/locks.py
    )


def _first(connection: Connection, statement: Any, params: dict[str, Any]) -> Any:
    return connection.execute(statement, params).first()


# ---- a right code on a login flow -----------------------------------------------------------


def _win(rules: CodeRules, *gate: Any) -> Any:
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == _FLOW_ID,
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.challenge_id == _CHALLENGE_ID,
            FLOWS.c.failed_attempts < rules.max_attempts,
            FLOWS.c.code_expires_at > _NOW,
            FLOWS.c.expires_at > _NOW,
            *gate,
        )
        # The digest goes with the success: a used code leaves nothing to test guesses on.
        .values(status=FlowStatus.COMPLETED.value, completed_at=_NOW, code_digest=None)
        .returning(FLOWS.c.id)
    )


def _reset(rules: CodeRules, phone: bool, *gate: Any) -> Any:
    """A full success: every consecutive counter starts again (the window's count stays: the
    hard bound), and the phone that received the code is verified (`phone`: the code came by
    the phone, not from an authenticator app)."""
    verified = {"phone_verified_at": _NOW} if phone else {}
    return (
        update(ACCOUNTS)
        .where(ACCOUNTS.c.id == _ACCOUNT_ID, *_unlocked(rules), *gate)
        .values(
            failed_code_count=0,
            code_locked_until=None,
            failed_password_count=0,
            password_lock_count=0,
            password_locked_until=None,
            **verified,
        )
        .returning(ACCOUNTS.c.id)
    )


_win_alone = functools.cache(_win)
_reset_alone = functools.cache(_reset)


@functools.cache
def _completion(
    rules: CodeRules,
    phone: bool,
    session: tuple[str, ...],
    device: tuple[str, ...],
    verified: tuple[str, ...],
) -> Any:
    """PostgreSQL: the whole completion, one statement (rows' columns: "s_", "d_", "a_")."""
    locked = _take_account(rules).cte("locked")
    won = _win(rules, exists(select(locked.c.id))).cte("won")
    reset = _reset(rules, phone, exists(select(won.c.id))).cte("reset")
    return select(exists(select(locked.c.id)), exists(select(won.c.id))).add_cte(
        insert_from(sessions.SESSIONS, bound(sessions.SESSIONS, session, "s_"), reset).cte(
            "session"
        ),
        insert_from(devices.DEVICES, bound(devices.DEVICES, device, "d_"), reset).cte("device"),
        insert_from(audit.AUDIT, bound(audit.AUDIT, verified, "a_"), reset).cte("verified"),
    )


def complete_login(connection: Connection, right: RightCode) -> None:
    """Complete the login flow with its session, trusted device and audit row, or raise
    Refused having changed nothing. With an app's code (`right.claim`) it must run in a
    transaction (`Database.write`): the step's claim comes last (rows are always locked
    account, flow, factor) and its refusal rolls the completion back."""
    _complete_login(connection, right)
    if right.claim is not None and not claims.claim(connection, right.claim):
        raise Refused("replayed")


def _complete_login(connection: Connection, right: RightCode) -> None:
    rules = right.rules
    phone = right.claim is None
    params = _params(
        rules,
        right.now,
        flow_id=right.flow_id,
        account_id=right.account_id,
        challenge_id=right.challenge_id,
    )
    if connection.dialect.name == "postgresql":
        statement = _completion(
            rules, phone, tuple(right.session), tuple(right.device), tuple(right.verified)
        )
        outcome = _first(
            connection,
            statement,
            {
                **params,
                **prefixed(right.session, "s_"),
                **prefixed(right.device, "d_"),
                **prefixed(right.verified, "a_"),
            },
        )
        if not outcome[0]:
            raise Refused("locked")
        if not outcome[1]:
            raise Refused("closed")
        return
    if _first(connection, _take_account(rules), params) is None:
        raise Refused("locked")
    if _first(connection, _win_alone(rules), params) is None:
        raise Refused("closed")
    connection.execute(_reset_alone(rules, phone), params)
    sessions.add(connection, right.session)
    devices.add(connection, right.device)
    audit.add(connection, right.verified)


# ---- a wrong code ---------------------------------------------------------------------------


def _count_attempt(rules: CodeRules, *gate: Any) -> Any:
    """One attempt more, only while fewer than the maximum were counted; the same statement
    fails the flow at the maximum."""
    attempts = FLOWS.c.failed_attempts + 1
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == _FLOW_ID,
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.failed_attempts < rules.max_attempts,
            *gate,
        )
        .values(
            failed_attempts=attempts,
            status=case(
                (attempts >= rules.max_attempts, FlowStatus.FAILED.value),
                else_=FLOWS.c.status,
            ),
        )
        .returning(FLOWS.c.failed_attempts)
    )


def _count_failure(rules: CodeRules, notices: bool, *gate: Any) -> Any:
    """ONE UPDATE of the account: the consecutive count (the lock at each threshold), the
    fixed window's count (a new window starts at the first failure after the last one ended)
    and, when `notices` of wrong codes are sent, one is due and this failure does not lock,
    its timestamp."""
    c = ACCOUNTS.c
    failures = c.failed_code_count + 1
    window_open = and_(
        c.code_window_started_at.is_not(None), c.code_window_started_at > _WINDOW_START
    )
    in_window = case((window_open, c.code_window_failures + 1), else_=1)
    values: dict[str, Any] = {
        "failed_code_count": failures,
        "code_locked_until": case(
            (failures % rules.lock_threshold == 0, _LOCK_UNTIL), else_=c.code_locked_until
        ),
        "code_window_failures": in_window,
        "code_window_started_at": case((window_open, c.code_window_started_at), else_=_NOW),
    }
    if notices:
        notify = and_(~_locks(rules, failures, in_window), _notice_due())
        values["code_failures_notified_at"] = case(
            (notify, _NOW), else_=c.code_failures_notified_at
        )
    return (
        update(ACCOUNTS)
        .where(c.id == _ACCOUNT_ID, *_unlocked(rules), *gate)
        .values(**values)
        .returning(c.failed_code_count, c.code_window_failures)
    )


_count_attempt_alone = functools.cache(_count_attempt)
_count_failure_alone = functools.cache(_count_failure)


def _details_sql(parts: int, counts: dict[str, Any]) -> Any:
    """The audit details' JSON with the counts in it: the flow's text around them (bound
    "details_0", "details_1"...) joined to the counts as text."""
    names = list(counts)
    expression: Any = bindparam("details_0", type_=String())
    for index in range(1, parts):
        name = names[index - 1]
        expression = (
            expression
            + cast(counts[name], String())
            + bindparam(f"details_{index}", type_=String())
        )
    return expression


def _details_parts(details: str) -> tuple[list[str], list[str]]:
    """The details' text around the counts, and the counts' names in their order."""
    split = _COUNTED.split(details)
    return split[0::2], split[1::2]


def _details(details: str, counts: dict[str, int]) -> str:
    return _COUNTED.sub(lambda found: str(counts[found.group(1)]), details)


@functools.cache
def _failure(
    rules: CodeRules,
    failed: tuple[str, ...],
    names: tuple[str, ...],
    notices: tuple[str, ...],
    wrong_codes: tuple[str, ...] | None,
) -> Any:
    """PostgreSQL: the whole failure, one statement (rows' columns: "a_" the audit row, "l_"
    the lock notice, "w_" the wrong codes' notice)."""
    locked = _take_account(rules).cte("locked")
    counted = _count_attempt(rules, exists(select(locked.c.id))).cte("counted")
    failed_cte = _count_failure(
        rules, wrong_codes is not None, exists(select(counted.c.failed_attempts))
    ).cte("failed")
    locks = _locks(rules, failed_cte.c.failed_code_count, failed_cte.c.code_window_failures)
    columns = {"attempts": counted.c.failed_attempts, "consecutive": failed_cte.c.failed_code_count}
    recorded = {
        **bound(audit.AUDIT, failed, "a_"),
        "outcome": case((locks, _LOCKED_OUTCOME), else_=bindparam("a_outcome", type_=String())),
        "details": _details_sql(len(names) + 1, {name: columns[name] for name in names}),
    }
    writes = [
        insert_from(audit.AUDIT, recorded, failed_cte.join(counted, true())).cte("recorded"),
        insert_from(outbox.OUTBOX, bound(outbox.OUTBOX, notices, "l_"), failed_cte, locks).cte(
            "lock_notice"
        ),
    ]
    if wrong_codes is not None:
        notice = insert_from(
            outbox.OUTBOX,
            bound(outbox.OUTBOX, wrong_codes, "w_"),
            failed_cte.join(locked, true()),
            and_(~locks, locked.c.due),
        )
        writes.append(notice.cte("wrong_codes_notice"))
    return select(
        exists(select(locked.c.id)),
        select(counted.c.failed_attempts).scalar_subquery(),
        select(failed_cte.c.failed_code_count).scalar_subquery(),
        select(failed_cte.c.code_window_failures).scalar_subquery(),
        select(locked.c.due).scalar_subquery(),
    ).add_cte(*writes)


def count_wrong_code(connection: Connection, wrong: WrongCode) -> Counted:
    """Count a wrong code on the flow and on the account, with its audit row and the notice
    it calls for, or raise Refused having counted nothing."""
    params = _params(wrong.rules, wrong.now, flow_id=wrong.flow_id, account_id=wrong.account_id)
    if connection.dialect.name == "postgresql":
        return _count_in_one_statement(connection, wrong, params)
    return _count_in_steps(connection, wrong, params)


def _count_in_one_statement(
    connection: Connection, wrong: WrongCode, params: dict[str, Any]
) -> Counted:
    texts, names = _details_parts(wrong.failed["details"])
    audit_row = {k: v for k, v in wrong.failed.items() if k not in ("outcome", "details")}
    notice = wrong.wrong_codes_notice
    statement = _failure(
        wrong.rules,
        tuple(audit_row),
        tuple(names),
        tuple(wrong.lock_notice),
        None if notice is None else tuple(notice),
    )
    row = _first(
        connection,
        statement,
        {
            **params,
            **prefixed(audit_row, "a_"),
            "a_outcome": wrong.failed["outcome"],
            "b_locked_outcome": wrong.locked_outcome,
            **{f"details_{index}": text for index, text in enumerate(texts)},
            **prefixed(wrong.lock_notice, "l_"),
            **(prefixed(notice, "w_") if notice is not None else {}),
        },
    )
    if not row[0]:
        raise Refused("locked")
    if row[1] is None:
        raise Refused("closed")
    return _counted(wrong, int(row[1]), int(row[2]), int(row[3]), due=bool(row[4]))


def _count_in_steps(connection: Connection, wrong: WrongCode, params: dict[str, Any]) -> Counted:
    rules = wrong.rules
    account = _first(connection, _take_account(rules), params)
    if account is None:
        raise Refused("locked")
    attempts = connection.execute(_count_attempt_alone(rules), params).scalar()
    if attempts is None:
        raise Refused("closed")
    failure = _count_failure_alone(rules, wrong.wrong_codes_notice is not None)
    consecutive, in_window = _first(connection, failure, params)
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

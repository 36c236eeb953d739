"""A login's second decision, once its first factor passed (a right password, a verified
assertion): the password's reservation released re-reading the lock, the device's trust read,
and then either a session (trusted device: the password's escalation restarts) or a pending
flow, each with its audit row. One statement on PostgreSQL, one hop on SQLite.

Which of them applies is decided by the rows as the statement finds them (the lock, the
trust); what the flow allows (whether a trust may stand, whether a flow may open) is the
caller's decision, passed in. Statements are built once per combination of those choices."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, func, literal, or_, select, true, update

from authsvc.db import Account, Flow, Session
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, devices_trust, passwords, returning, sessions, table

ACCOUNTS = table(Account)
SESSIONS = table(Session)
FLOWS = table(Flow)

# Named parameters: l_account, l_now, l_code_bound, the device's (devices_trust: t_*), the
# session's columns (s_*), the flow's (f_*), the trusted login's audit row (audit_*) and the
# flow's (flow_audit_*).
_NOW = bindparam("l_now", type_=UTCDateTime())
_CODE_BOUND = bindparam("l_code_bound", type_=ACCOUNTS.c.failed_code_count.type)
_ACCOUNT = ACCOUNTS.c.id == bindparam("l_account", type_=ACCOUNTS.c.id.type)
_EPOCH = bindparam("l_epoch", type_=ACCOUNTS.c.security_epoch.type)
# The credentials the first factor was checked against are still the account's: no password
# or phone change (which end the sessions and device trust) committed since they were read.
# On PostgreSQL the verdict reads the row under its lock (the UPDATE, or FOR SHARE for a
# federated login), so a change committing meanwhile is seen, and one that comes after finds
# the session to revoke.
_CURRENT = (ACCOUNTS.c.security_epoch == _EPOCH).label("credentials_current")

# A trusted device stands for the code, so not while the code factor is locked: the verdict
# re-reads the code's counters in its own statement (on PostgreSQL under the row lock its
# UPDATE takes) rather than trusting a read made before the argon2 check, during which the
# wrong codes of a concurrent flow may have locked it. The rule of lockout.check_code_lock.
# No IS NULL here: SQLite 3.40 evaluates `column IS NULL` wrongly in a RETURNING clause
# (false for a null column); COALESCE of the comparison says the same on both databases.
_CODE_UNLOCKED = and_(
    ACCOUNTS.c.failed_code_count < _CODE_BOUND,
    ACCOUNTS.c.code_window_failures < _CODE_BOUND,
    func.coalesce(ACCOUNTS.c.code_locked_until <= _NOW, true()),
)
# What the verdict returns of the code factor: whether it is unlocked, and its counters (a
# refusal's retry delay is computed from them).
_CODE = (
    _CODE_UNLOCKED.label("code_unlocked"),
    ACCOUNTS.c.failed_code_count,
    ACCOUNTS.c.code_window_failures,
    ACCOUNTS.c.code_locked_until,
)


_SESSION = returning.bound(SESSIONS, SESSIONS.c.keys(), "s_")
_FLOW = returning.bound(FLOWS, FLOWS.c.keys(), "f_")
_FLOW_AUDIT = returning.bound(audit.AUDIT, audit.COLUMNS, "flow_audit_")


_ADD_FLOW = FLOWS.insert()


@dataclass(frozen=True)
class FirstFactorPassed:
    """What the verdict may write. `session` is written (with `trusted_logged`) only if the
    device is trusted, `trust_may_stand` and the login is not locked; its `last_code_time` is
    the device's last verification. `flow` (with `flow_logged`), if any, only if the device is
    not trusted and the login is not locked."""

    account_id: uuid.UUID
    now: datetime
    code_failure_hard_bound: int
    # accounts.security_epoch as read before the first factor was checked.
    security_epoch: int
    # The password's check was reserved: release it (this reads the lock) and, on a trusted
    # device, restart the password's escalation. False for a federated first factor.
    settles_password: bool
    device_digest: bytes | None
    trust_may_stand: bool
    session: dict[str, Any]
    trusted_logged: dict[str, Any]
    flow: dict[str, Any] | None
    flow_logged: dict[str, Any] | None

    def parameters(self) -> dict[str, Any]:
        values = {
            "l_account": self.account_id,
            "l_now": self.now,
            "l_epoch": self.security_epoch,
            "l_code_bound": self.code_failure_hard_bound,
            **devices_trust.parameters(self.account_id, self.device_digest, self.now),
            **{f"s_{name}": self.session.get(name) for name in _SESSION},
            **audit.parameters(self.trusted_logged),
            **{f"f_{name}": (self.flow or {}).get(name) for name in _FLOW},
            **audit.parameters(self.flow_logged or {}, "flow_audit_"),
            "pw_now": self.now,
        }
        return values


@dataclass(frozen=True)
class CodeFactor:
    """The code factor as the verdict read it (its counters make a lockout.CodeCounters)."""

    unlocked: bool
    failed_code_count: int
    code_window_failures: int
    code_locked_until: datetime | None


@dataclass(frozen=True)
class Verdict:
    found: bool  # False: the account vanished meanwhile
    password_locked_until: datetime | None
    trusted_at: datetime | None
    # False: the password or phone changed since the first factor's credentials were read;
    # nothing was written.
    current: bool = True
    # A trusted device got its session only if this was unlocked (None: account gone).
    code: CodeFactor | None = None


def _source(settles_password: bool, trust_may_stand: bool) -> Any:
    """The statement whose one row the rest hangs on: (the lock, the trust, whether the
    credentials are current, the code factor); no row when the account is gone."""
    trusted_at = devices_trust.VERIFIED_AT
    if not settles_password:
        no_lock = literal(None, type_=UTCDateTime()).label("password_locked_until")
        return (
            select(no_lock, trusted_at.label("trusted_at"), _CURRENT, *_CODE)
            .where(_ACCOUNT)
            # PostgreSQL: wait for a change holding the row, then read it as committed.
            .with_for_update(read=True, of=ACCOUNTS)
        )
    values: dict[str, Any] = {"password_checks_pending": passwords.released(ACCOUNTS)}
    if trust_may_stand:
        # ONE update of the row: PostgreSQL must not see it changed twice in one statement.
        # A trusted login refused because the code locked meanwhile is no success: no reset.
        reset = and_(
            passwords.unlocked(ACCOUNTS),
            trusted_at.is_not(None),
            _CODE_UNLOCKED,
            ACCOUNTS.c.security_epoch == _EPOCH,
        )
        for name in ("failed_password_count", "password_lock_count"):
            values[name] = case((reset, 0), else_=ACCOUNTS.c[name])
    return (
        update(ACCOUNTS)
        .where(_ACCOUNT)
        .values(values)
        .returning(
            ACCOUNTS.c.password_locked_until, trusted_at.label("trusted_at"), _CURRENT, *_CODE
        )
    )


@cache
def _statements(settles_password: bool, trust_may_stand: bool, with_flow: bool) -> tuple[Any, Any]:
    """(SQLite's first statement, PostgreSQL's one statement) for these choices."""
    source = _source(settles_password, trust_may_stand)
    verdict = source.cte("verdict")
    until = verdict.c.password_locked_until
    unlocked = or_(until.is_(None), until <= _NOW)
    writes = []
    if trust_may_stand:
        granted = (
            select(verdict)
            .where(
                unlocked,
                verdict.c.credentials_current,
                verdict.c.trusted_at.is_not(None),
                verdict.c.code_unlocked,
            )
            .subquery()
        )
        writes += [
            returning.insert_from(
                SESSIONS, {**_SESSION, "last_code_time": granted.c.trusted_at}, granted
            ).cte("session"),
            audit.insert_from(audit.PARAMETERS, granted).cte("trusted_logged"),
        ]
    if with_flow:
        opened = (
            select(verdict)
            .where(unlocked, verdict.c.credentials_current, verdict.c.trusted_at.is_(None))
            .subquery()
        )
        writes += [
            returning.insert_from(FLOWS, _FLOW, opened).cte("flow"),
            audit.insert_from(_FLOW_AUDIT, opened).cte("flow_logged"),
        ]
    returned = [
        verdict.c.password_locked_until,
        verdict.c.trusted_at,
        verdict.c.credentials_current,
    ]
    in_one = select(*returned, *(verdict.c[column.key] for column in _CODE)).add_cte(*writes)
    return source, in_one


def _verdict(row: Any) -> Verdict:
    locked_until, trusted_at, current, code_unlocked, failed, in_window, code_until = row
    code = CodeFactor(bool(code_unlocked), failed, in_window, code_until)
    return Verdict(True, locked_until, trusted_at, bool(current), code)


def first_factor_passed(connection: Connection, passed: FirstFactorPassed) -> Verdict:
    with_flow = passed.flow is not None and passed.flow_logged is not None
    source, in_one = _statements(passed.settles_password, passed.trust_may_stand, with_flow)
    parameters = passed.parameters()
    if connection.dialect.name == "postgresql":
        row = connection.execute(in_one, parameters).first()
        return Verdict(False, None, None) if row is None else _verdict(row)
    row = connection.execute(source, parameters).first()
    if row is None:
        return Verdict(False, None, None)
    verdict = _verdict(row)
    locked_until, trusted_at = verdict.password_locked_until, verdict.trusted_at
    if (locked_until is not None and locked_until > passed.now) or not verdict.current:
        return verdict
    if trusted_at is not None:
        assert verdict.code is not None
        if passed.trust_may_stand and verdict.code.unlocked:
            sessions.add(connection, {**passed.session, "last_code_time": trusted_at})
            audit.add(connection, passed.trusted_logged)
    elif passed.flow is not None and passed.flow_logged is not None:
        connection.execute(_ADD_FLOW, passed.flow)
        audit.add(connection, passed.flow_logged)
    return verdict

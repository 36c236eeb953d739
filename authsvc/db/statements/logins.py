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

from sqlalchemy import Connection, and_, bindparam, case, literal, or_, select, update

from authsvc.db import Account, Flow, Session
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, devices_trust, passwords, returning, sessions, table

ACCOUNTS = table(Account)
SESSIONS = table(Session)
FLOWS = table(Flow)

# Named parameters: l_account, l_now, the device's (devices_trust: t_*), the session's
# columns (s_*), the flow's (f_*), the trusted login's audit row (audit_*) and the flow's
# (flow_audit_*).
_NOW = bindparam("l_now", type_=UTCDateTime())


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
            **devices_trust.parameters(self.account_id, self.device_digest, self.now),
            **{f"s_{name}": self.session.get(name) for name in _SESSION},
            **audit.parameters(self.trusted_logged),
            **{f"f_{name}": (self.flow or {}).get(name) for name in _FLOW},
            **audit.parameters(self.flow_logged or {}, "flow_audit_"),
            "pw_now": self.now,
        }
        return values


@dataclass(frozen=True)
class Verdict:
    found: bool  # False: the account vanished meanwhile
    password_locked_until: datetime | None
    trusted_at: datetime | None


def _source(settles_password: bool, trust_may_stand: bool) -> Any:
    """The statement whose one row the rest hangs on: (the lock, the trust)."""
    trusted_at = devices_trust.VERIFIED_AT
    if not settles_password:
        no_lock = literal(None, type_=UTCDateTime()).label("password_locked_until")
        return select(no_lock, trusted_at.label("trusted_at"))
    values: dict[str, Any] = {"password_checks_pending": passwords.released(ACCOUNTS)}
    if trust_may_stand:
        # ONE update of the row: PostgreSQL must not see it changed twice in one statement.
        reset = and_(passwords.unlocked(ACCOUNTS), trusted_at.is_not(None))
        for name in ("failed_password_count", "password_lock_count"):
            values[name] = case((reset, 0), else_=ACCOUNTS.c[name])
    return (
        update(ACCOUNTS)
        .where(ACCOUNTS.c.id == bindparam("l_account", type_=ACCOUNTS.c.id.type))
        .values(values)
        .returning(ACCOUNTS.c.password_locked_until, trusted_at.label("trusted_at"))
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
        granted = select(verdict).where(unlocked, verdict.c.trusted_at.is_not(None)).subquery()
        writes += [
            returning.insert_from(
                SESSIONS, {**_SESSION, "last_code_time": granted.c.trusted_at}, granted
            ).cte("session"),
            audit.insert_from(audit.PARAMETERS, granted).cte("trusted_logged"),
        ]
    if with_flow:
        opened = select(verdict).where(unlocked, verdict.c.trusted_at.is_(None)).subquery()
        writes += [
            returning.insert_from(FLOWS, _FLOW, opened).cte("flow"),
            audit.insert_from(_FLOW_AUDIT, opened).cte("flow_logged"),
        ]
    in_one = select(verdict.c.password_locked_until, verdict.c.trusted_at).add_cte(*writes)
    return source, in_one


def first_factor_passed(connection: Connection, passed: FirstFactorPassed) -> Verdict:
    with_flow = passed.flow is not None and passed.flow_logged is not None
    source, in_one = _statements(passed.settles_password, passed.trust_may_stand, with_flow)
    parameters = passed.parameters()
    if connection.dialect.name == "postgresql":
        row = connection.execute(in_one, parameters).first()
        return Verdict(row is not None, *(row or (None, None)))
    row = connection.execute(source, parameters).first()
    if row is None:
        return Verdict(False, None, None)
    locked_until, trusted_at = row
    if locked_until is not None and locked_until > passed.now:
        return Verdict(True, locked_until, trusted_at)
    if trusted_at is not None:
        if passed.trust_may_stand:
            sessions.add(connection, {**passed.session, "last_code_time": trusted_at})
            audit.add(connection, passed.trusted_logged)
    elif passed.flow is not None and passed.flow_logged is not None:
        connection.execute(_ADD_FLOW, passed.flow)
        audit.add(connection, passed.flow_logged)
    return Verdict(True, locked_until, trusted_at)

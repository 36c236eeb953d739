"""A pending flow and its account, as Challenge and Verify read them (one indexed lookup that
selects only the columns their decisions need), and the send of a new code."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, bindparam, exists, or_, select, update

from authsvc.db import Account, Flow, FlowPurpose, FlowStatus
from authsvc.db.base import UTCDateTime
from authsvc.db.statements import audit, factors, outbox, table
from authsvc.db.statements.outbox import OUTBOX
from authsvc.db.statements.returning import bound, insert_from, prefixed

FLOWS = table(Flow)
ACCOUNTS = table(Account)


@dataclass(frozen=True)
class FlowRow:
    """A flow's columns (the names of `authsvc.db.Flow`)."""

    id: uuid.UUID
    purpose: FlowPurpose
    account_id: uuid.UUID
    status: FlowStatus
    expires_at: datetime
    challenge_id: uuid.UUID | None
    channel: str | None
    code_digest: bytes | None
    code_expires_at: datetime | None
    idempotency_key: str | None
    send_count: int
    last_sent_at: datetime | None
    failed_attempts: int
    contact_kind: str | None
    contact_sealed: bytes | None
    contact_masked: str | None


@dataclass(frozen=True)
class AccountRow:
    """The flow's account: where its codes go, its code counters, who hears of them (the
    names of `authsvc.db.Account`)."""

    id: uuid.UUID
    organization_id: uuid.UUID
    email: str
    display_name: str
    phone_sealed: bytes | None
    phone_masked: str | None
    phone_kind: str | None
    failed_code_count: int
    code_locked_until: datetime | None
    code_window_failures: int
    code_failures_notified_at: datetime | None
    # Whether the account has a confirmed authenticator app (CHANNEL_TOTP), read in the same
    # lookup: not a column of accounts.
    has_totp: bool = False


_FLOW_COLUMNS = [FLOWS.c[name] for name in FlowRow.__dataclass_fields__]
_ACCOUNT_COLUMNS = [
    *(ACCOUNTS.c[name] for name in AccountRow.__dataclass_fields__ if name != "has_totp"),
    factors.has_confirmed_totp(ACCOUNTS.c.id).label("has_totp"),
]
_FIND = select(*_FLOW_COLUMNS, *_ACCOUNT_COLUMNS).join_from(
    FLOWS, ACCOUNTS, FLOWS.c.account_id == ACCOUNTS.c.id
)


_FIND_BY_ID = _FIND.where(FLOWS.c.id == bindparam("f_id"))


def find(connection: Connection, flow_id: uuid.UUID) -> tuple[FlowRow, AccountRow] | None:
    row = connection.execute(_FIND_BY_ID, {"f_id": flow_id}).first()
    if row is None:
        return None
    values: dict[str, Any] = dict(zip(FlowRow.__dataclass_fields__, row, strict=False))
    values["purpose"] = FlowPurpose(values["purpose"])
    values["status"] = FlowStatus(values["status"])
    columns: dict[str, Any] = dict(
        zip(AccountRow.__dataclass_fields__, row[len(_FLOW_COLUMNS) :], strict=True)
    )
    columns["has_totp"] = bool(columns["has_totp"])  # SQLite answers 0 or 1
    return FlowRow(**values), AccountRow(**columns)


@dataclass(frozen=True)
class CodeSend:
    """A new challenge for a flow, and the rows that go with it if the send is decided."""

    flow_id: uuid.UUID
    now: datetime
    max_sends: int
    # Either no send since `cooldown_start`, or (a retry after a failed delivery) the last
    # send is still the one at `retrying`: nobody sent since the flow was read.
    cooldown_start: datetime
    retrying: datetime | None
    challenge: dict[str, Any]  # the flow's new columns: challenge_id, code_digest...
    message: dict[str, Any]  # the outbox row of the code
    sent: dict[str, Any]  # the audit row


# The values that change between sends are bound parameters: each statement is built once.
_NOW = bindparam("b_now", type_=UTCDateTime())


@functools.cache
def _send(retrying: bool, challenge: tuple[str, ...]) -> Any:
    last_sent_at = FLOWS.c.last_sent_at
    not_sent_meanwhile = (
        last_sent_at == bindparam("b_retrying", type_=UTCDateTime())
        if retrying
        else or_(
            last_sent_at.is_(None),
            last_sent_at <= bindparam("b_cooldown_start", type_=UTCDateTime()),
        )
    )
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == bindparam("b_flow_id", type_=FLOWS.c.id.type),
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.expires_at > _NOW,
            FLOWS.c.send_count < bindparam("b_max_sends", type_=Integer()),
            not_sent_meanwhile,
        )
        .values(
            **bound(FLOWS, challenge, "f_"), send_count=FLOWS.c.send_count + 1, last_sent_at=_NOW
        )
        .returning(FLOWS.c.id)
    )


@functools.cache
def _send_with_rows(
    retrying: bool, challenge: tuple[str, ...], message: tuple[str, ...], sent: tuple[str, ...]
) -> Any:
    """PostgreSQL: the send, its message ("m_") and its audit row ("a_"), one statement."""
    sent_cte = _send(retrying, challenge).cte("sent")
    return select(exists(select(sent_cte.c.id))).add_cte(
        insert_from(OUTBOX, bound(OUTBOX, message, "m_"), sent_cte).cte("queued"),
        insert_from(audit.AUDIT, bound(audit.AUDIT, sent, "a_"), sent_cte).cte("recorded"),
    )


def send_code(connection: Connection, send: CodeSend) -> bool:
    """Record the new challenge, its queued message and its audit row, only WHERE the flow
    may still send (pending, unexpired, sends left, cooldown passed): a code is never queued
    without its challenge, nor a challenge recorded without its message. One statement on
    PostgreSQL. False: the flow changed since it was read, nothing written."""
    retrying = send.retrying is not None
    params = {
        "b_flow_id": send.flow_id,
        "b_now": send.now,
        "b_max_sends": send.max_sends,
        "b_retrying" if retrying else "b_cooldown_start": send.retrying or send.cooldown_start,
        **prefixed(send.challenge, "f_"),
    }
    if connection.dialect.name == "postgresql":
        statement = _send_with_rows(
            retrying, tuple(send.challenge), tuple(send.message), tuple(send.sent)
        )
        rows = {**prefixed(send.message, "m_"), **prefixed(send.sent, "a_")}
        return bool(connection.execute(statement, {**params, **rows}).scalar())
    if connection.execute(_send(retrying, tuple(send.challenge)), params).first() is None:
        return False
    outbox.add(connection, send.message)
    audit.add(connection, send.sent)
    return True


@dataclass(frozen=True)
class TotpWindow:
    """A CHANNEL_TOTP challenge: nothing is sent, the attempt window opens."""

    flow_id: uuid.UUID
    now: datetime
    challenge: dict[str, Any]  # the flow's new columns: challenge_id, channel, code_expires_at
    started: dict[str, Any]  # the audit row


@functools.cache
def _open_window(challenge: tuple[str, ...]) -> Any:
    # No send is counted and no cooldown applies: nothing costs anything, and the app's code
    # changes by itself. The flow's attempts (failed_attempts) are not reset: a new window
    # gives no new guesses.
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == bindparam("b_flow_id", type_=FLOWS.c.id.type),
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.expires_at > _NOW,
        )
        .values(**bound(FLOWS, challenge, "f_"))
        .returning(FLOWS.c.id)
    )


def open_totp_window(connection: Connection, window: TotpWindow) -> bool:
    """Make a CHANNEL_TOTP challenge the flow's current one, with its audit row, only WHERE
    the flow is still pending and unexpired. False: nothing written."""
    params = {"b_flow_id": window.flow_id, "b_now": window.now, **prefixed(window.challenge, "f_")}
    if connection.execute(_open_window(tuple(window.challenge)), params).first() is None:
        return False
    audit.add(connection, window.started)
    return True

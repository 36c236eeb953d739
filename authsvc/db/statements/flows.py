"""A pending flow and its account, as Challenge and Verify read them (one indexed lookup that
selects only the columns their decisions need), and the send of a new code."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Integer, and_, bindparam, case, exists, null, or_, select, update

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
    # Whether the account has a confirmed authenticator app (CHANNEL_TOTP) and a passkey
    # (CHANNEL_PASSKEY), read in the same lookup: not columns of accounts.
    has_totp: bool = False
    has_passkey: bool = False


_FLOW_COLUMNS = [FLOWS.c[name] for name in FlowRow.__dataclass_fields__]
_OTHER = ("has_totp", "has_passkey")  # the last two fields, in this order
_ACCOUNT_COLUMNS = [
    *(ACCOUNTS.c[name] for name in AccountRow.__dataclass_fields__ if name not in _OTHER),
    *factors.other_factors(ACCOUNTS.c.id),
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
    for name in _OTHER:
        columns[name] = bool(columns[name])  # SQLite answers 0 or 1
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
class FactorWindow:
    """A challenge answered by a factor of the account's own (an authenticator app's code, a
    passkey's assertion): nothing is sent, the attempt window opens."""

    flow_id: uuid.UUID
    now: datetime
    channel: str  # "totp" or "passkey"
    challenge_id: uuid.UUID  # the new challenge's, unless a sent code is still valid
    code_expires_at: datetime  # likewise
    started: dict[str, Any]  # the audit row


@dataclass(frozen=True)
class Window:
    """The window as written: the challenge it answers and until when."""

    challenge_id: uuid.UUID
    code_expires_at: datetime


# A code sent (SMS or voice) that still works. Switching to the app or a passkey keeps it:
# the holder who asked for an SMS, then opened the app, may still type the SMS's code, which
# would otherwise count as a wrong one. The window keeps that code's challenge id (its digest
# is bound to it) and its expiry, so the code lives no longer than it was sent for.
_SENT_CODE_LIVE = and_(FLOWS.c.code_digest.is_not(None), FLOWS.c.code_expires_at > _NOW)
# No send is counted and no cooldown applies: nothing costs anything, and the app's code
# changes by itself. The flow's attempts (failed_attempts) are not reset: a new window gives
# no new guesses. Every SET expression reads the row as it was (SQL's rule): the test of a
# live code is the same for the three columns.
_OPEN_WINDOW = (
    update(FLOWS)
    .where(
        FLOWS.c.id == bindparam("b_flow_id", type_=FLOWS.c.id.type),
        FLOWS.c.status == FlowStatus.PENDING.value,
        FLOWS.c.expires_at > _NOW,
    )
    .values(
        channel=bindparam("w_channel", type_=FLOWS.c.channel.type),
        challenge_id=case(
            (_SENT_CODE_LIVE, FLOWS.c.challenge_id),
            else_=bindparam("w_challenge_id", type_=FLOWS.c.challenge_id.type),
        ),
        code_digest=case((_SENT_CODE_LIVE, FLOWS.c.code_digest), else_=null()),
        code_expires_at=case(
            (_SENT_CODE_LIVE, FLOWS.c.code_expires_at),
            else_=bindparam("w_code_expires_at", type_=FLOWS.c.code_expires_at.type),
        ),
        # A retried Challenge with the sent code's key would name a channel no longer current.
        idempotency_key=null(),
    )
    .returning(FLOWS.c.challenge_id, FLOWS.c.code_expires_at)
)


def open_factor_window(connection: Connection, window: FactorWindow) -> Window | None:
    """Make the factor's challenge the flow's current one, with its audit row, only WHERE the
    flow is still pending and unexpired. None: nothing written."""
    row = connection.execute(
        _OPEN_WINDOW,
        {
            "b_flow_id": window.flow_id,
            "b_now": window.now,
            "w_channel": window.channel,
            "w_challenge_id": window.challenge_id,
            "w_code_expires_at": window.code_expires_at,
        },
    ).first()
    if row is None:
        return None
    audit.add(connection, window.started)
    return Window(challenge_id=row[0], code_expires_at=row[1])

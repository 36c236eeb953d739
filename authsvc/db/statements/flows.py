"""A pending flow and its account, as Challenge and Verify read them (one indexed lookup that
selects only the columns their decisions need), and the send of a new code."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, exists, or_, select, update

from authsvc.db import Account, Flow, FlowPurpose, FlowStatus
from authsvc.db.statements import audit, outbox, table
from authsvc.db.statements.outbox import OUTBOX
from authsvc.db.statements.returning import insert_from

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


_FLOW_COLUMNS = [FLOWS.c[name] for name in FlowRow.__dataclass_fields__]
_ACCOUNT_COLUMNS = [ACCOUNTS.c[name] for name in AccountRow.__dataclass_fields__]
_FIND = select(*_FLOW_COLUMNS, *_ACCOUNT_COLUMNS).join_from(
    FLOWS, ACCOUNTS, FLOWS.c.account_id == ACCOUNTS.c.id
)


def find(connection: Connection, flow_id: uuid.UUID) -> tuple[FlowRow, AccountRow] | None:
    row = connection.execute(_FIND.where(FLOWS.c.id == flow_id)).first()
    if row is None:
        return None
    values: dict[str, Any] = dict(zip(FlowRow.__dataclass_fields__, row, strict=False))
    values["purpose"] = FlowPurpose(values["purpose"])
    values["status"] = FlowStatus(values["status"])
    return FlowRow(**values), AccountRow(*row[len(_FLOW_COLUMNS) :])


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


def _send(send: CodeSend) -> Any:
    last_sent_at = FLOWS.c.last_sent_at
    not_sent_meanwhile = (
        last_sent_at == send.retrying
        if send.retrying is not None
        else or_(last_sent_at.is_(None), last_sent_at <= send.cooldown_start)
    )
    return (
        update(FLOWS)
        .where(
            FLOWS.c.id == send.flow_id,
            FLOWS.c.status == FlowStatus.PENDING.value,
            FLOWS.c.expires_at > send.now,
            FLOWS.c.send_count < send.max_sends,
            not_sent_meanwhile,
        )
        .values(**send.challenge, send_count=FLOWS.c.send_count + 1, last_sent_at=send.now)
        .returning(FLOWS.c.id)
    )


def send_code(connection: Connection, send: CodeSend) -> bool:
    """Record the new challenge, its queued message and its audit row, only WHERE the flow
    may still send (pending, unexpired, sends left, cooldown passed): a code is never queued
    without its challenge, nor a challenge recorded without its message. One statement on
    PostgreSQL. False: the flow changed since it was read, nothing written."""
    if connection.dialect.name == "postgresql":
        sent = _send(send).cte("sent")
        return bool(
            connection.execute(
                select(exists(select(sent.c.id))).add_cte(
                    insert_from(OUTBOX, send.message, sent).cte("queued"),
                    audit.insert_from(send.sent, sent).cte("recorded"),
                )
            ).scalar()
        )
    if connection.execute(_send(send)).first() is None:
        return False
    outbox.add(connection, send.message)
    audit.add(connection, send.sent)
    return True

"""A delivery receipt, recorded by one conditional UPDATE (the decisions: courier/receipts.py).

Whatever the order of a receipt and the send's own answer, and however often a receipt comes:
- on a `sent` message, a final receipt (delivered, undelivered) sets the status; buffered is
  only noted;
- on a `sending` message (the gateway's answer not recorded yet) the receipt is noted, and the
  dispatcher's "sent" applies it (`status_when_sent`);
- on a `failed` message (an attempt timed out on our side, yet reached the phone) "delivered"
  ends the message: the retry would send the code twice; other words wait for the retry;
- a final receipt is final: nothing changes a message once delivered or undelivered, nor a
  queued or abandoned one (never handed over, or given up and purged).
The row must also be of the receipt's channel, of the provider it speaks for (outbox.provider:
the last one tried, the one that accepted once sent), and of its provider message id when the
receipt names one: a receipt cannot touch another gateway's message.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, case, false, literal, null, or_, update
from sqlalchemy.sql.elements import ColumnElement

from authsvc.db import MessageStatus, OutboxMessage, Receipt
from authsvc.db.statements import table

OUTBOX = table(OutboxMessage)
_C = OUTBOX.c
_FINAL = (Receipt.DELIVERED.value, Receipt.UNDELIVERED.value)


@dataclass(frozen=True)
class ReceiptUpdate:
    message_id: uuid.UUID
    channel: str
    # What outbox.provider records for the provider the receipt speaks for ("http", "kannel",
    # "http:backup" with failover): it changes only the messages that provider accepted.
    provider_prefix: str
    receipt: Receipt
    provider_message_id: str | None
    now: datetime


@dataclass(frozen=True)
class Applied:
    flow_id: uuid.UUID | None
    status: MessageStatus


def status_when_sent() -> ColumnElement[str]:
    """The status a send's success records: a final receipt noted meanwhile wins."""
    return case(
        (_C.receipt == Receipt.DELIVERED.value, MessageStatus.DELIVERED.value),
        (_C.receipt == Receipt.UNDELIVERED.value, MessageStatus.UNDELIVERED.value),
        else_=MessageStatus.SENT.value,
    )


def record(connection: Connection, update_: ReceiptUpdate) -> Applied | None:
    """Record one receipt; None when it changes nothing (unknown, foreign, late or repeated)."""
    word = update_.receipt.value
    delivered_after_failure: ColumnElement[bool] = (
        _C.status == MessageStatus.FAILED.value if update_.receipt is Receipt.DELIVERED else false()
    )
    applies = or_(
        and_(
            _C.status.in_([MessageStatus.SENT.value, MessageStatus.SENDING.value]),
            or_(_C.receipt.is_(None), _C.receipt == Receipt.BUFFERED.value),
        ),
        delivered_after_failure,
    )
    owner = [
        _C.id == update_.message_id,
        _C.channel == update_.channel,
        or_(_C.provider.is_(None), _C.provider == update_.provider_prefix),
    ]
    if update_.provider_message_id is not None:
        owner.append(
            or_(
                _C.provider_message_id.is_(None),
                _C.provider_message_id == update_.provider_message_id,
            )
        )
    new_status: ColumnElement[str]
    if word in _FINAL:
        new_status = case(
            (_C.status == MessageStatus.SENT.value, literal(word)),
            (delivered_after_failure, literal(MessageStatus.DELIVERED.value)),
            else_=_C.status,
        )
    else:
        new_status = _C.status
    statement = (
        update(OUTBOX)
        .where(*owner, applies)
        .values(
            status=new_status,
            receipt=word,
            receipt_at=update_.now,
            # A failed message that reached the phone is done: its payload goes too.
            payload_sealed=case((delivered_after_failure, null()), else_=_C.payload_sealed),
        )
        .returning(_C.flow_id, _C.status)
    )
    row = connection.execute(statement).first()
    if row is None:
        return None
    return Applied(flow_id=row.flow_id, status=MessageStatus(row.status))

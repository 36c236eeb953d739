"""Which flows' SMS codes wait for a receipt too long (the voice switch: flows/voice_fallback.py).

One indexed read: the flow's current challenge is an SMS that was sent (no final receipt:
delivered and undelivered are statuses of their own) before `sent_before`, and the flow could
still take a send (pending, neither it nor its code expired, sends left). Whether the send is
allowed is decided again, atomically, by the Challenge it triggers (statements/flows.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, select, tuple_

from authsvc.db import Flow, FlowStatus, MessageStatus, OutboxMessage

BATCH = 100


@dataclass(frozen=True)
class Awaiting:
    flow_id: uuid.UUID
    challenge_id: uuid.UUID
    ip_address: str  # the end user's, at the flow's start: the per-IP send limit is theirs
    sent_at: datetime  # with challenge_id, the page's position (`after`)


def sms_awaiting_receipt(
    connection: Connection,
    now: datetime,
    sent_before: datetime,
    max_sends: int,
    after: Awaiting | None = None,
) -> list[Awaiting]:
    """A page of the flows whose SMS code is sent and unconfirmed, oldest first, after the
    last of the previous page (`after`). Pages in a stable order: the candidates a switch
    refused stay candidates until their code expires, and must not hide the newer ones."""
    query = (
        select(Flow.id, OutboxMessage.id, Flow.ip_address, OutboxMessage.sent_at)
        .join(OutboxMessage, OutboxMessage.id == Flow.challenge_id)
        .where(
            and_(
                Flow.status == FlowStatus.PENDING,
                Flow.channel == "sms",
                Flow.expires_at > now,
                Flow.code_expires_at > now,
                Flow.send_count < max_sends,
                OutboxMessage.status == MessageStatus.SENT,
                OutboxMessage.sent_at <= sent_before,
            )
        )
        .order_by(OutboxMessage.sent_at, OutboxMessage.id)
        .limit(BATCH)
    )
    if after is not None:
        query = query.where(
            tuple_(OutboxMessage.sent_at, OutboxMessage.id)
            > tuple_(after.sent_at, after.challenge_id)
        )
    # sent_at is set on every row the WHERE kept (a sent message): never None here.
    return [Awaiting(row[0], row[1], row[2], row[3] or now) for row in connection.execute(query)]

"""The outbox: messages written in the same transaction as the challenge they deliver.

The destination and the text are sealed while queued (the text holds a code); once the message is
sent or abandoned the sealed payload is purged, leaving the masked destination, the template name
and a code-free rendering of the text (`summary`).

Statuses: queued -> sending (claimed, under a lease) -> sent | failed (to be retried at
next_attempt_at) -> ... -> abandoned (permanent refusal, or the last attempt failed); then a
delivery receipt moves sent -> delivered | undelivered (courier/receipts.py). `receipt` keeps the
last receipt's word (buffered, delivered, undelivered), including one that came while the send's
own answer was still awaited: the dispatcher applies it when it records the send.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from authsvc.db.base import Base, new_id


class MessageStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    ABANDONED = "abandoned"
    DELIVERED = "delivered"  # a receipt: on the phone
    UNDELIVERED = "undelivered"  # a receipt: the network gave up


class Receipt(StrEnum):
    """What a delivery receipt says, whatever the gateway's own vocabulary."""

    BUFFERED = "buffered"  # on its way (queued at the SMSC, or accepted by it)
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"


class OutboxMessage(Base):
    __tablename__ = "outbox_messages"
    __table_args__ = (Index("ix_outbox_messages_due", "status", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    flow_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("flows.id"), index=True)
    channel: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(64))
    destination_masked: Mapped[str] = mapped_column(String(320))
    payload_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    summary: Mapped[str | None] = mapped_column(Text)
    status: Mapped[MessageStatus] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime]
    lease_until: Mapped[datetime | None]
    provider_message_id: Mapped[str | None] = mapped_column(String(128))
    # Which provider accepted the message (its name), for receipts and operations.
    provider: Mapped[str | None] = mapped_column(String(64))
    receipt: Mapped[Receipt | None] = mapped_column(String(16))
    receipt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]

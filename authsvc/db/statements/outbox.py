"""Queued messages written inside a hot path's transaction (rows from courier.outbox.row)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select

from authsvc.db import OutboxMessage
from authsvc.db.statements import table

OUTBOX = table(OutboxMessage)


def add(connection: Connection, row: dict[str, Any]) -> None:
    connection.execute(insert(OUTBOX), row)


_STATUS = select(OUTBOX.c.status)


def status(connection: Connection, message_id: uuid.UUID) -> str | None:
    """Where one message stands (a code's message has its challenge's id)."""
    found = connection.execute(_STATUS.where(OUTBOX.c.id == message_id)).scalar()
    return None if found is None else str(found)


# What waits to be delivered, per channel and status (the metrics' outbox gauges): counted on
# ix_outbox_messages_due's leading column.
WAITING = ("queued", "sending", "failed")
_WAITING = (
    select(OUTBOX.c.channel, OUTBOX.c.status, func.count(), func.min(OUTBOX.c.created_at))
    .where(OUTBOX.c.status.in_(WAITING))
    .group_by(OUTBOX.c.channel, OUTBOX.c.status)
)


def waiting(connection: Connection) -> list[tuple[str, str, int, datetime]]:
    """(channel, status, count, oldest created_at) of every waiting group."""
    return [
        (str(channel), str(status), int(count), oldest)
        for channel, status, count, oldest in connection.execute(_WAITING)
    ]

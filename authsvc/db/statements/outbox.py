"""Queued messages written inside a hot path's transaction (rows from courier.outbox.row)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Connection, insert, select

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

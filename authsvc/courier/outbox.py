"""Queue a message in the caller's transaction (the transactional outbox).

Destination and text are sealed together; the row's id is the sealing's associated data, so a
payload cannot be moved to another row.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.db.base import new_id


@dataclass(frozen=True)
class Payload:
    to: str
    text: str

    def dumps(self) -> str:
        return json.dumps({"to": self.to, "text": self.text})

    @classmethod
    def loads(cls, data: str) -> Payload:
        raw = json.loads(data)
        return cls(to=str(raw["to"]), text=str(raw["text"]))


def enqueue(
    app: App,
    db: AsyncSession,
    *,
    channel: str,
    template: str,
    to: str,
    masked_to: str,
    text: str,
    flow_id: uuid.UUID | None,
) -> uuid.UUID:
    message_id = new_id()
    now = app.clock.now()
    db.add(
        OutboxMessage(
            id=message_id,
            flow_id=flow_id,
            channel=channel,
            template=template,
            destination_masked=masked_to,
            payload_sealed=app.keys.sealer.seal(Payload(to, text).dumps(), message_id.bytes),
            status=MessageStatus.QUEUED,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
            provider_message_id=None,
            last_error=None,
            created_at=now,
            sent_at=None,
        )
    )
    return message_id

"""Queue a message in the caller's transaction (the transactional outbox).

Destination, subject, text and the forms of the secrets the text carries are sealed together; the
row's id is the sealing's associated data, so a payload cannot be moved to another row. Beside the
sealed payload the row keeps what may be kept for good: the masked destination, the template name
and the template's rendering with placeholders in place of its secrets (`summary`, built by
templates.py, never derived from the secret text), which is all that remains once the message is
sent or abandoned.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from authsvc.app import App
from authsvc.courier.templates import MASK, Rendered
from authsvc.db import MessageStatus, OutboxMessage
from authsvc.db.base import new_id

__all__ = ["MASK", "Payload", "enqueue", "row"]


@dataclass(frozen=True)
class Payload:
    """What is sealed. `secrets`: every form of every secret in the text (the code as digits,
    read aloud...), so that the dispatcher masks them by value in a gateway's error; a row
    queued before they were sealed has none (its destination and text are still masked)."""

    to: str
    text: str
    subject: str | None = None
    html: str | None = None
    secrets: tuple[str, ...] = ()

    def dumps(self) -> str:
        data: dict[str, object] = {"to": self.to, "text": self.text}
        if self.subject is not None:
            data["subject"] = self.subject
        if self.html is not None:
            data["html"] = self.html
        if self.secrets:
            data["secrets"] = list(self.secrets)
        return json.dumps(data)

    @classmethod
    def loads(cls, data: str) -> Payload:
        raw = json.loads(data)
        subject, html = raw.get("subject"), raw.get("html")
        return cls(
            to=str(raw["to"]),
            text=str(raw["text"]),
            subject=None if subject is None else str(subject),
            html=None if html is None else str(html),
            secrets=tuple(str(secret) for secret in raw.get("secrets", ())),
        )


def row(
    app: App,
    *,
    channel: str,
    template: str,
    to: str,
    masked_to: str,
    message: Rendered,
    flow_id: uuid.UUID | None,
    message_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """The columns of one queued message, rendered by templates.py, sealed: the caller's
    transaction inserts it with whatever it belongs to (`enqueue` on an ORM session,
    `authsvc.db.statements.outbox` on the hot paths).

    The message's `summary` is what stays after delivery. A code's message takes its challenge
    id as `message_id`, so that "where is this code's delivery" is one primary-key read. Call
    `app.outbox_ready.set()` after the commit so that the in-process dispatcher sends at once.
    """
    if channel not in ("sms", "voice", "email"):
        raise ValueError(f"unknown channel {channel!r}")
    message_id = message_id or new_id()
    now = app.clock.now()
    payload = Payload(to, message.text, message.subject, message.html, message.secrets)
    return {
        "id": message_id,
        "flow_id": flow_id,
        "channel": channel,
        "template": template,
        "destination_masked": masked_to,
        "payload_sealed": app.keys.sealer.seal(payload.dumps(), message_id.bytes),
        "summary": message.summary,
        "status": MessageStatus.QUEUED.value,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "provider_message_id": None,
        "provider": None,
        "receipt": None,
        "receipt_at": None,
        "last_error": None,
        "created_at": now,
        "sent_at": None,
    }


def enqueue(
    app: App,
    db: AsyncSession,
    *,
    channel: str,
    template: str,
    to: str,
    masked_to: str,
    message: Rendered,
    flow_id: uuid.UUID | None,
    message_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Queue one message (see `row`) in the caller's ORM transaction."""
    message_id = message_id or new_id()
    columns = row(
        app,
        channel=channel,
        template=template,
        to=to,
        masked_to=masked_to,
        message=message,
        flow_id=flow_id,
        message_id=message_id,
    )
    db.add(OutboxMessage(**columns))
    return message_id
